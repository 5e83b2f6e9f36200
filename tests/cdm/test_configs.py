"""conf/cdm, conf/train_cdm.yaml and conf/synthesizer/cdm_{5,8}.yaml compose, resolve and instantiate;
scripts/train_cdm.py's task runs end to end on the tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

import cai.config  # noqa: F401 - resolvers
from cai.cdm.model import CDMEmbeddings
from cai.cdm.placement import CAIMaskPlacement
from cai.cdm.synth import CDMSynthesizer
from cai.cdm.train import train_task

from .conftest import CLASSES
from .tiny import SPATIAL, TEST_PROMPTS

CONF = Path(__file__).resolve().parents[2] / "conf"


def _conf_with_stubs(tmp_path: Path) -> Path:
    """A copy of conf/ where primary-config defaults that other branches provide (foreground, daad, ...)
    exist as empty stubs when absent, so the synthesizer configs compose on any branch."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    for entry in OmegaConf.load(CONF / "config.yaml").defaults:
        if isinstance(entry, str) or len(entry) != 1:
            continue
        (group, option), = entry.items_ex(resolve=False)
        if option and "${" not in str(option) and not (conf / group / f"{option}.yaml").is_file():
            (conf / group).mkdir(exist_ok=True)
            (conf / group / f"{option}.yaml").write_text("{}\n")
    return conf


def _compose(name: str, overrides: list[str], conf: Path = CONF):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(name, overrides=overrides)


def test_cdm_defaults_are_the_papers(tmp_path: Path) -> None:
    cfg = _compose("train_cdm", [f"paths.root_dir={tmp_path}"])
    c = OmegaConf.to_container(cfg.cdm, resolve=True)
    assert c["k"] == 4 and c["placeholder"] == "*" and c["init_word"] == "anomaly"
    assert c["train"]["batch_size"] * c["train"]["base_lr"] == pytest.approx(2e-2) and c["train"]["scale_lr"]
    assert c["train"]["mask_threshold"] == 0.5 and c["train"]["steps"] == 300000 and c["train"]["save_every"] > 0
    assert c["generate"]["steps"] == 200 and c["generate"]["eta"] == 1.0
    assert c["model"]["repo"] == "CompVis/ldm-text2im-large-256"
    assert len(c["classes_8"]) == 8 and c["train"]["classes"] == c["classes_8"]
    for dataset in ("mvtec", "visa", "ksdd2", "bsdata", "demo"):
        assert len(c["classes_5"][dataset]) == 5 and set(c["classes_5"][dataset]) <= set(c["classes_8"])
    assert all(p.count("{}") == 1 for p in c["prompts"]) and len(set(c["prompts"])) == len(c["prompts"])
    assert cfg.out_dir == f"{tmp_path}/.cache/models/cdm/demo/brick"


@pytest.mark.parametrize(("option", "n"), [("cdm_5", 5), ("cdm_8", 8)])
def test_synthesizer_configs_instantiate(option: str, n: int, tmp_path: Path) -> None:
    cfg = _compose("config", [f"synthesizer={option}", "dataset=mvtec", f"paths.root_dir={tmp_path}"],
                   _conf_with_stubs(tmp_path))
    OmegaConf.to_container(cfg.synthesizer, resolve=True)  # the cache key resolves exactly this
    s = cfg.synthesizer
    assert s.name == option and s.display_name == f"CDM-{n}" and s.n_per_image == 10
    synth = instantiate(s.params)
    assert isinstance(synth, CDMSynthesizer) and isinstance(synth.placement, CAIMaskPlacement)
    assert len(synth.resolve_classes("mvtec", "bottle")) == n
    assert synth.gen_cfg["steps"] == 200 and synth.max_workers == 1
    assert synth.embeddings_template.endswith("/cdm/{dataset}/{category}/embeddings.safetensors")


def test_train_task_end_to_end(ldm_dir: Path, cai_cache: Path, tmp_path: Path) -> None:
    overrides = [
        f"paths.root_dir={tmp_path}", "dataset=demo", "dataset.category=brick", "device=cpu",
        f"cdm.model.path={ldm_dir}", f"cdm.cache_root={tmp_path / 'pseudo'}", "cdm.k=2",
        f"cdm.spatial_encoder={json.dumps(SPATIAL)}".replace('"', ""), f"cdm.prompts={json.dumps(TEST_PROMPTS)}",
        "cdm.train.steps=2", "cdm.train.batch_size=2", "cdm.train.resolution=32", "cdm.train.save_every=1",
    ]
    cfg = _compose("train_cdm", overrides)
    run_dir = tmp_path / "run"
    result = train_task(cfg, run_dir)
    out = Path(cfg.out_dir)
    assert result["step"] == 2 and result["per_class"] == {c: 3 for c in CLASSES}
    assert (out / "embeddings.safetensors").is_file() and (out / "checkpoints" / "last.pt").is_file()
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 2
    assert CDMEmbeddings.load(out / "embeddings.safetensors").classes == CLASSES
    again = train_task(_compose("train_cdm", [*overrides, "cdm.train.steps=3"]), run_dir)  # resume: one more step
    assert again["step"] == 3 and [h[0] for h in again["history"]] == [2, 3]  # log_every 100: logged at the ends
