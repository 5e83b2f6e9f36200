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


# --- settings that used to fail only after synthesis (a traceback deep in torch) or give silent nonsense -----
@pytest.mark.parametrize(("overrides", "needle"), [
    (["detector.clip.image_size=36"], "not a multiple of the patch size 8"),
    (["detector.clip.image_size=32.5"], "detector.clip.image_size must be a whole number"),  # silently 32
    (["detector.auxiliary.image_size=0"], "detector.auxiliary.image_size"),  # cv2 error in the auxiliary data
    (["detector.dpam_layer=9"], "detector.dpam_layer=9"),
    (["detector.dpam_layer=0"], "detector.dpam_layer=0"),
    (["detector.feature_layers=[5]"], "detector.feature_layers"),
    (["detector.feature_layers=[]"], "detector.feature_layers"),
    (["detector.feature_layers=[4,4]"], "at most once"),  # would count layer 4 twice in the loss
    (["detector.prompt.n_ctx=0"], "n_ctx >= 1"),
    (["detector.prompt.n_ctx=20"], "context length 16"),  # RuntimeError (tensor sizes) in the prompt learner
    (["detector.prompt.deep_depth=9"], "deep_depth=9"),
    (["detector.prompt.normal='{} {}'"], "detector.prompt.normal"),  # IndexError in str.format
    (["detector.sigma=-1"], "detector.sigma"),  # silently no smoothing
    (["detector.temperature=0"], "detector.temperature"),  # NaN maps -> ValueError in the metrics
    (["detector.temperature=-0.07"], "detector.temperature"),  # silently inverted similarities
    (["detector.jas.pixel_weight=1.5"], "detector.jas.pixel_weight"),
    (["detector.loss.local_weight=-1"], "detector.loss.local_weight"),  # silently trains maps to be wrong
    (["detector.betas=[1.5,0.999]"], "detector.betas.0"),  # ValueError in torch.optim.Adam
    (["detector.clip.mean=[0.5,0.5]"], "detector.clip.mean"),  # RuntimeError (view) in HeadCLIP
    (["detector.clip.std=[0,1,1]"], "detector.clip.std"),  # NaN maps
    (["detector.clip.weights=/nonexistent/clip.pt", "detector.clip.random_init=false"], "are not at"),
    (["detector.clip.weights=/nonexistent/clip.pt"], "random_init=true asks for a random CLIP"),
    (["detector.clip.random_init=false"], "No CLIP weights file"),
    (["detector.clip.model=NoSuchCLIP", "detector.clip.model_config=null"], "no model config named"),
])
def test_bad_headclip_settings_stop_before_any_work(tmp_path, overrides, needle):
    from cai.pipeline import run_job

    cfg = _cfg(tmp_path, *overrides)
    with pytest.raises(CaiError) as err:
        run_job(cfg, tmp_path / "run")
    assert needle in err.value.message, err.value.message
    assert not (tmp_path / "cache").exists()  # no demo data written, nothing synthesized
    assert not (tmp_path / "run" / "resolved_config.yaml").exists()


def test_good_headclip_settings_pass_the_upfront_checks(tmp_path):
    from cai.validate import validate_job

    validate_job(_cfg(tmp_path), tmp_path / "run")  # TINY_HEADCLIP's random CLIP
    _tiny_clip_file(tmp_path)
    validate_job(_cfg(tmp_path, *REAL_WEIGHTS, "detector.dpam_layer=1", "detector.feature_layers=[1,4]",
                      "detector.sigma=0", "detector.prompt.deep_depth=1", "detector.jas.pixel_weight=1"),
                 tmp_path / "run")


def test_the_clip_shape_read_from_the_model_config_is_the_built_models():
    """The up-front checks read the CLIP's shape from its open_clip config (no weights, no model built); it
    must be what HeadCLIP sees in the built model."""
    from cai.detect.headclip import ClipShape, build_clip

    clip_cfg = compose_config("config", ["detector=headclip", *TINY_HEADCLIP], Path("/tmp")).detector.clip
    assert ClipShape.of_config(clip_cfg) == ClipShape.of_model(build_clip(clip_cfg)) == ClipShape(4, 4, 8, 2, 16)
    default = compose_config("config", ["detector=headclip"], Path("/tmp")).detector.clip
    assert ClipShape.of_config(default) == ClipShape(24, 16, 14, 12, 77)  # ViT-L/14@336: AnomalyCLIP's defaults fit


def test_a_weights_file_of_another_clip_stops_with_what_it_holds(tmp_path):
    """A state dict of another model config used to raise torch's RuntimeError (size mismatch) at build time."""
    from cai.detect.headclip import build_clip

    other = "detector.clip.model_config={embed_dim:32,vision_cfg:{image_size:32,layers:2,width:64,patch_size:8," \
            "head_width:16},text_cfg:{context_length:16,vocab_size:49408,width:32,heads:2,layers:2}}"
    path = tmp_path / "models" / "clip" / "ViT-L-14-336px.pt"
    path.parent.mkdir(parents=True)
    torch.save(build_clip(_cfg(tmp_path, other, "detector.dpam_layer=2", "detector.feature_layers=[2]")
                          .detector.clip).state_dict(), path)
    with pytest.raises(ConfigError, match="does not hold the weights of"):
        build_clip(_cfg(tmp_path, *REAL_WEIGHTS).detector.clip)
    path.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="does not hold the weights of"):
        build_clip(_cfg(tmp_path, *REAL_WEIGHTS).detector.clip)


# --- the auxiliary protocol ---------------------------------------------------------------------------------
def _aux(tmp_path: Path, category: str, *extra: str):
    from tests.test_e2e_headclip import _aux_cfg

    return _aux_cfg(tmp_path, category, *extra)


@pytest.mark.parametrize("copy", [False, True])
def test_a_target_whose_test_images_are_auxiliary_training_images_is_refused(tmp_path, copy):
    """dataset=folder pointed at the auxiliary dataset's own folder (or a copy of it) used to train on the
    target's test images and report its "zero-shot" numbers (check_train_on compares dataset names only)."""
    import shutil

    from cai.detect.auxiliary import AuxiliaryData
    from cai.pipeline import run_job

    AuxiliaryData(_aux(tmp_path, "coin"))  # writes the auxiliary demo data (demo/coin) into the cache
    root = tmp_path / "cache" / "demo_data"
    if copy:
        shutil.copytree(root / "coin", tmp_path / "copy" / "coin")
        root = tmp_path / "copy"
    cfg = _aux(tmp_path, "coin", f"dataset.reader.root={root}")
    with pytest.raises(ConfigError, match="also training images of the auxiliary dataset demo") as err:
        run_job(cfg, tmp_path / "runs" / "coin")
    assert "not zero-shot" in err.value.message
    assert not (tmp_path / "cache" / "headclip_auxiliary").exists()  # nothing trained


def test_the_shared_auxiliary_training_key_covers_amp_and_images_rewritten_in_place(tmp_path):
    """amp trains in bf16 on CUDA (other parameters), and an auxiliary image rewritten with the same size is
    other training data: neither may reuse a shared training made without it."""
    import os

    from cai.detect.auxiliary import AuxiliaryData
    from cai.detect.headclip_trainer import HeadCLIPTrainer
    from tests.test_e2e_headclip import _factory

    _factory(tmp_path / "factory", ("part",))

    def key(*extra: str) -> dict:
        cfg = _aux(tmp_path, "part", *extra)
        trainer = HeadCLIPTrainer(cfg.detector, tmp_path / "run", torch.device("cpu"), 0)
        return trainer.training_key(AuxiliaryData(cfg))

    base = key()
    assert key("detector.amp=false") != base
    assert key("detector.sigma=2", "detector.jas.pixel_weight=0") == base  # evaluation only: shared
    image = next((tmp_path / "cache" / "demo_data" / "coin" / "test").rglob("*.png"))
    data, stat = image.read_bytes(), image.stat()
    image.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, other bytes
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert key() != base


# --- the CLIP weights file replaced under a run -------------------------------------------------------------
def test_parameters_learned_on_one_clip_file_are_never_used_with_another_at_the_same_path(tmp_path):
    """The run's identity holds the weights *path*; a file replaced there used to be paired silently with
    the prompts and head weights learned on the old one: on resume, and in predict / heat maps afterwards."""
    from cai.detect import trainer as trainer_module
    from cai.pipeline import run_job
    from cai.predict import load_run

    path = _tiny_clip_file(tmp_path, seed=3)
    cfg = _cfg(tmp_path, *REAL_WEIGHTS, "detector.epochs=2")
    original = trainer_module.DetectorTrainer.train_epoch

    def interrupted(self, model, forward, opt, train, epoch):  # killed during the second epoch
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, model, forward, opt, train, epoch)

    trainer_module.DetectorTrainer.train_epoch = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            run_job(cfg, tmp_path / "run")
    finally:
        trainer_module.DetectorTrainer.train_epoch = original
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    kept = path.read_bytes()
    _tiny_clip_file(tmp_path, seed=4)  # another CLIP of the same architecture, same name and size
    assert path.stat().st_size == len(kept) and path.read_bytes() != kept
    with pytest.raises(ConfigError, match="the file was replaced"):
        run_job(_cfg(tmp_path, *REAL_WEIGHTS, "detector.epochs=2"), tmp_path / "run")

    path.write_bytes(kept)  # the original weights back: the run resumes and finishes
    metrics = run_job(_cfg(tmp_path, *REAL_WEIGHTS, "detector.epochs=2"), tmp_path / "run")
    assert metrics["selected_epoch"] == 2
    paths = {"cache_dir": str(tmp_path / "cache"), "model_dir": str(tmp_path / "models")}
    assert load_run(tmp_path / "run", device="cpu", paths=paths).model is not None
    _tiny_clip_file(tmp_path, seed=4)
    with pytest.raises(ConfigError, match="the file was replaced"):
        load_run(tmp_path / "run", device="cpu", paths=paths)
