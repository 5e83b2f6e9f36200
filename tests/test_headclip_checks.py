"""``detector=headclip`` probed with wrong and extreme settings, a weights file read from ``paths.model_dir``,
the shared auxiliary training and prediction from a finished run: each either works or stops with a
:class:`~cai.errors.CaiError` before any work (synthesis, reading images), never with a traceback deep in
torch or a silently wrong number. A tiny random CLIP (tests/test_e2e_headclip.py's TINY_HEADCLIP) keeps
each case to seconds on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cai.errors import CaiError, ConfigError
from tests.conftest import compose_config
from tests.test_e2e_headclip import TINY_DEMO, TINY_HEADCLIP


# The default weights path (conf/detector/headclip.yaml) instead of TINY_HEADCLIP's random CLIP.
REAL_WEIGHTS = ("detector.clip.random_init=false", "detector.clip.weights=${paths.model_dir}/clip/ViT-L-14-336px.pt")


def _cfg(tmp_path: Path, *extra: str, run: str = "run"):
    return compose_config("config", [*TINY_DEMO, *TINY_HEADCLIP, "synthesizer=cutpaste",
                                     f"paths.cache_dir={tmp_path / 'cache'}", f"paths.model_dir={tmp_path / 'models'}",
                                     *extra], tmp_path / run)


def _tiny_clip_file(tmp_path: Path, name: str = "ViT-L-14-336px.pt", seed: int = 3) -> Path:
    """A tiny CLIP's state dict saved where the default ``detector.clip.weights`` points
    (``${paths.model_dir}/clip/ViT-L-14-336px.pt``)."""
    from cai.detect.headclip import build_clip

    clip = build_clip(_cfg(tmp_path).detector.clip, seed=seed)
    path = tmp_path / "models" / "clip" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(clip.state_dict(), path)
    return path


# --- prediction from a run whose CLIP weights live under paths.model_dir --------------------------------------
def _untrained_headclip_run(tmp_path: Path) -> Path:
    """A finished-looking HeadCLIP run dir as run_job writes it: resolved_config.yaml keeps the weights path as
    ``<paths.model_dir>/clip/ViT-L-14-336px.pt`` (machine-independent), best.pt holds the learned parameters."""
    from cai.detect.headclip_trainer import HeadCLIPTrainer
    from cai.runid import identity_config

    _tiny_clip_file(tmp_path)
    run_dir = tmp_path / "run"
    cfg = _cfg(tmp_path, *REAL_WEIGHTS)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(identity_config(cfg)))
    assert "<paths.model_dir>/clip/ViT-L-14-336px.pt" in (run_dir / "resolved_config.yaml").read_text()
    trainer = HeadCLIPTrainer(cfg.detector, run_dir, torch.device("cpu"), 0)
    torch.save({"model": trainer.model_state(trainer.new_model())}, run_dir / "checkpoints" / "best.pt")
    (run_dir / "metrics.json").write_text(json.dumps({"thresholds": {"image": 0.5, "pixel": 0.5}}))
    (run_dir / "done").write_text("ok\n")
    return run_dir


def test_predict_finds_the_clip_weights_under_this_machines_model_dir(tmp_path):
    """resolved_config.yaml stores ``<paths.model_dir>/clip/...``; prediction used that literal string as the
    weights path, so `make predict` failed on every HeadCLIP run with real weights (MissingFileError)."""
    import cv2

    from cai.predict import run_predict

    run_dir = _untrained_headclip_run(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    cfg = OmegaConf.create({"run": str(run_dir), "images": str(images), "out": str(tmp_path / "pred"), "device": "cpu",
                            "paths": {"cache_dir": str(tmp_path / "cache"), "model_dir": str(tmp_path / "models")}})
    summary = run_predict(cfg)
    assert summary["status"] == "finished" and summary["n_images"] == 2
    scores = [float(r.split(",")[1]) for r in (tmp_path / "pred" / "scores.csv").read_text().splitlines()[1:]]
    assert all(0.0 <= s <= 1.0 for s in scores)
