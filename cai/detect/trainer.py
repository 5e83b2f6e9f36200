"""Detector training and evaluation with the paper's protocol (§4.1, following AnomalyDiffusion).

Every epoch draws ``samples_per_epoch`` training samples, a fraction ``anomaly_fraction`` of them
pseudo anomalies and the rest normal images with all-zero masks; Adam, MultiStepLR at given fractions
of the epochs; focal loss. After each evaluated epoch the model is scored on the real test set; the
reported model is the best epoch by ``selection_score`` (``best``: the paper's "best among 200 epochs",
chosen on the test set), the best epoch by the same score on a held-out validation set of normal images
and their pseudo anomalies (``val``: no test image chooses; :mod:`cai.detect.validation`), or the last
epoch, as configured.

The training set lives on the device as uint8 and batches are gathered there, so no host copy happens
per step. Each epoch's sample order comes from a generator seeded by (seed, epoch), and a checkpoint
is written atomically after every epoch, so ``resume`` continues exactly where an interrupted run
stopped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from cai.detect.focal import FocalLoss
from cai.errors import CaiError, ConfigError
from cai.io import save_torch
from cai.metrics import AnomalyMetrics, Evaluation, selection_score
from cai.seeding import torch_generator

log = logging.getLogger(__name__)


@dataclass
class TrainSet:
    """Normal images and pseudo anomalies as uint8 (N, 3, H, W) with bool masks (M, H, W).

    Every pseudo anomaly must have a non-empty mask: the trainer mixes normal images in itself, so an
    empty one would be a normal image counted as an anomaly (:meth:`check_pseudo_masks`). ``source``
    says where the pseudo anomalies came from (their cache directory), for error messages.
    """

    normals: torch.Tensor
    pseudo: torch.Tensor
    pseudo_masks: torch.Tensor
    source: str | Path | None = None

    def to(self, device: torch.device) -> TrainSet:
        return TrainSet(self.normals.to(device), self.pseudo.to(device), self.pseudo_masks.to(device), self.source)

    def check_pseudo_masks(self) -> None:
        """Refuse pseudo anomalies with an all-False mask (a cache that breaks the synthesis contract)."""
        if len(self.pseudo_masks) == 0:
            return
        empty = torch.nonzero(~self.pseudo_masks.flatten(1).any(dim=1)).flatten().tolist()
        if empty:
            shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
            raise CaiError(
                f"{len(empty)} of {len(self.pseudo_masks)} pseudo anomalies have an empty mask (indices {shown}); "
                "the detector mixes normal images in itself, so each pseudo anomaly must mark anomalous pixels.",
                where=self.source if self.source is not None else "the training set's pseudo anomalies",
                fix="Synthesize them again with the current code (the cache writer redraws empty outputs under "
                    "the detector protocol): delete that cache directory and re-run.",
            )


@dataclass
class EvalSet:
    """Real test images uint8 (T, 3, H, W), bool masks (T, H, W), their names, image labels (bool T,
    taken from the original-size masks; None: a mask with an anomalous pixel) and ``has_mask`` (bool T:
    False for an anomalous image without pixel ground truth, whose mask is a placeholder; None: all have)."""

    images: torch.Tensor
    masks: torch.Tensor
    names: list[str]
    labels: torch.Tensor | None = None
    has_mask: torch.Tensor | None = None


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda was asked for but no CUDA GPU is visible.", fix="Use device=auto or cpu.")
    return torch.device(name)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float in [0, 1]."""
    return images.float().div_(255.0)




class DetectorTrainer:
    """Trains one detector on one category and evaluates it on the real test set."""

    def __init__(
        self,
        cfg: DictConfig,
        model_factory: Callable[[], torch.nn.Module],
        run_dir: Path,
        device: torch.device,
        seed: int,
        on_epoch: Callable[[int, dict], None] | None = None,
    ) -> None:
        self.cfg, self.run_dir, self.device, self.seed = cfg, Path(run_dir), device, seed
        self.model_factory = model_factory
        self.on_epoch = on_epoch
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.loss_fn = self.build_loss(cfg)
        self._warned_skip = False  # the "pixel metrics skipped" warning is logged once per trainer
        if cfg.selection not in ("best", "val", "last"):
            raise ConfigError(f"detector.selection must be 'best', 'val' or 'last', got {cfg.selection!r}.")

    @classmethod
    def from_config(cls, cfg: DictConfig, run_dir: Path, device: torch.device, seed: int,
                    on_epoch: Callable[[int, dict], None] | None = None) -> DetectorTrainer:
        """The trainer of ``detector=<cfg>``: the UNet's model is ``cfg.model`` (a Hydra ``_target_``)."""
        from hydra.utils import instantiate

        return cls(cfg, lambda: instantiate(cfg.model), run_dir, device, seed, on_epoch=on_epoch)

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """Checks of ``detector`` that only this detector family knows and that need no data, run by
        :func:`cai.validate.validate_job` before any work (the UNet's settings are checked there)."""

    def build_loss(self, cfg: DictConfig) -> Callable:
        """The training loss, called as ``loss_fn(model_output, masks)``: focal loss on the UNet's logits."""
        return FocalLoss(**cfg.loss)

    # -- model ---------------------------------------------------------------------------------
    def new_model(self) -> torch.nn.Module:
        """A freshly built model on the device."""
        return self.model_factory().to(self.device)

    def model_state(self, model: torch.nn.Module) -> dict[str, Any]:
        """What a checkpoint keeps of the model (all of the UNet; a detector with a frozen backbone keeps
        only what it learns)."""
        return model.state_dict()

    def load_model_state(self, model: torch.nn.Module, state: dict[str, Any]) -> None:
        model.load_state_dict(state)

    def _build(self) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
        model = self.new_model()
        if self.cfg.channels_last and self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=self.cfg.lr)
        milestones = sorted({max(1, int(f * self.cfg.epochs)) for f in self.cfg.lr_milestones})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=self.cfg.lr_gamma)
        return model, opt, sched

    def _autocast(self):  # noqa: ANN202
        enabled = bool(self.cfg.amp) and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _prep(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float(images)
        if self.cfg.channels_last and self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # -- data ----------------------------------------------------------------------------------
    def epoch_plan(self, epoch: int, n_normal: int, n_pseudo: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(is_pseudo, index) for every sample of an epoch, shuffled; depends only on (seed, epoch).

        ``samples_per_epoch`` draws that many, a fraction ``anomaly_fraction`` of them pseudo anomalies;
        ``null`` takes every pseudo anomaly and every normal image once (one pass over the training set)."""
        g = torch_generator(self.seed, epoch)
        if self.cfg.samples_per_epoch is None:
            k, total = n_pseudo, n_pseudo + n_normal
            idx = torch.cat([torch.arange(n_pseudo), torch.arange(n_normal)])
            kind = torch.cat([torch.ones(k, dtype=torch.bool), torch.zeros(total - k, dtype=torch.bool)])
            order = torch.randperm(total, generator=g)
            return kind[order], idx[order]
        total = int(self.cfg.samples_per_epoch)
        k = round(total * float(self.cfg.anomaly_fraction)) if n_pseudo else 0
        idx = torch.cat([torch.randint(n_pseudo, (k,), generator=g),
                         torch.randint(n_normal, (total - k,), generator=g)])
        kind = torch.cat([torch.ones(k, dtype=torch.bool), torch.zeros(total - k, dtype=torch.bool)])
        order = torch.randperm(total, generator=g)
        return kind[order], idx[order]

    def _batch(self, data: TrainSet, kind: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = data.normals.shape[-2:]
        images = torch.empty((len(idx), 3, h, w), dtype=torch.uint8, device=self.device)
        masks = torch.zeros((len(idx), h, w), dtype=torch.uint8, device=self.device)
        kind, idx = kind.to(self.device), idx.to(self.device)
        if kind.any():
            images[kind] = data.pseudo[idx[kind]]
            masks[kind] = data.pseudo_masks[idx[kind]].to(torch.uint8)
        if (~kind).any():
            images[~kind] = data.normals[idx[~kind]]
        return images, masks

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Anomaly maps (softmax probability of the anomalous class), float32 on the CPU."""
        model.eval()
        out = []
        for start in range(0, len(images), int(self.cfg.eval_batch_size)):
            x = self._prep(images[start : start + int(self.cfg.eval_batch_size)].to(self.device))
            with self._autocast():
                logits = model(x)
            out.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
        model.train()
        return torch.cat(out) if out else torch.empty(0)

    def predict_scored(self, model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Anomaly maps and the detector's own image scores; None: the image score is the pooled map
        (:func:`cai.metrics.image_scores`), as for the UNet."""
        return self.predict(model, images), None

    def evaluate(self, model: torch.nn.Module, test: EvalSet) -> tuple[dict, torch.Tensor]:
        maps, scores = self.predict_scored(model, test.images)
        return self.score(maps, test, scores).metrics, maps

    def score(self, maps: torch.Tensor, test: EvalSet, scores: torch.Tensor | None = None) -> Evaluation:
        """Metrics, F1-max thresholds and skipped metric families of ``maps`` (and the detector's own image
        ``scores``, if it has them) on ``test``."""
        pool = self.cfg.image_score_pool  # None: the detector gives its own image scores (HeadCLIP)
        metrics = AnomalyMetrics(fpr_limit=float(self.cfg.pro_fpr_limit),
                                 image_pool=None if pool is None else int(pool))
        metrics.update(maps, test.masks, labels=test.labels, has_mask=test.has_mask, scores=scores)
        evaluation = metrics.evaluate()
        if evaluation.pixel_skipped and not self._warned_skip:
            self._warned_skip = True
            log.warning("Pixel metrics skipped (%s); model selection uses image AUROC + image AP.",
                        evaluation.skipped["pixel"])
        return evaluation

    # -- training ------------------------------------------------------------------------------
    def fit(self, train: TrainSet, test: EvalSet, resume: bool = False, val: EvalSet | None = None) -> dict:
        """Train for ``epochs`` epochs; return the selected epoch's metrics and the history.

        With ``selection=val`` every evaluated epoch is also scored on ``val`` (``val_*`` keys and
        ``val_selection_score`` in its record) and that score alone chooses the epoch; the test metrics
        are still recorded for the history and reported for the chosen epoch."""
        if len(train.normals) == 0:
            raise CaiError("No normal training images to train the detector on.")
        train.check_pseudo_masks()
        if self.cfg.selection == "val" and val is None:
            raise ConfigError("detector.selection=val needs a validation set (held-out normals and their "
                              "pseudo anomalies).", fix="Pass val= to fit (run_job builds it).")
        model, opt, sched = self._build()
        last = self.ckpt_dir / "last.pt"
        state = self.resume_from(last, model, opt, sched) if resume else None
        state = state or {"epoch": 0, "best": None, "history": []}
        train = train.to(self.device)
        if self.cfg.compile and self.device.type != "cuda":  # not an error: it runs, but for a long time
            log.warning("detector.compile=true on %s: compiling takes minutes to tens of minutes before the "
                        "first step (a HeadCLIP probe was still compiling after 30 min on 2 cores), and on an "
                        "H200 the compiled UNet was slower than eager (results/bench_gpu.md).", self.device.type)
        forward = torch.compile(model) if self.cfg.compile else model
        epochs, eval_every = int(self.cfg.epochs), int(self.cfg.eval_every)
        for epoch in range(state["epoch"], epochs):
            try:
                loss = self.train_epoch(model, forward, opt, train, epoch)
            except torch.OutOfMemoryError as err:
                raise CaiError(
                    f"The {self.device.type.upper()} ran out of memory training with batch size "
                    f"{self.cfg.batch_size}.",
                    fix=f"Try detector.batch_size={max(1, int(self.cfg.batch_size) // 2)} "
                        f"(and/or a smaller dataset.image_size).",
                ) from err
            sched.step()
            record: dict[str, Any] = {"epoch": epoch + 1, "loss": loss, "lr": sched.get_last_lr()[0]}
            is_last = epoch + 1 == epochs
            choosing = self.cfg.selection in ("best", "val")
            if (choosing and eval_every > 0 and (epoch + 1) % eval_every == 0) or is_last:
                metrics, _ = self.evaluate(model, test)
                record.update({k: float(v) for k, v in metrics.items()})
                record["selection_score"] = selection_score(metrics)
                score_key = "selection_score"
                if self.cfg.selection == "val":
                    assert val is not None
                    val_metrics, _ = self.evaluate(model, val)
                    record.update({f"val_{k}": float(v) for k, v in val_metrics.items()})
                    record["val_selection_score"] = selection_score(val_metrics)
                    score_key = "val_selection_score"
                score = record[score_key]
                if self.cfg.selection == "last" or state["best"] is None or score > state["best"][score_key]:
                    state["best"] = dict(record)
                    save_torch(self.ckpt_dir / "best.pt", {"model": self.model_state(model), "record": record})
            state["history"].append(record)
            state["epoch"] = epoch + 1
            save_torch(last, {"model": self.model_state(model), "optimizer": opt.state_dict(),
                              "scheduler": sched.state_dict(), "state": state})
            if self.on_epoch:
                self.on_epoch(epoch + 1, record)
            log.info("epoch %d/%d %s", epoch + 1, epochs, {k: round(v, 4) for k, v in record.items() if k != "epoch"})
        return {"selected": state["best"], "history": state["history"]}

    def train_epoch(self, model: torch.nn.Module, forward: Callable, opt: torch.optim.Optimizer,
                    train: TrainSet, epoch: int) -> float:
        """One epoch of ``samples_per_epoch`` samples; returns the mean loss (one device sync at the end)."""
        bs = int(self.cfg.batch_size)
        kind, idx = self.epoch_plan(epoch, len(train.normals), len(train.pseudo))
        steps = math.ceil(len(idx) / bs)
        running = torch.zeros((), device=self.device)
        for step in tqdm(range(steps), desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False, disable=None):
            sl = slice(step * bs, (step + 1) * bs)
            images, masks = self._batch(train, kind[sl], idx[sl])
            with self._autocast():
                logits = forward(self._prep(images))
            loss = self.loss_fn(logits, masks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.detach()
        return float(running) / steps

    def resume_from(self, last: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    sched: Any) -> dict[str, Any] | None:
        """Load ``last`` (model, optimizer, scheduler) and return its training state; None when absent."""
        if not last.is_file():
            return None
        ckpt = torch.load(last, map_location=self.device, weights_only=False)
        self.load_model_state(model, ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        log.info("Resumed from %s at epoch %d", last, ckpt["state"]["epoch"])
        return ckpt["state"]

    def load_selected(self) -> torch.nn.Module:
        """The selected (best or last) model from the run dir."""
        model = self.new_model()
        ckpt = torch.load(self.ckpt_dir / "best.pt", map_location=self.device, weights_only=False)
        self.load_model_state(model, ckpt["model"])
        return model.eval()


def make_trainer(cfg: DictConfig, run_dir: Path, device: torch.device, seed: int,
                 on_epoch: Callable[[int, dict], None] | None = None) -> DetectorTrainer:
    """The trainer ``detector=<choice>`` names: ``cfg.trainer`` (a class path, e.g. HeadCLIP's), or the
    UNet's :class:`DetectorTrainer` when the detector config names none (conf/detector/unet.yaml)."""
    return trainer_class(cfg).from_config(cfg, run_dir, device, seed, on_epoch=on_epoch)


def trainer_class(cfg: DictConfig) -> type[DetectorTrainer]:
    """The trainer class ``detector.trainer`` names (the UNet's :class:`DetectorTrainer` when none)."""
    from hydra.utils import get_class

    target = cfg.get("trainer")
    cls = get_class(str(target)) if target else DetectorTrainer
    if not (isinstance(cls, type) and issubclass(cls, DetectorTrainer)):
        raise ConfigError(f"detector.trainer={target} is not a DetectorTrainer.", where="detector.trainer",
                          fix="Name a subclass of cai.detect.trainer.DetectorTrainer, or drop the key (the UNet's).")
    return cls
