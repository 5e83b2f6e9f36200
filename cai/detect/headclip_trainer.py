"""Training and evaluation of :class:`~cai.detect.headclip.HeadCLIP` on the detector road of every synthesizer.

``detector=headclip`` (conf/detector/headclip.yaml) makes :func:`cai.detect.trainer.make_trainer` return a
:class:`HeadCLIPTrainer`: the UNet's :class:`~cai.detect.trainer.DetectorTrainer` (same epochs over normal
images and pseudo anomalies, checkpoints, resume, model selection and metrics) with HeadCLIP's model, loss
and optimiser (AnomalyCLIP train.py: Adam over the learned parameters only, lr 1e-3, betas (0.5, 0.999),
no scheduler), checkpoints that hold only what is learned (the frozen CLIP stays in its weights file), and
HeadCLIP's own image score (the joint anomaly score) for the image-level metric.

``detector.train_on=auxiliary`` is HeadCLIP's / AnomalyCLIP's zero-shot protocol (:meth:`fit_auxiliary`):
train once on another dataset's annotated test images, then evaluate that model on each target category.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cai.detect.auxiliary import AuxiliaryData
from cai.detect.headclip import HeadCLIP, HeadCLIPLoss, build_clip, check_config
from cai.detect.trainer import DetectorTrainer, EvalSet, TrainSet
from cai.errors import CaiError, ConfigError
from cai.io import save_torch
from cai.metrics import selection_score
from cai.runid import RunDirLock, config_digest
from cai.seeding import torch_generator
from cai.track import file_sha256

log = logging.getLogger(__name__)

CLIP_WEIGHTS_KEY = "clip_weights"  # in a checkpoint's model state: the CLIP weights file it was learned on
PROMPT_INIT_STREAM = 16  # torch_generator(seed, 16): the prompt initialisation's own random stream
# Settings that change only how a trained model is evaluated, not what it learns (auxiliary training key).
# ``amp`` is not one of them: on CUDA it trains in bf16, which learns other parameters.
EVAL_ONLY_KEYS = ("selection", "val_fraction", "eval_every", "eval_batch_size", "pro_fpr_limit", "sigma", "jas",
                  "compile", "channels_last", "train_on")


class HeadCLIPTrainer(DetectorTrainer):
    """:class:`DetectorTrainer` for HeadCLIP; ``cfg`` is ``detector`` of conf/detector/headclip.yaml."""

    @classmethod
    def from_config(cls, cfg: DictConfig, run_dir: Path, device: torch.device, seed: int,
                    on_epoch: Callable[[int, dict], None] | None = None) -> HeadCLIPTrainer:
        return cls(cfg, run_dir, device, seed, on_epoch=on_epoch)

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """HeadCLIP's settings and weights file (:func:`cai.detect.headclip.check_config`), before any work."""
        check_config(cfg)

    def __init__(self, cfg: DictConfig, run_dir: Path, device: torch.device, seed: int,
                 on_epoch: Callable[[int, dict], None] | None = None) -> None:
        self._clip: torch.nn.Module | None = None
        super().__init__(cfg, self._headclip, run_dir, device, seed, on_epoch=on_epoch)

    def _headclip(self) -> HeadCLIP:
        """A HeadCLIP with freshly initialised prompts (seeded) on the one frozen CLIP (loaded once)."""
        if self._clip is None:
            self._clip = build_clip(self.cfg.clip, self.seed)
        return HeadCLIP(self._clip, self.cfg, generator=torch_generator(self.seed, PROMPT_INIT_STREAM))

    def build_loss(self, cfg: DictConfig) -> Callable:
        return HeadCLIPLoss(**cfg.loss)

    def clip_weights(self) -> dict[str, Any] | None:
        """The CLIP weights file the learned parameters go with: name, size and sha256 (None: a random CLIP).
        Hashed once per process while the file is unchanged (``cai.track.file_sha256``; a few seconds for
        ViT-L/14@336's 0.9 GB, beside minutes of loading and training)."""
        if not hasattr(self, "_clip_weights"):
            weights = self.cfg.clip.get("weights")
            path = Path(str(weights)) if weights not in (None, "") else None
            self._clip_weights = None
            if path is not None and path.is_file():
                self._clip_weights = {"name": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
        return self._clip_weights

    def model_state(self, model: torch.nn.Module) -> dict[str, Any]:
        """The learned parameters, and which CLIP weights they were learned on (``CLIP_WEIGHTS_KEY``)."""
        return {**model.learnable_state(), CLIP_WEIGHTS_KEY: self.clip_weights()}

    def load_model_state(self, model: torch.nn.Module, state: dict[str, Any]) -> None:
        """Load learned parameters; they must have been learned on the CLIP weights file there now (a file
        replaced under the same path would silently pair them with another backbone: on resume, in the
        final evaluation, in predict). A checkpoint from before the weights were recorded is not checked."""
        state = dict(state)
        if CLIP_WEIGHTS_KEY in state:
            recorded, current = state.pop(CLIP_WEIGHTS_KEY), self.clip_weights()
            if recorded != current:
                def show(w: dict | None) -> str:
                    return ("a random CLIP" if w is None
                            else f"{w['name']} ({w['bytes']} bytes, sha256 {w['sha256'][:12]})")

                raise ConfigError(
                    f"These HeadCLIP parameters were learned on the CLIP weights {show(recorded)}, but "
                    f"detector.clip.weights is now {show(current)}: the file was replaced, so they would be used "
                    "with another backbone.", where=f"detector.clip.weights={self.cfg.clip.get('weights')}",
                    fix="Restore the weights file the run was trained with, or delete the run dir (or the "
                        "auxiliary training dir) to train again on the new weights.")
        model.load_learnable_state(state)

    def _build(self) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
        model = self.new_model()
        opt = torch.optim.Adam(model.learnable().parameters(), lr=float(self.cfg.lr),
                               betas=tuple(float(b) for b in self.cfg.betas))
        milestones = sorted({max(1, int(f * self.cfg.epochs)) for f in self.cfg.lr_milestones})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=float(self.cfg.lr_gamma))
        return model, opt, sched

    # -- evaluation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_scored(self, model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps at the images' size (float32, CPU) and the joint image scores (N,)."""
        model.eval()
        maps, scores = [], []
        step = int(self.cfg.eval_batch_size)
        for start in range(0, len(images), step):
            x = self._prep(images[start : start + step].to(self.device))
            with self._autocast():
                m, s = model.anomaly_maps(x, out_size=images.shape[-2:])
            maps.append(m)
            scores.append(s)
        model.train()
        if not maps:
            return torch.empty(0), torch.empty(0)
        return torch.cat(maps), torch.cat(scores)

    def predict(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        return self.predict_scored(model, images)[0]


    # -- HeadCLIP's own protocol -----------------------------------------------------------------------------
    def training_key(self, aux: AuxiliaryData) -> dict[str, Any]:
        """What decides the learned parameters of an auxiliary training: the detector settings that act on
        training, the seed, the auxiliary data and the CLIP weights file (by name, size and content, not location)."""
        detector = OmegaConf.to_container(self.cfg, resolve=True)
        assert isinstance(detector, dict)
        for key in EVAL_ONLY_KEYS:
            detector.pop(key, None)
        detector.get("clip", {}).pop("weights", None)  # its location does not matter, its content does
        return {"detector": detector, "seed": self.seed, "auxiliary": aux.identity(),
                "clip_weights": self.clip_weights()}

    def fit_auxiliary(self, aux: AuxiliaryData, test: EvalSet, resume: bool = True) -> dict:
        """Train on ``aux`` once (shared by every target category: ``<cache>/headclip_auxiliary/<key>``,
        locked, resumable), then evaluate the last epoch's parameters on ``test``. Returns what
        :meth:`fit` returns; the run dir gets ``checkpoints/best.pt`` (= last) with the learned parameters."""
        if str(self.cfg.selection) != "last":
            raise ConfigError("detector.train_on=auxiliary needs detector.selection=last.", where="detector.selection")
        directory = aux.cache_dir / "headclip_auxiliary" / f"{aux.name}-{config_digest(self.training_key(aux), 12)}"
        trained = directory / "trained.pt"
        with RunDirLock(directory, what="HeadCLIP auxiliary training"):
            if not trained.is_file():
                log.info("Training HeadCLIP on %s once for every target category: %s", aux.name, directory)
                model, history = self._train_only(aux.load(), directory, resume)
                save_torch(trained, {"model": self.model_state(model), "history": history})
            else:
                log.info("Reusing HeadCLIP trained on %s: %s", aux.name, directory)
        ckpt = torch.load(trained, map_location=self.device, weights_only=False)
        model = self.new_model()
        self.load_model_state(model, ckpt["model"])
        metrics, _ = self.evaluate(model, test)
        record = {**ckpt["history"][-1], **{k: float(v) for k, v in metrics.items()},
                  "selection_score": selection_score(metrics), "trained_in": str(directory)}
        history = [*ckpt["history"][:-1], record]
        save_torch(self.ckpt_dir / "best.pt", {"model": ckpt["model"], "record": record})
        save_torch(self.ckpt_dir / "last.pt", {"model": ckpt["model"], "state": {"epoch": record["epoch"],
                                                                                  "best": record, "history": history}})
        if self.on_epoch:
            for r in history:
                self.on_epoch(int(r["epoch"]), r)
        return {"selected": record, "history": history}

    def _train_only(self, train: TrainSet, directory: Path, resume: bool) -> tuple[HeadCLIP, list[dict]]:
        """``epochs`` epochs on ``train`` with no evaluation; ``directory/last.pt`` after every epoch."""
        if len(train.normals) == 0:
            raise CaiError("No normal images in the auxiliary training set.")
        train.check_pseudo_masks()
        model, opt, sched = self._build()
        last = directory / "last.pt"
        state: dict[str, Any] = (self.resume_from(last, model, opt, sched) if resume else None) or {
            "epoch": 0, "history": []}
        train = train.to(self.device)
        epochs = int(self.cfg.epochs)
        for epoch in range(state["epoch"], epochs):
            try:
                loss = self.train_epoch(model, model, opt, train, epoch)
            except torch.OutOfMemoryError as err:
                raise CaiError(f"The {self.device.type.upper()} ran out of memory training with batch size "
                               f"{self.cfg.batch_size}.",
                               fix=f"Try detector.batch_size={max(1, int(self.cfg.batch_size) // 2)}.") from err
            sched.step()
            if not math.isfinite(loss):
                raise CaiError(f"HeadCLIP's training loss became {loss} at epoch {epoch + 1}.", where=directory,
                               fix="Lower detector.lr, or check the auxiliary images and masks.")
            state["history"].append({"epoch": epoch + 1, "loss": loss, "lr": sched.get_last_lr()[0]})
            state["epoch"] = epoch + 1
            save_torch(last, {"model": self.model_state(model), "optimizer": opt.state_dict(),
                              "scheduler": sched.state_dict(), "state": state})
            log.info("auxiliary epoch %d/%d loss %.4f", epoch + 1, epochs, loss)
        return model, state["history"]
