"""Throughput measurements behind ``make bench`` (issue: speed targets are ratios in one run).

* training: the real training loop (``DetectorTrainer.train_epoch``: GPU-resident uint8 data, batch
  gathering, autocast, optimizer) against the model's own ceiling (forward + backward + optimizer step
  on random tensors already on the device, same batch, same autocast/channels_last), for each precision
  (fp32; bf16 autocast), at the paper's batch and over a list of batches (the fastest is reported), eager
  and ``torch.compile``d, each with its peak GPU memory;
* evaluation: one epoch's evaluation through the real path (``DetectorTrainer.evaluate``: forward passes,
  then AUROC / AP / PRO / image AUROC where the trainer computes them) on a test set the size of an
  MVTec-AD category, and the same metrics ranked on the device;
* PRO: the fast exact PRO against the per-threshold reference;
* synthesis: seconds per pseudo anomaly on one core and dataset-level scaling over worker processes;
* Table 1 estimate: hours of the whole Table 1 at the training rate and evaluation time measured on a GPU
  (this run on CUDA, else ``bench_gpu.json`` from one), and how many such GPUs finish it within the goal;
  "unmeasured" when no GPU measurement exists (no quoted rate stands in for one).

On a CUDA device the report goes to ``bench_gpu.json`` / ``bench_gpu.md``, else to ``bench.json`` /
``bench.md`` (``output`` in conf/bench.yaml). The JSON is rewritten after every measurement, so a bench
cut short (time budget, a killed process) keeps what it measured; a configuration that fails (a compile
error, out of memory) is recorded with its error string instead of ending the bench.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import multiprocessing
import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from cai.detect.trainer import DetectorTrainer, EvalSet, TrainSet
from cai.detect.unet import DiscriminativeUNet
from cai.errors import ConfigError

log = logging.getLogger(__name__)

#: Training precisions: ``fp32`` (no autocast; cuDNN may still use TF32, recorded in the report) and
#: ``bf16`` (the detector's ``amp``: bf16 autocast, CUDA only).
PRECISIONS = ("fp32", "bf16")
#: Longest error string kept in the report per failed configuration.
MAX_ERROR_CHARS = 2000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int = 1) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return time.perf_counter() - start


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    """``torch.cuda.max_memory_allocated`` since the last reset, in MiB (None off CUDA)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def effective_precision(precision: str, device: torch.device) -> str:
    """What a run at ``precision`` computes in on ``device``: the trainer autocasts to bf16 on CUDA only."""
    if precision not in PRECISIONS:
        raise ConfigError(f"Unknown training precision {precision!r}.", where="conf/bench.yaml training.*.precisions",
                          fix=f"Use one of {list(PRECISIONS)}.")
    return "bf16" if precision == "bf16" and device.type == "cuda" else "fp32"


@functools.lru_cache(maxsize=1)
def _random_train_set(image_size: int, seed: int, n_normal: int = 64, n_pseudo: int = 256) -> TrainSet:
    """Random uint8 normals and pseudo anomalies with masks on the CPU (kept for the next configuration)."""
    gen = torch.Generator().manual_seed(seed)
    return TrainSet(
        torch.randint(0, 256, (n_normal, 3, image_size, image_size), dtype=torch.uint8, generator=gen),
        torch.randint(0, 256, (n_pseudo, 3, image_size, image_size), dtype=torch.uint8, generator=gen),
        torch.rand((n_pseudo, image_size, image_size), generator=gen) > 0.9,
    )


def bench_training(detector_cfg: DictConfig, device: torch.device, image_size: int, batch_size: int,
                   steps: int | None = None, warmup: int = 2, base_width: int | None = None, compile: bool = False,
                   seed: int = 0, rounds: int = 5, precision: str = "bf16", round_s: float | None = None,
                   max_steps: int = 200, compile_backend: str = "inductor") -> dict[str, Any]:
    """Images per second of the training loop and of its ceiling, their ratio and the peak GPU memory.

    ``steps`` optimizer steps per timed round, or (``steps=None``) as many as take about ``round_s``
    seconds, from a timed ceiling step after the warm-up (at most ``max_steps``). The first warm-up epoch
    (torch.compile's compilation, cuDNN's algorithm choice) is timed apart as ``warmup_s``."""
    if steps is None and round_s is None:
        raise ConfigError("bench_training needs steps or round_s.", where="conf/bench.yaml training.<device>",
                          fix="Set steps (a fixed count) or round_s (seconds per timed round).")
    precision = effective_precision(precision, device)
    cfg = OmegaConf.merge(detector_cfg, {"batch_size": batch_size, "samples_per_epoch": batch_size * warmup,
                                         "compile": compile, "amp": precision == "bf16"})
    width = base_width or int(cfg.model.base_width)
    _reset_peak(device)
    torch.manual_seed(seed)
    data = _random_train_set(image_size, seed).to(device)
    n_pseudo = len(data.pseudo)
    trainer = DetectorTrainer(cfg, lambda: DiscriminativeUNet(base_width=width), run_dir=".", device=device,
                              seed=seed)
    model, opt, _ = trainer._build()
    forward = torch.compile(model, backend=compile_backend) if compile else model

    # Ceiling: the same model and optimizer on tensors already prepared on the device.
    x = trainer._prep(data.pseudo[:batch_size].repeat(math.ceil(batch_size / n_pseudo), 1, 1, 1)[:batch_size])
    y = data.pseudo_masks[:batch_size].repeat(math.ceil(batch_size / n_pseudo), 1, 1)[:batch_size].to(torch.uint8)

    def ceiling_step() -> None:
        with trainer._autocast():
            logits = forward(x)
        loss = trainer.loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    warmup_s = _timed(lambda: trainer.train_epoch(model, forward, opt, data, epoch=0), device)
    _timed(ceiling_step, device, warmup)
    if steps is None:
        per_step = _timed(ceiling_step, device, 2) / 2
        steps = int(min(max_steps, max(2, math.ceil(float(round_s) / max(per_step, 1e-9)))))
    trainer.cfg = OmegaConf.merge(cfg, {"samples_per_epoch": batch_size * steps})
    # Alternate loop and ceiling rounds so drift in machine load hits both; report the medians.
    loop_rates, ceil_rates = [], []
    n = batch_size * steps
    for rep in range(rounds):
        loop_rates.append(n / _timed(lambda r=rep: trainer.train_epoch(model, forward, opt, data, epoch=1 + r),
                                     device))
        ceil_rates.append(n / _timed(ceiling_step, device, steps))
    loop, ceiling = float(np.median(loop_rates)), float(np.median(ceil_rates))
    return {"loop_img_s": loop, "ceiling_img_s": ceiling, "ratio": loop / ceiling, "image_size": image_size,
            "batch_size": batch_size, "base_width": width, "steps": steps, "rounds": rounds, "compile": compile,
            "precision": precision, "warmup_s": warmup_s, "peak_mem_mib": _peak_mib(device),
            "device": str(device)}


def _error_text(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + " [...]"


def _guarded_child(results: Any, fn: Callable[..., dict], args: tuple, kwargs: dict) -> None:
    """Body of :func:`run_guarded`'s child process: its result or its error goes back through ``results``."""
    try:
        result = fn(*args, **kwargs)
    except BaseException as err:  # noqa: BLE001 - everything is reported to the parent, nothing re-raised
        result = {"error": _error_text(err)}
    results.put(result)


def run_guarded(fn: Callable[..., dict], /, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> dict:
    """``fn(*args, **kwargs)``, or ``{"error": "<type>: <message>"}`` when it fails, so that one configuration
    that cannot run (``torch.compile`` without a working compiler, out of memory) is recorded in the report
    instead of ending the bench.

    With ``timeout_s`` the call runs in a spawned child process (``fn`` and its arguments must pickle), killed
    after that many seconds: a compile that hangs, or crashes the interpreter, costs only its time."""
    started = time.perf_counter()
    if timeout_s is None:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            return {"error": _error_text(err), "error_after_s": time.perf_counter() - started}
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=_guarded_child, args=(results, fn, args, kwargs))  # not daemonic: inductor forks
    child.start()
    deadline = time.monotonic() + float(timeout_s)
    try:
        while True:
            try:
                result = results.get(timeout=0.5)
                break
            except queue.Empty:
                if not child.is_alive():
                    try:  # it may have put its result just before ending
                        result = results.get(timeout=1.0)
                    except queue.Empty:
                        result = {"error": f"the child process ended without a result (exit code {child.exitcode})"}
                    break
                if time.monotonic() >= deadline:
                    result = {"error": f"timed out after {float(timeout_s):.0f} s (child process killed)"}
                    break
    finally:
        if child.is_alive():
            child.kill()
        child.join()
    if "error" in result:
        result["error_after_s"] = time.perf_counter() - started
    return result


def best_batch(entries: list[dict[str, Any]], precision: str, compile: bool = False) -> int | None:
    """The batch size with the most training-loop images per second among the measured (error-free) entries
    of one precision and compile setting; None when there is none."""
    ok = [e for e in entries if "loop_img_s" in e and e.get("precision") == precision
          and bool(e.get("compile")) == compile]
    return int(max(ok, key=lambda e: e["loop_img_s"])["batch_size"]) if ok else None


class _Budget:
    """Seconds left of an optional time budget (None: unlimited)."""

    def __init__(self, seconds: float | None) -> None:
        self.end = None if seconds is None else time.monotonic() + float(seconds)

    def left(self) -> float:
        return math.inf if self.end is None else self.end - time.monotonic()


class TrainingGrid:
    """Every training configuration of ``cfg.training.<device>``, in the order of importance that
    :func:`run_all` runs the stages in: :meth:`paper` (the paper's batch, ``detector.batch_size``, in each
    precision), :meth:`sweep` (the other ``batches``), :meth:`compiled` (``torch.compile`` at the batches named
    in ``compile``: ``paper``, ``best`` = the fastest eager batch of ``compile_precision``; each in a child
    process bounded by ``compile_timeout_s`` and the time budget). A configuration the budget no longer covers
    is listed as skipped; ``on_change`` sees the entries after each one (to save them)."""

    def __init__(self, cfg: DictConfig, device: torch.device, budget: _Budget,
                 on_change: Callable[[list[dict[str, Any]]], None] = lambda entries: None) -> None:
        self.cfg, self.device, self.budget, self.on_change = cfg, device, budget, on_change
        self.t = cfg.training[device.type if device.type == "cuda" else "cpu"]
        self.paper_batch = int(cfg.detector.batch_size)
        self.precisions = list(dict.fromkeys(effective_precision(str(p), device) for p in self.t.precisions))
        self.batches = list(dict.fromkeys([self.paper_batch, *(int(b) for b in self.t.batches)]))
        self.detector = OmegaConf.create(OmegaConf.to_container(cfg.detector, resolve=True))  # picklable
        self.entries: list[dict[str, Any]] = []

    def measure(self, precision: str, batch: int, compile: bool, timeout_s: float | None = None) -> dict[str, Any]:
        t = self.t
        labels = {"image_size": int(t.image_size), "base_width": int(t.base_width), "device": str(self.device),
                  "precision": precision, "batch_size": batch, "compile": compile}
        if self.budget.left() <= 0 or (timeout_s is not None and timeout_s < float(t.get("min_compile_s") or 0)):
            entry = {**labels, "skipped": "the bench's time budget (training.<device>.time_budget_s) was spent"}
        else:
            started = time.perf_counter()
            result = run_guarded(
                bench_training, self.detector, self.device, int(t.image_size), batch, steps=t.get("steps"),
                base_width=int(t.base_width), compile=compile, seed=int(self.cfg.seed), rounds=int(t.rounds),
                precision=precision, round_s=t.get("round_s"), max_steps=int(t.get("max_steps") or 200),
                compile_backend=str(t.get("compile_backend") or "inductor"), timeout_s=timeout_s)
            entry = {**labels, **result, "wall_s": time.perf_counter() - started}
        self.entries.append(entry)
        what = f"{precision} batch {batch} {'compiled' if compile else 'eager'}"
        if "loop_img_s" in entry:
            log.info("training %s: loop %.1f img/s, ceiling %.1f img/s, peak %s MiB (%.1f s)", what,
                     entry["loop_img_s"], entry["ceiling_img_s"], _fmt(entry.get("peak_mem_mib"), ".0f"),
                     entry["wall_s"])
        else:
            log.warning("training %s: %s", what, (entry.get("error") or entry.get("skipped", ""))[:300])
        self.on_change(self.entries)
        return entry

    def paper(self) -> None:
        for precision in self.precisions:
            self.measure(precision, self.paper_batch, False)

    def sweep(self) -> None:
        for precision in self.precisions:
            for batch in self.batches[1:]:
                self.measure(precision, batch, False)

    def best(self) -> dict[str, int | None]:
        """The fastest eager batch per precision."""
        return {p: best_batch(self.entries, p) for p in self.precisions}

    def compiled(self) -> None:
        t = self.t
        precision = effective_precision(str(t.get("compile_precision") or self.precisions[-1]), self.device)
        batches: list[int] = []
        for which in t.get("compile") or []:
            if which not in ("paper", "best"):
                raise ConfigError(f"Unknown compile batch {which!r}.", where="conf/bench.yaml training.*.compile",
                                  fix="List 'paper' (detector.batch_size) and/or 'best' (the fastest eager batch).")
            batch = self.paper_batch if which == "paper" else best_batch(self.entries, precision)
            if batch is not None and batch not in batches:
                batches.append(batch)
        for batch in batches:
            limit = t.get("compile_timeout_s")
            timeout = None if limit is None else min(float(limit), self.budget.left())
            self.measure(precision, batch, True, timeout)


def _best_of(fn: Callable[[], Any], repeats: int, budget_s: float = float("inf")) -> tuple[float, Any]:
    """Fastest of up to ``repeats`` calls (stopping once ``budget_s`` is spent) and the call's value."""
    best, value, spent = float("inf"), None, 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
        if spent >= budget_s:
            break
    return best, value


def bench_pro(make_case: Callable[..., tuple[np.ndarray, np.ndarray]], fast: Callable, reference: Callable,
              rng: np.random.Generator, **case_kwargs: Any) -> dict[str, float]:
    """Wall time and value of the fast PRO against the reference on one generated case."""
    maps, masks = make_case(rng, **case_kwargs)
    t_fast, fast_value = _best_of(lambda: fast(maps, masks), repeats=5)
    t_ref, ref_value = _best_of(lambda: reference(maps, masks), repeats=3, budget_s=5.0)
    return {"fast_s": t_fast, "reference_s": t_ref, "speedup": t_ref / t_fast, "fast_value": float(fast_value),
            "reference_value": float(ref_value), "abs_diff": abs(float(fast_value) - float(ref_value)),
            "n_images": int(maps.shape[0]), "size": list(maps.shape[1:])}


def bench_synthesis(cfg: DictConfig, context_dataset: DictConfig, workers: list[int | str],
                    seed: int = 0) -> dict[str, Any]:
    """CAI (or any configured synthesizer) seconds per pseudo anomaly on one core, and worker scaling."""
    import tempfile
    from pathlib import Path

    import cv2
    from hydra.utils import instantiate

    from cai.io import read_image, resize_image
    from cai.synth.base import SynthesisContext
    from cai.synth.cache import SynthesisJob, default_workers, run_synthesis

    s = cfg.synthesis
    data = instantiate(context_dataset.reader).load(context_dataset.category)
    originals = [read_image(p) for p in data.train[: int(s.n_images)]]
    threads = (cv2.getNumThreads(), torch.get_num_threads())
    cv2.setNumThreads(1)  # "one core": restored below
    torch.set_num_threads(1)
    per_size: dict[str, float] = {}
    for size in [int(s.image_size), "native"]:
        imgs = originals if size == "native" else [resize_image(o, size) for o in originals]
        masks = [np.ones(i.shape[:2], bool) for i in imgs]
        synth = instantiate(cfg.synthesizer.params)
        synth.prepare(SynthesisContext(data.dataset, data.category, data.is_texture, max(imgs[0].shape[:2]),
                                       tuple(context_dataset.get("leakage_sources") or ()), imgs, masks))
        synth.generate_records(imgs[0], masks[0], np.random.default_rng(seed), int(s.n_per_image))  # warm up
        start = time.perf_counter()
        for i, (img, fg) in enumerate(zip(imgs, masks, strict=True)):
            synth.generate_records(img, fg, np.random.default_rng([seed, i]), int(s.n_per_image))
        label = f"{imgs[0].shape[1]}x{imgs[0].shape[0]}"
        per_size[label] = 1000 * (time.perf_counter() - start) / (len(imgs) * int(s.n_per_image))
        if size != "native":
            normals, fgs, per, scaled_synth = imgs, masks, per_size[label] / 1000, synth
    cv2.setNumThreads(threads[0])
    torch.set_num_threads(threads[1])
    scaling = {}
    for w in workers:
        n_workers = default_workers(w)
        with tempfile.TemporaryDirectory() as tmp:
            job = SynthesisJob(Path(tmp) / "c", scaled_synth, normals, fgs, int(s.n_per_image), seed, {"bench": True})
            t0 = time.perf_counter()
            run_synthesis(job, workers=n_workers, progress=False)
            scaling[str(n_workers)] = time.perf_counter() - t0
    base = scaling[min(scaling, key=int)]
    return {"synthesizer": cfg.synthesizer.name, "ms_per_anomaly_one_core": 1000 * per,
            "ms_per_anomaly_by_size": per_size,
            "target_ms": float(s.target_ms), "meets_target": 1000 * per <= float(s.target_ms),
            "image_size": int(s.image_size), "dataset": f"{data.dataset}/{data.category}",
            "workers_seconds": scaling,
            "speedup": {k: base / v for k, v in scaling.items()}}


def bench_evaluation(detector_cfg: DictConfig, device: torch.device, image_size: int, base_width: int,
                     n_images: int = 150, repeats: int = 3, seed: int = 0) -> dict[str, Any]:
    """Seconds of one epoch's evaluation through the real path, ``DetectorTrainer.evaluate`` (forward passes
    over ``n_images`` test images, then the four metrics wherever the trainer computes them), and its parts:
    the forward passes alone (``DetectorTrainer.predict``), and the four metrics alone ranked on the CPU and on
    ``device``. Medians of ``repeats`` after one warm-up; the masks are realistic
    (:func:`make_pro_benchmark_case`), the model is untrained (timing does not depend on its weights)."""
    from cai.metrics import AnomalyMetrics, make_pro_benchmark_case

    cfg = OmegaConf.merge(detector_cfg, {"model": {"base_width": base_width}})
    rng = np.random.default_rng(seed)
    _, masks = make_pro_benchmark_case(rng, n=n_images, size=image_size)
    images = torch.from_numpy(rng.integers(0, 256, (n_images, 3, image_size, image_size), dtype=np.uint8))
    test = EvalSet(images, torch.from_numpy(masks), [f"bench/{i}" for i in range(n_images)])
    _reset_peak(device)
    torch.manual_seed(seed)
    trainer = DetectorTrainer(cfg, lambda: DiscriminativeUNet(base_width=base_width), run_dir=".", device=device,
                              seed=seed)
    model, _, _ = trainer._build()
    trainer.evaluate(model, test)  # warm-up: cuDNN's algorithm choice for the evaluation batch
    maps = trainer.predict(model, test.images)

    def metrics_on(where: torch.device | str) -> dict[str, float]:
        metric = AnomalyMetrics(fpr_limit=float(cfg.pro_fpr_limit), image_pool=int(cfg.image_score_pool),
                                device=where)
        metric.update(maps, test.masks)
        return metric.compute()

    def median_s(fn: Callable[[], Any]) -> float:
        return float(np.median([_timed(fn, device) for _ in range(max(1, repeats))]))

    return {
        "epoch_s": median_s(lambda: trainer.evaluate(model, test)),
        "predict_s": median_s(lambda: trainer.predict(model, test.images)),
        "metrics_cpu_s": median_s(lambda: metrics_on("cpu")),
        "metrics_device_s": median_s(lambda: metrics_on(device)),
        "n_images": n_images, "image_size": image_size, "base_width": base_width,
        "eval_batch_size": int(cfg.eval_batch_size),
        "precision": effective_precision("bf16" if cfg.amp else "fp32", device),
        "repeats": repeats, "peak_mem_mib": _peak_mib(device), "device": str(device),
    }


def _detector_entry(training: list[dict[str, Any]], want: dict[str, Any]) -> dict[str, Any] | None:
    for e in training:
        if "loop_img_s" in e and all(e.get(k) == v for k, v in want.items()):
            return e
    return None


def _evals_per_run(d: DictConfig) -> int:
    """Evaluated epochs of one run: every ``eval_every``-th and the last (``DetectorTrainer.fit``)."""
    epochs, every = int(d.epochs), int(d.eval_every)
    return epochs // every + (1 if epochs % every else 0)


def _hours(e: DictConfig, d: DictConfig, rate: float, evaluation: dict[str, Any]) -> dict[str, Any]:
    runs = int(e.synthesizers) * int(e.categories)
    train_s = runs * int(d.epochs) * int(d.samples_per_epoch) / rate
    # each synthesizer evaluates each category's test set: evaluation time per image x all test images
    per_image = evaluation["epoch_s"] / evaluation["n_images"]
    eval_s = int(e.synthesizers) * _evals_per_run(d) * int(e.test_images) * per_image
    hours = (train_s + eval_s) / 3600
    return {"img_per_s": rate, "train_hours": train_s / 3600, "eval_hours": eval_s / 3600, "total_hours": hours,
            "gpus_for_goal": max(1, math.ceil(hours / float(e.goal_hours))),
            "meets_goal_on_one_gpu": hours <= float(e.goal_hours)}


def table1_estimate(cfg: DictConfig, gpu: dict[str, Any] | None, source: str = "") -> dict[str, Any]:
    """Wall-clock hours of the whole Table 1 on one GPU of the measured kind and the number of such GPUs that
    finish it within ``goal_hours`` (runs are independent jobs), from a GPU bench report ``gpu``: the
    training-loop rate of the detector's own configuration (``detector.batch_size``, ``amp``, ``compile`` at
    the paper's image size and width) and the measured evaluation time per test image. Also the same for the
    fastest configuration measured (another batch changes the training protocol). ``status: unmeasured``
    (with the reason) when there is no GPU measurement: no quoted rate stands in for one."""
    e, d = cfg.table1_estimate, cfg.detector
    runs = int(e.synthesizers) * int(e.categories)
    out: dict[str, Any] = {"runs": runs, "synthesizers": int(e.synthesizers), "categories": int(e.categories),
                           "epochs": int(d.epochs), "samples_per_epoch": int(d.samples_per_epoch),
                           "evals_per_run": _evals_per_run(d), "test_images": int(e.test_images),
                           "goal_hours": float(e.goal_hours)}
    if gpu is None:
        return {**out, "status": "unmeasured", "reason": f"no GPU bench report ({source or 'bench_gpu.json'} absent)"}
    want = {"precision": "bf16" if d.amp else "fp32", "batch_size": int(d.batch_size), "compile": bool(d.compile),
            "image_size": int(e.image_size), "base_width": int(d.model.base_width)}
    training = [t for t in gpu.get("training", []) if str(t.get("device", "")).startswith("cuda")]
    entry = _detector_entry(training, want)
    evaluation = gpu.get("evaluation")
    reason = None
    if entry is None:
        reason = f"the GPU report has no measured training entry for the detector's configuration {want}"
    elif not evaluation or "epoch_s" not in evaluation or int(evaluation["image_size"]) != int(e.image_size):
        reason = f"the GPU report has no evaluation measured at {int(e.image_size)} px"
    if reason is not None:
        return {**out, "status": "unmeasured", "reason": reason, "source": source}
    assert entry is not None and evaluation is not None
    fastest = max((t for t in training if "loop_img_s" in t and t["image_size"] == want["image_size"]
                   and t["base_width"] == want["base_width"]), key=lambda t: t["loop_img_s"])
    return {**out, "status": "measured", "source": source, "gpu": gpu.get("gpu", gpu.get("device")),
            "config": want, "eval_s_per_image": evaluation["epoch_s"] / evaluation["n_images"],
            **_hours(e, d, float(entry["loop_img_s"]), evaluation),
            "fastest": {"config": {k: fastest[k] for k in want},
                        **_hours(e, d, float(fastest["loop_img_s"]), evaluation)}}


def _load_gpu_report(path: str | Path) -> dict[str, Any] | None:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def run_all(cfg: DictConfig) -> dict[str, Any]:
    """Every measurement of ``make bench`` for the device (``sections.<device>``); writes the JSON after each
    and the markdown at the end."""
    from cai.detect.trainer import resolve_device
    from cai.io import write_json, write_text
    from cai.metrics import make_pro_benchmark_case, pro_score, pro_score_reference
    from cai.track import package_versions

    started = time.perf_counter()
    device = resolve_device(cfg.device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    out_json = cfg.output_json or cfg.output[kind].json
    out_md = cfg.output_md or cfg.output[kind].md
    t = cfg.training[kind]
    budget = _Budget(t.get("time_budget_s"))
    sections = list(cfg.sections[kind])
    report: dict[str, Any] = {"device": str(device), "packages": package_versions(),
                              "torch": torch.__version__, "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
        report["cuda"] = torch.version.cuda
        report["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
        report["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
        report["float32_matmul_precision"] = torch.get_float32_matmul_precision()

    def save(*_: Any) -> None:  # after every measurement: a bench cut short keeps what it measured
        write_json(out_json, report)
        write_text(out_md, render_bench(report))

    grid = TrainingGrid(cfg, device, budget, on_change=lambda entries: save())
    report["training"] = grid.entries
    if "training" in sections:
        grid.paper()
    if "evaluation" in sections:
        ev = cfg.evaluation
        report["evaluation"] = run_guarded(bench_evaluation, grid.detector, device, int(t.image_size),
                                           int(t.base_width), n_images=int(ev.n_images), repeats=int(ev.repeats),
                                           seed=int(cfg.seed))
        log.info("evaluation: %s", {k: v for k, v in report["evaluation"].items() if k.endswith("_s") or k == "error"})
        save()
    if "training" in sections:
        grid.sweep()
        report["best_batch"] = grid.best()
        grid.compiled()
        report["best_batch"] = grid.best()
        save()
    rng = np.random.default_rng(cfg.seed)
    if "pro" in sections:
        report["pro"] = []
        for case in cfg.pro.cases:
            kwargs = {k: (tuple(v) if k == "regions" else v) for k, v in case.items() if k != "name"}
            r = bench_pro(make_pro_benchmark_case, pro_score, pro_score_reference, rng, **kwargs)
            r.update(name=case.name,
                     meets_target=r["speedup"] >= float(cfg.pro.speedup_target) and r["abs_diff"] < 1e-4)
            report["pro"].append(r)
        save()
    if "synthesis" in sections:
        report["synthesis"] = bench_synthesis(cfg, cfg.dataset, list(cfg.synthesis.workers), seed=int(cfg.seed))
        save()
    gpu_json = str(cfg.table1_estimate.gpu_json)
    if device.type == "cuda":
        report["table1_estimate"] = table1_estimate(cfg, report, source="this run")
    else:
        report["table1_estimate"] = table1_estimate(cfg, _load_gpu_report(gpu_json), source=gpu_json)
    report["seconds"] = time.perf_counter() - started
    save()
    print(render_bench(report))
    return report


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _precision_label(report: dict[str, Any], precision: str) -> str:
    if precision == "fp32" and report.get("cudnn_allow_tf32"):
        return "fp32 (TF32 convs)"
    return precision


def render_bench(r: dict[str, Any]) -> str:
    """A short markdown summary of a bench report (sections it lacks are left out)."""
    lines = [f"# Benchmark ({r['device']}{', ' + r['gpu'] if 'gpu' in r else ''})", ""]
    if r.get("training"):
        lines += ["| training | precision | size | batch | width | loop img/s | ceiling img/s | ratio | peak MiB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for t in r["training"]:
            head = (f"| {'compiled' if t['compile'] else 'eager'} | {_precision_label(r, t['precision'])} | "
                    f"{t['image_size']} | {t['batch_size']} | {t['base_width']} | ")
            if "loop_img_s" in t:
                lines.append(head + f"{t['loop_img_s']:.1f} | {t['ceiling_img_s']:.1f} | {t['ratio']:.3f} | "
                             f"{_fmt(t.get('peak_mem_mib'), '.0f')} |")
            else:
                why = t.get("error") or t.get("skipped") or "not measured"
                why = why.replace("|", "/").replace("\n", " ")
                lines.append(head + f"{why[:160]} | | | |")
        if r.get("best_batch"):
            lines += ["", "Fastest eager batch (training-loop img/s): "
                      + ", ".join(f"{_precision_label(r, p)}: {b if b is not None else 'none measured'}"
                                  for p, b in r["best_batch"].items())]
    ev = r.get("evaluation")
    if ev and "epoch_s" in ev:
        lines += ["", f"Evaluation of one epoch, real path (`DetectorTrainer.evaluate`, {ev['n_images']} test images "
                  f"at {ev['image_size']} px, width {ev['base_width']}, {ev['precision']}): {ev['epoch_s']:.2f} s, of "
                  f"which forward passes {ev['predict_s']:.2f} s; the four metrics (pixel AUROC, AP, PRO, image "
                  f"AUROC) alone: {ev['metrics_cpu_s']:.2f} s ranked on the CPU, {ev['metrics_device_s']:.2f} s on "
                  f"{ev['device']}; peak {_fmt(ev.get('peak_mem_mib'), '.0f')} MiB"]
    elif ev:
        lines += ["", f"Evaluation: not measured ({ev.get('error', 'unknown reason')[:200]})"]
    if r.get("pro"):
        lines += ["", "| PRO case | fast s | reference s | speed-up | |fast - ref| |", "|---|---|---|---|---|"]
        for p in r["pro"]:
            lines.append(f"| {p['name']} | {p['fast_s']:.3f} | {p['reference_s']:.2f} | {p['speedup']:.1f}x | "
                         f"{p['abs_diff']:.1e} |")
    s = r.get("synthesis")
    if s:
        lines += ["", f"Synthesis ({s['synthesizer']}, {s['dataset']}, {s['image_size']} px): "
                  f"{s['ms_per_anomaly_one_core']:.2f} ms per pseudo anomaly on one core (target {s['target_ms']} ms; "
                  + ", ".join(f"{k}: {v:.2f} ms" for k, v in s["ms_per_anomaly_by_size"].items()) + "); "
                  "workers → seconds: " + ", ".join(f"{k}: {v:.2f}s (x{s['speedup'][k]:.2f})"
                                                    for k, v in s["workers_seconds"].items())]
    e = r.get("table1_estimate")
    if e:
        lines += ["", render_table1_estimate(e)]
    return "\n".join(lines) + "\n"


def render_table1_estimate(e: dict[str, Any]) -> str:
    """One paragraph: the Table 1 estimate, or why it is unmeasured."""
    scope = (f"{e['runs']} runs = {e['synthesizers']} synthesizers x {e['categories']} categories, each "
             f"{e['epochs']} epochs x {e['samples_per_epoch']} samples and {e['evals_per_run']} evaluations of its "
             f"category's test set ({e['test_images']} test images over the {e['categories']} categories)")
    if e["status"] != "measured":
        return (f"Table 1 estimate ({scope}): **unmeasured**, {e['reason']}. Run `make bench` on a CUDA GPU "
                "(writes results/bench_gpu.json), then `make bench` here again.")
    c, f = e["config"], e["fastest"]
    fc = f["config"]
    other = ("" if fc["batch_size"] == c["batch_size"]
             else f"; batch {fc['batch_size']} is not the paper's {c['batch_size']}")
    return (f"Table 1 estimate ({scope}) at the rates measured on {e['gpu']} ({e['source']}): the detector's "
            f"configuration ({c['precision']}, batch {c['batch_size']}, {'compiled' if c['compile'] else 'eager'}, "
            f"{c['image_size']} px, width {c['base_width']}) trains at {e['img_per_s']:.0f} img/s and evaluates in "
            f"{1000 * e['eval_s_per_image']:.1f} ms per test image: {e['train_hours']:.1f} h training + "
            f"{e['eval_hours']:.1f} h evaluation = **{e['total_hours']:.1f} h on one GPU**; "
            f"**{e['gpus_for_goal']} GPU(s)** of that kind finish it within the {e['goal_hours']:.0f} h goal. "
            f"The fastest configuration measured ({fc['precision']}, batch {fc['batch_size']}, "
            f"{'compiled' if fc['compile'] else 'eager'}{other}) trains at {f['img_per_s']:.0f} img/s: "
            f"{f['total_hours']:.1f} h on one GPU, {f['gpus_for_goal']} GPU(s) for the goal.")
