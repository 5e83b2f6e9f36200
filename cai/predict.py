"""Anomaly maps, overlays and scores for new images from a finished run (``scripts/predict.py``).

A run dir holds what prediction needs: ``resolved_config.yaml`` (image size, detector), the selected
checkpoint ``checkpoints/best.pt`` and, since evaluation stores them, the F1-max thresholds found on the
run's test set (``metrics.json["thresholds"]``). Every image of a folder (sub-folders included) goes
through the evaluation's own preprocessing -- :func:`cai.io.read_image`, :func:`cai.io.resize_image` to the
run's ``dataset.image_size``, :meth:`DetectorTrainer.predict` in batches of ``detector.eval_batch_size`` --
so a test image's map equals its evaluation map (bit for bit when the images go through in the
evaluation's order; batched CPU convolution otherwise rounds differently in the last bit). The image
score is :func:`cai.metrics.image_scores` of that detector-size map, as in evaluation; the map is then
resized (bilinear) back to the image's own size. Written under ``out``:

* ``maps/<relative path>.npy``: the anomaly map (float32, the image's own height x width, values in [0, 1]);
* ``overlays/<relative path>.png``: the image beside the map over it (JET), outlined where the map reaches
  the pixel threshold, and a header with the score and the predicted label;
* ``scores.csv``: ``image, image_score, label, anomalous_area, width, height`` (label ``anomalous`` when
  the image score reaches the image threshold; ``anomalous_area``: share of pixels at or above the pixel
  threshold);
* ``unreadable.csv`` (only when some file could not be read: ``image, reason``) and ``predict.json``
  (run, checkpoint, thresholds used and where they came from, counts; written first with ``status:
  running``, ``finished`` at the end; ``outputs``: the maps and overlays written).

An earlier prediction's outputs in ``out`` (those its predict.json lists) are removed first, so the folder
never mixes two predictions' files (one started while another writes there waits for it); nothing else
there is touched.

Thresholds: ``threshold`` (both), ``image_threshold`` / ``pixel_threshold`` override; otherwise the run's
stored ones. A run finished before thresholds were stored has none: prediction stops and says to pass
``recompute_thresholds=true`` (re-evaluates the checkpoint on the run's test set, which must still be
readable and unchanged, and stores them in ``<run>/thresholds.json``) or a threshold. A run without pixel
ground truth (``dataset.masks=optional``) has no pixel threshold; the outline then uses the image one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from cai.detect.trainer import DetectorTrainer, EvalSet, make_trainer, resolve_device
from cai.errors import CaiError, ConfigError, MissingFileError, StorageError
from cai.io import IMAGE_SUFFIXES, _atomic_write, read_image, resize_image, write_json, write_png, write_text
from cai.metrics import image_scores
from cai.runid import RESOLVED_CONFIG, RunDirLock
from cai.viz import heat

log = logging.getLogger(__name__)

DIFFERS_WHY = ("another device or library version evaluates the model differently, or (for a run recorded before "
               "test-set contents were, whose check covers file names and sizes only) the test images or masks were "
               "changed in place. The thresholds are those of the model on the test set as it is read here; pass "
               "threshold=<value> to use others.")
THRESHOLDS_FILE = "thresholds.json"  # recomputed thresholds of a run finished before evaluation stored them
DEFAULT_CHECKPOINT = Path("checkpoints") / "best.pt"
PREDICTION_FILES = ("scores.csv", "unreadable.csv", "predict.json")  # written into the output dir
PREDICTION_DIRS = {"maps": ".npy", "overlays": ".png"}  # its sub-folders -> suffix of the files written there


@dataclass
class Thresholds:
    """Image and pixel thresholds (score >= threshold: anomalous) and where each came from."""

    image: float
    pixel: float
    source: dict[str, str] = field(default_factory=dict)


@dataclass
class Prediction:
    """One image's result."""

    image: str  # path relative to the images folder
    score: float
    anomalous: bool
    anomalous_area: float
    width: int
    height: int


@dataclass
class RunModel:
    """A run's config, its detector with the checkpoint's weights, and the trainer that evaluates with it."""

    run_dir: Path
    cfg: DictConfig
    checkpoint: Path
    model: torch.nn.Module
    trainer: DetectorTrainer

    @property
    def size(self) -> int:
        return int(self.cfg.dataset.image_size)

    @property
    def own_checkpoint(self) -> bool:
        """The run's selected checkpoint, the one its evaluation (and stored thresholds) describe."""
        return self.checkpoint.resolve() == (self.run_dir / DEFAULT_CHECKPOINT).resolve()


# --------------------------------------------------------------------------------------------- loading


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None, device: str = "auto",
             batch_size: int | None = None, paths: dict[str, str] | None = None) -> RunModel:
    """The run's resolved config and detector; ``checkpoint`` (absolute or relative to the run dir)
    defaults to ``checkpoints/best.pt``, the model its evaluation selected; ``batch_size`` defaults to
    the run's ``detector.eval_batch_size`` (the evaluation's batches). ``paths`` (this machine's
    ``paths.*``) replace the ``<paths.x>`` placeholders of resolved_config.yaml, so a detector that reads a
    file at build time finds it here (HeadCLIP's ``detector.clip.weights: <paths.model_dir>/clip/...``)."""
    run_dir = Path(run_dir).expanduser()
    config = run_dir / RESOLVED_CONFIG
    if not config.is_file():
        raise MissingFileError(
            "Not a run dir: it has no resolved_config.yaml.", where=run_dir,
            fix="Pass run=<a run dir written by scripts/run.py> (logs/... or results/raw/...), which holds "
                "resolved_config.yaml and checkpoints/.")
    if not (run_dir / "done").is_file():
        log.warning("%s has not finished (no done marker): using the checkpoint it holds now.", run_dir)
    ckpt = Path(checkpoint).expanduser() if checkpoint else DEFAULT_CHECKPOINT
    ckpt = ckpt if ckpt.is_absolute() else run_dir / ckpt
    if not ckpt.is_file():
        raise MissingFileError("The checkpoint is missing.", where=ckpt,
                               fix="Pass checkpoint=<path to a .pt written by this run> (default checkpoints/best.pt).")
    cfg = OmegaConf.load(config)
    if paths:
        cfg = OmegaConf.create(_with_paths(OmegaConf.to_container(cfg, resolve=False), paths))
    if batch_size is not None:
        cfg.detector.eval_batch_size = int(batch_size)
    device_ = resolve_device(device)
    trainer = make_trainer(cfg.detector, run_dir, device_, int(cfg.get("seed", 0)))  # the run's detector
    model = trainer.new_model()
    try:
        state = torch.load(ckpt, map_location=device_, weights_only=True)
        trainer.load_model_state(model, state["model"])
    except (RuntimeError, KeyError, OSError, ValueError) as err:
        raise CaiError(f"The checkpoint does not fit the run's detector ({str(err).splitlines()[0][:200]}).",
                       where=ckpt,
                       fix="Pass a checkpoint written by this run (checkpoints/best.pt or last.pt).") from err
    return RunModel(run_dir, cfg, ckpt, model.eval(), trainer)


def _with_paths(node: Any, paths: dict[str, str]) -> Any:
    """The run's config with ``<paths.x>`` placeholders (resolved_config.yaml) replaced by this machine's."""
    if isinstance(node, dict):
        return {k: _with_paths(v, paths) for k, v in node.items()}
    if isinstance(node, list):
        return [_with_paths(v, paths) for v in node]
    if isinstance(node, str):
        return re.sub(r"<paths\.(\w+)>", lambda m: paths.get(m.group(1), m.group(0)), node)
    return node


def _number(value: Any) -> float | None:
    """A stored metric or threshold as a float; None for null (written for NaN: not measured) and for a NaN
    that a file written before JSON was kept strict still holds."""
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def stored_thresholds(run: RunModel) -> dict[str, Any] | None:
    """The thresholds evaluation stored (metrics.json["thresholds"]) or a recomputation did (thresholds.json);
    a threshold that is null (or NaN) is None: there is none."""
    metrics = run.run_dir / "metrics.json"
    if metrics.is_file():
        found = json.loads(metrics.read_text()).get("thresholds")
        if found:
            return {"image": _number(found.get("image")), "pixel": _number(found.get("pixel")),
                    "source": "metrics.json"}
    recomputed = run.run_dir / THRESHOLDS_FILE
    if recomputed.is_file():
        found = json.loads(recomputed.read_text())
        if found.get("matches_metrics_json") is False:
            log.warning("%s was recomputed with test metrics that differ from metrics.json (%s): %s",
                        recomputed, found.get("differs", "see its metrics"), DIFFERS_WHY)
        return {"image": _number(found.get("image")), "pixel": _number(found.get("pixel")), "source": THRESHOLDS_FILE}
    return None


def recompute_thresholds(run: RunModel, paths: dict[str, str]) -> dict[str, Any]:
    """F1-max thresholds of the run's checkpoint on the run's test set, as evaluation finds them now.

    The test set is read from where the run read it (its dataset config with this machine's ``paths``)
    and must be the one the run was evaluated on (run_info.json's manifest). The recomputed metrics are
    compared with metrics.json (a mismatch is logged). Written to ``<run>/thresholds.json`` when the
    checkpoint is the run's own ``best.pt`` (so later predictions reuse them)."""
    from cai.pipeline import _chw, load_category, read_test_set

    cfg = OmegaConf.create(_with_paths(OmegaConf.to_container(run.cfg, resolve=False), paths))
    reader = cfg.dataset.reader
    if not reader.get("categories"):  # resolved_config.yaml leaves out the (sweep's) category list
        reader.categories = list(dict.fromkeys([str(cfg.dataset.category), *map(str, reader.get("textures") or [])]))
    data = load_category(cfg)
    check_evaluated_test_set(run, data)
    log.info("Recomputing the F1-max thresholds on %d test images of %s/%s", len(data.test), data.dataset,
             data.category)
    images, masks, names, labels, has_mask = read_test_set(data, run.size)
    test = EvalSet(_chw(images), torch.from_numpy(masks), names, torch.from_numpy(labels), torch.from_numpy(has_mask))
    maps, scores = run.trainer.predict_scored(run.model, test.images)
    evaluation = run.trainer.score(maps, test, scores)
    out: dict[str, Any] = {**evaluation.thresholds, "checkpoint": str(run.checkpoint),
                           "metrics": evaluation.metrics, "skipped": evaluation.skipped,
                           "how": "F1-max on the run's test set, recomputed by scripts/predict.py"}
    metrics_file = run.run_dir / "metrics.json"
    reported = json.loads(metrics_file.read_text()).get("metrics", {}) if metrics_file.is_file() else {}
    differs = {}  # metrics.json's value (null: not measured) vs the recomputed one; both unmeasured is no difference
    for k, v in reported.items():
        old, now = _number(v), _number(evaluation.metrics.get(k))
        if k in evaluation.metrics and old is not None and (now is None or not math.isclose(old, now, abs_tol=1e-9)):
            differs[k] = (old, now)
    out["matches_metrics_json"] = not differs if reported else None
    if differs:
        out["differs"] = {k: list(v) for k, v in differs.items()}  # metrics.json's value, the recomputed one
    if differs and run.own_checkpoint:
        log.warning("The recomputed test metrics differ from metrics.json (%s): %s", differs, DIFFERS_WHY)
    if run.own_checkpoint:
        try:
            write_json(run.run_dir / THRESHOLDS_FILE, out)
        except StorageError as err:
            log.warning("Could not store the thresholds in the run dir (%s); they are in predict.json only.",
                        err.what)
    return out


def check_evaluated_test_set(run: RunModel, data: Any) -> None:
    """The test set read now (``data``, a CategoryData) must be the one the run was evaluated on: its content
    digest in run_info.json (every test image and mask, byte for byte) must match, else CaiError. A run
    recorded before contents were has only names and sizes: those are checked and the log says that an
    in-place edit would go unnoticed; a run without run_info.json cannot be checked (said in the log too)."""
    from cai.pipeline import test_digests

    info = run.run_dir / "run_info.json"
    try:
        recorded = (json.loads(info.read_text()).get("data") or {}) if info.is_file() else {}
    except (OSError, ValueError, AttributeError):
        recorded = {}
    where = Path(data.root) / data.category
    if not recorded.get("test_content") and not recorded.get("test"):
        log.warning("%s records no test-set manifest: the test set at %s could not be checked against the one the "
                    "run was evaluated on.", info, where)
        return
    now = test_digests(data)
    key = "test_content" if recorded.get("test_content") else "test"
    if recorded[key] != now[key]:
        what = "file names, sizes or contents" if key == "test_content" else "file names or sizes"
        raise CaiError(f"The run's test set has changed since it was evaluated (its images' or masks' {what} "
                       "differ from run_info.json): thresholds found on it now would not be the run's.", where=where,
                       fix="Restore the test images and masks the run was evaluated on, or pass threshold=<value>.")
    if key == "test":
        log.warning("%s was recorded before test-set contents were: only the test images' names and sizes could be "
                    "checked (they match); an image edited in place with the same size, or a changed mask, would "
                    "go unnoticed.", info)


def _threshold_value(value: Any, key: str) -> float:
    """A threshold given on the command line as a number (NaN would label every image normal: every
    comparison with it is false)."""
    number = None if isinstance(value, bool) else value
    try:
        number = float(number)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if math.isnan(number):
        raise ConfigError(f"{key}={value!r} is not a number.", where=key,
                          fix=f"Pass {key}=<value in [0, 1]> (map values and image scores are in [0, 1]).")
    return number


def choose_thresholds(run: RunModel, cfg: DictConfig, paths: dict[str, str]) -> Thresholds:
    """The thresholds ``cfg`` asks for: overrides first, then the run's stored (or recomputed) ones."""
    override = {"image": cfg.get("image_threshold"), "pixel": cfg.get("pixel_threshold")}
    for kind in override:
        if override[kind] is None and cfg.get("threshold") is not None:
            override[kind] = cfg.threshold
    for kind, value in override.items():
        if value is not None:
            override[kind] = _threshold_value(value, f"{kind}_threshold" if cfg.get(f"{kind}_threshold") is not None
                                              else "threshold")
    source = {k: "override" for k, v in override.items() if v is not None}
    if len(source) == 2:
        return Thresholds(float(override["image"]), float(override["pixel"]), source)
    found: dict[str, Any] | None = None
    if cfg.get("recompute_thresholds"):
        found = {**recompute_thresholds(run, paths), "source": "recomputed"}
    elif run.own_checkpoint:
        found = stored_thresholds(run)
    if found is None or found.get("image") is None:
        why = ("it was evaluated before thresholds were stored" if run.own_checkpoint
               else f"its stored thresholds describe {DEFAULT_CHECKPOINT}, not {run.checkpoint.name}")
        if not (run.run_dir / "done").is_file() and not (run.run_dir / "metrics.json").is_file():
            failed = " (failed.txt says why it failed)" if (run.run_dir / "failed.txt").is_file() else ""
            why = f"the run has not finished, so it has not been evaluated{failed}"
        raise ConfigError(
            f"The run has no F1-max thresholds for this checkpoint: {why}.", where=run.run_dir,
            fix="Pass recompute_thresholds=true (re-evaluates the checkpoint on the run's test set, which must be "
                "readable, and stores them in the run dir) or threshold=<value in [0, 1]> (image_threshold= / "
                "pixel_threshold= for one of them).")
    image = float(override["image"]) if override["image"] is not None else float(found["image"])
    source.setdefault("image", found["source"])
    if override["pixel"] is not None:
        pixel = float(override["pixel"])
    elif found.get("pixel") is not None:
        pixel, source["pixel"] = float(found["pixel"]), found["source"]
    else:  # no pixel ground truth in the run's test set: outline where the map reaches the image threshold
        pixel, source["pixel"] = image, "image threshold (the run has no pixel ground truth)"
        log.warning("The run has no pixel threshold (its test set had no pixel ground truth): the outline is drawn "
                    "at the image threshold %.4f; pass pixel_threshold= to choose one.", image)
    return Thresholds(image, pixel, source)


# --------------------------------------------------------------------------------------------- images


def find_images(folder: Path, exclude: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Image files under ``folder`` (sub-folders too, hidden ones skipped; a single file is itself), sorted,
    and the other files found there (reported, not read). What a prediction into ``exclude`` (the output dir)
    writes is left out: all of it when it lies inside ``folder``, else the files an earlier prediction wrote
    there and its csv/json (so ``out`` may also be ``folder`` itself or a folder above it)."""
    folder = Path(folder).expanduser()
    if folder.is_file():
        return [folder], []
    if not folder.is_dir():
        raise CaiError("The images folder does not exist.", where=folder,
                       fix="Pass images=<folder of images or one image>.")
    inside: Path | None = None  # an output dir inside the images folder: left out as a whole
    written: set[Path] = set()  # else what a prediction wrote into it
    if exclude is not None:
        out = Path(exclude).expanduser().resolve()
        if out != folder.resolve() and out.is_relative_to(folder.resolve()):
            inside = out
        else:
            written = {p.resolve() for p in previous_outputs(out)} | {out / f for f in PREDICTION_FILES}
    images, others = [], []
    for p in _walk(folder):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if (inside is not None and p.resolve().is_relative_to(inside)) or p.resolve() in written:
            continue
        (images if p.suffix.lower() in IMAGE_SUFFIXES else others).append(p)
    return images, others


def _walk(folder: Path) -> list[Path]:
    """Every path under ``folder``, sorted, entering symlinked sub-folders (``Path.rglob`` does not) once per
    real folder, so a link back up does not recurse for ever (real folders before links to them)."""
    out, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort(key=lambda d: (os.path.islink(os.path.join(root, d)), d))
        out += [Path(root) / f for f in files]
    return sorted(out)


def output_names(images: list[Path], root: Path) -> dict[Path, Path]:
    """Relative output stem per image: its relative path without suffix, or with it when that name would be
    another image's too (``a.png`` and ``a.jpg``; ``a.png`` beside ``a.jpg`` and ``a.png.bmp``)."""
    rel = {p: (p.relative_to(root) if p != root else Path(p.name)) for p in images}
    names = {p: r.with_suffix("") for p, r in rel.items()}
    while True:  # an image that keeps its suffix may take another's name: repeat until all differ
        counts: dict[Path, int] = {}
        for n in names.values():
            counts[n] = counts.get(n, 0) + 1
        clash = [p for p, n in names.items() if counts[n] > 1 and n != rel[p]]
        if not clash:
            return names
        names.update({p: rel[p] for p in clash})


def overlay(image: np.ndarray, amap: np.ndarray, pixel_threshold: float, header: str, alpha: float = 0.5,
            min_height: int = 160) -> np.ndarray:
    """The image beside the map blended over it (JET, absolute [0, 1] scale), outlined where the map
    reaches ``pixel_threshold``, under a one-line header; images lower than ``min_height`` are enlarged
    (nearest neighbour, whole pixels) so that the overlay stays legible."""
    h, w = image.shape[:2]
    blended = ((1 - alpha) * image.astype(np.float32) + alpha * heat(amap).astype(np.float32)).round().astype(np.uint8)
    k = max(1, math.ceil(min_height / h))
    if k > 1:
        image, blended = (cv2.resize(a, (w * k, h * k), interpolation=cv2.INTER_NEAREST) for a in (image, blended))
        amap = cv2.resize(amap, (w * k, h * k), interpolation=cv2.INTER_NEAREST)
        h, w = h * k, w * k
    thick = max(1, round(min(h, w) / 200))
    contours, _ = cv2.findContours((amap >= pixel_threshold).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(blended, contours, -1, (255, 255, 255), thick)
    gap = max(2, w // 100)
    body = np.concatenate([image, np.full((h, gap, 3), 255, np.uint8), blended], axis=1)
    bar_h = max(20, min(48, h // 12))
    scale = bar_h / 36
    (tw, _), _ = cv2.getTextSize(header, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    scale *= min(1.0, (body.shape[1] - 8) / max(tw, 1))
    bar = np.full((bar_h, body.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, header, (4, int(bar_h * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, body], axis=0)


def write_npy(path: Path, array: np.ndarray) -> None:
    """Atomically write a .npy file."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    _atomic_write(path, write, size_hint=array.nbytes)


def previous_outputs(out_dir: Path) -> list[Path]:
    """The maps and overlays an earlier prediction into ``out_dir`` wrote (predict.json's ``outputs``)."""
    try:
        listed = json.loads((out_dir / "predict.json").read_text()).get("outputs") or []
    except (OSError, ValueError, AttributeError):
        return []
    root = out_dir.resolve()
    return [p for p in (out_dir / str(o) for o in listed) if p.resolve().is_relative_to(root)]


def clear_previous(out_dir: Path) -> None:
    """Remove an earlier prediction's outputs from ``out_dir`` -- the maps and overlays its predict.json lists
    (written first, so a prediction that stopped half-way is cleared too) and its csv/json files -- so that
    none of them is taken for this one's (an overlay outlined at another threshold, a file listed as
    unreadable that this prediction never saw). Nothing else in ``out_dir`` is touched."""
    for p in previous_outputs(out_dir):
        p.unlink(missing_ok=True)
        for parent in p.parents:  # sub-folders it leaves empty, up to maps/ or overlays/
            if parent == out_dir or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()
    for name in PREDICTION_FILES:
        (out_dir / name).unlink(missing_ok=True)


def _csv(rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- predict


def predict_folder(run: RunModel, images_dir: str | Path, out_dir: str | Path, thresholds: Thresholds,
                   alpha: float = 0.5) -> dict[str, Any]:
    """Predict every image under ``images_dir`` into ``out_dir`` (see the module docstring); unreadable
    files are reported (log, ``unreadable.csv``, ``predict.json``) and the rest processed. A second
    prediction into the same ``out_dir`` waits for the first (``<out>/.lock``), so their files never mix."""
    from cai.io import check_writable

    images_dir, out_dir = Path(images_dir).expanduser(), Path(out_dir).expanduser()
    if not images_dir.exists():
        find_images(images_dir)  # its error, before the output dir is made
    check_writable(out_dir, "output folder")  # one clear error, before the lock file is made there
    with RunDirLock(out_dir, "predictions folder"):
        return _predict_folder(run, images_dir, out_dir, thresholds, alpha)


def _predict_folder(run: RunModel, images_dir: Path, out_dir: Path, thresholds: Thresholds,
                    alpha: float) -> dict[str, Any]:
    from tqdm.auto import tqdm

    files, others = find_images(images_dir, exclude=out_dir)
    if others:
        log.info("Ignored %d file(s) without an image suffix (%s), e.g. %s", len(others), "/".join(IMAGE_SUFFIXES),
                 others[0])
    if not files:
        raise CaiError("No image files found.", where=images_dir,
                       fix=f"Pass images=<a folder holding {'/'.join(IMAGE_SUFFIXES)} files (sub-folders too)>.")
    names = output_names(files, images_dir)
    clear_previous(out_dir)
    outputs = sorted(f"{sub}/{name.as_posix()}{suffix}" for name in names.values()
                     for sub, suffix in PREDICTION_DIRS.items())
    write_json(out_dir / "predict.json", {"status": "running", "run": str(run.run_dir), "images": str(images_dir),
                                          "outputs": outputs})
    size, pool = run.size, run.cfg.detector.image_score_pool  # None: the detector scores images itself
    batch = int(run.cfg.detector.eval_batch_size)  # the evaluation's batches: its maps, bit for bit
    results: list[Prediction] = []
    unreadable: list[tuple[str, str]] = []
    pending: list[tuple[Path, np.ndarray]] = []
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=None)

    def flush() -> None:
        if not pending:
            return
        small = np.stack([resize_image(img, size) for _, img in pending])
        maps, own = run.trainer.predict_scored(run.model,
                                               torch.from_numpy(np.ascontiguousarray(small.transpose(0, 3, 1, 2))))
        maps = maps.numpy()
        scores = image_scores(maps, int(pool)) if own is None else own.numpy()  # HeadCLIP: its joint score
        for (path, img), amap, score in zip(pending, maps, scores, strict=True):
            results.append(_write_one(path, img, amap, float(score), names[path], images_dir, out_dir,
                                      thresholds, alpha))
        bar.update(len(pending))
        pending.clear()

    for path in files:
        try:
            pending.append((path, read_image(path)))
        except CaiError as err:
            rel = str(path.relative_to(images_dir)) if path != images_dir else path.name
            unreadable.append((rel, err.what))
            log.warning("Skipped unreadable file %s: %s", path, err.what)
            bar.update(1)
        if len(pending) == batch:
            flush()
    flush()
    bar.close()
    if not results:
        raise CaiError(f"None of the {len(files)} image file(s) could be read.", where=images_dir,
                       fix="Check the files (truncated, empty or not images?).")
    write_text(out_dir / "scores.csv", _csv(
        [["image", "image_score", "label", "anomalous_area", "width", "height"]]
        + [[r.image, f"{r.score:.9g}", "anomalous" if r.anomalous else "normal", f"{r.anomalous_area:.9g}",
            r.width, r.height] for r in results]))
    if unreadable:
        write_text(out_dir / "unreadable.csv", _csv([["image", "reason"], *map(list, unreadable)]))
    summary = {
        "status": "finished", "run": str(run.run_dir), "checkpoint": str(run.checkpoint), "images": str(images_dir),
        "image_size": size, "image_score_pool": pool,
        "thresholds": {"image": thresholds.image, "pixel": thresholds.pixel, "source": thresholds.source},
        "n_images": len(results), "n_anomalous": sum(r.anomalous for r in results),
        "unreadable": [{"image": i, "reason": r} for i, r in unreadable],
        "outputs": [o for o in outputs if (out_dir / o).is_file()],  # maps/ and overlays/ files (relative)
    }
    write_json(out_dir / "predict.json", summary)
    skipped = f"; {len(unreadable)} unreadable file(s) skipped, listed in {out_dir / 'unreadable.csv'}"
    log.info("%d image(s) predicted into %s (%d anomalous at image threshold %.4f)%s", len(results), out_dir,
             summary["n_anomalous"], thresholds.image, skipped if unreadable else "")
    return summary


def _write_one(path: Path, image: np.ndarray, amap: np.ndarray, score: float, name: Path, images_dir: Path,
               out_dir: Path, thresholds: Thresholds, alpha: float) -> Prediction:
    """Resize one detector-size map back to the image's size and write its .npy and overlay."""
    h, w = image.shape[:2]
    full = amap if amap.shape == (h, w) else cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
    full = np.ascontiguousarray(full, dtype=np.float32)
    write_npy(out_dir / "maps" / name.with_name(name.name + ".npy"), full)
    anomalous = score >= thresholds.image
    header = (f"{name}  score {score:.3f} {'>=' if anomalous else '<'} {thresholds.image:.3f}: "
              f"{'ANOMALOUS' if anomalous else 'normal'}  (outline: map >= {thresholds.pixel:.3f})")
    write_png(out_dir / "overlays" / name.with_name(name.name + ".png"),
              overlay(image, full, thresholds.pixel, header, alpha))
    rel = str(path.relative_to(images_dir)) if path != images_dir else path.name
    return Prediction(rel, score, bool(anomalous), float((full >= thresholds.pixel).mean()), w, h)


def run_predict(cfg: DictConfig) -> dict[str, Any]:
    """scripts/predict.py: load the run, choose the thresholds, predict the folder."""
    if not cfg.get("run"):
        raise ConfigError("No run dir given.", fix="Pass run=<run dir> (make predict RUN=<run dir> IMAGES=<folder>).")
    if not cfg.get("images"):
        raise ConfigError("No images given.", fix="Pass images=<folder of images> (make predict ... IMAGES=<folder>).")
    paths = {}
    for key in cfg.get("paths") or {}:
        value = OmegaConf.select(cfg, f"paths.{key}", throw_on_resolution_failure=False)
        if value is not None:
            paths[key] = str(value)
    run = load_run(cfg.run, cfg.get("checkpoint"), str(cfg.get("device", "auto")), cfg.get("batch_size"), paths)
    thresholds = choose_thresholds(run, cfg, paths)
    out = Path(cfg.out).expanduser() if cfg.get("out") else run.run_dir / "predictions"
    return predict_folder(run, cfg.images, out, thresholds, float(cfg.get("overlay_alpha", 0.5)))
