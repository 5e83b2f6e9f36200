"""Every config composes and resolves; every synthesizer/dataset/foreground target can be imported."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

import cai.config  # noqa: F401 - resolvers
from tests.conftest import compose_config

CONF = Path(__file__).resolve().parents[1] / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides: list[str], tmp_path: Path, config_name: str = "config"):
    return compose_config(config_name, overrides, tmp_path)


@pytest.mark.parametrize("group", ["dataset", "synthesizer", "foreground", "logger", "detector", "daad",
                                   "ablation", "scale", "experiment", "debug", "budget", "textures",
                                   "synthesis_settings"])
def test_every_option_composes_and_resolves(group, tmp_path):
    options = _options(group)
    if not options:
        pytest.skip(f"no options in conf/{group} yet")
    for option in options:
        key = f"{group}={option}"
        cfg = _compose([key], tmp_path)
        body = {k: v for k, v in cfg.items() if k != "hydra"}
        OmegaConf.to_container(OmegaConf.create(body), resolve=True)  # raises on a broken interpolation
        if group == "synthesizer":
            assert cfg.synthesizer.name == option
            get_class(cfg.synthesizer.params._target_)
        if group == "dataset":
            if cfg.dataset.categories:  # an empty list (dataset=folder) means: found on disk
                assert cfg.dataset.category in cfg.dataset.categories
            get_class(cfg.dataset.reader._target_)


def test_defaults_are_the_demo(tmp_path):
    cfg = _compose([], tmp_path)
    assert cfg.dataset.name == "demo" and cfg.logger.backend == "wandb" and cfg.logger.mode in ("offline", "disabled")
    assert cfg.detector.epochs == 200 and cfg.detector.samples_per_epoch == 1000  # the paper's protocol


def test_budgets(tmp_path):
    for cfg in (_compose([], tmp_path), _compose(["budget=paper"], tmp_path)):  # paper is the default
        assert (cfg.dataset.image_size, cfg.detector.model.base_width) == (256, 64)
        assert (cfg.detector.epochs, cfg.detector.samples_per_epoch, cfg.detector.eval_every) == (200, 1000, 1)
    cpu = _compose(["budget=cpu", "dataset=bsdata"], tmp_path)
    assert (cpu.dataset.image_size, cpu.detector.model.base_width) == (128, 16)
    assert (cpu.detector.epochs, cpu.detector.samples_per_epoch, cpu.detector.eval_every) == (12, 200, 4)
    long = _compose(["budget=cpu_long", "dataset=bsdata"], tmp_path)
    assert (long.dataset.image_size, long.detector.model.base_width) == (128, 16)
    assert (long.detector.epochs, long.detector.samples_per_epoch, long.detector.eval_every) == (30, 240, 5)
    bs = _compose(["experiment=bsdata"], tmp_path)
    assert bs.dataset.name == "bsdata" and bs.detector.epochs == 12 and bs.dataset.image_size == 128
    assert bs.hydra.sweeper.params.seed == "0,1,2"
    assert bs.hydra.sweep.subdir.startswith("bsdata/ball_screw/cutpaste/seed0-")
    swept = bs.hydra.sweeper.params.synthesizer.split(",")
    assert set(swept) == {"cutpaste", "nsa_n", "nsa_m", "draem", "glass", "cai_n", "cai_m", "realnet"}
    demo = _compose(["experiment=demo"], tmp_path)
    assert demo.daad.manifest.endswith("cai/data/demo_bank/manifest.csv")
    assert demo.hydra.sweeper.params.synthesizer == "cutpaste,cai_n"
    # the demo's sizes come from budget=demo, so its table heading names that budget, not "paper"
    assert (demo.dataset.image_size, demo.detector.model.base_width, demo.detector.epochs,
            demo.detector.samples_per_epoch) == (128, 16, 6, 160)
    assert demo.hydra.runtime.choices.budget == "demo"


def test_budgets_leave_headclips_training_alone(tmp_path):
    """A budget's detector part is per detector (conf/budget_detector/<budget>_<detector>.yaml): HeadCLIP keeps
    its published training at every budget, which still sets the image size; the UNet's are as before."""
    for budget, size in (("paper", 256), ("cpu", 128), ("cpu_long", 128)):
        cfg = _compose([f"budget={budget}", "detector=headclip"], tmp_path)
        assert cfg.dataset.image_size == size and "model" not in cfg.detector
        assert (cfg.detector.epochs, cfg.detector.samples_per_epoch, cfg.detector.batch_size) == (15, None, 8)
        assert (cfg.detector.lr, cfg.detector.clip.image_size, cfg.detector.selection) == (1e-3, 518, "last")
        assert cfg.hydra.runtime.choices.budget_detector == f"{budget}_headclip"
    table1 = _compose(["experiment=table1", "dataset=mvtec", "detector=headclip"], tmp_path)
    assert table1.detector.epochs == 15 and table1.detector.trainer.endswith("HeadCLIPTrainer")
    assert _compose(["experiment=table1", "dataset=mvtec"], tmp_path).detector.epochs == 200


@pytest.mark.parametrize("table", _options("table"))
def test_table_configs(table, tmp_path):
    cfg = _compose([f"table={table}"], tmp_path, config_name="make_table")
    t = OmegaConf.to_container(cfg.table, resolve=True)
    assert t["metrics"] and t["datasets"] and t["output"].endswith(".md")
