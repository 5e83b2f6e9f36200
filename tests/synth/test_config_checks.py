"""Config choices that cannot take effect are refused before any work: CAI scale quotas that are not whole
or do not add up to n_per_image, and daad/ablation/scale choices with a synthesizer that does not read them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cai.errors import ConfigError
from cai.pipeline import hydra_choices
from cai.synth.base import SynthesisContext
from cai.synth.groups import SYNTHESIZER_GROUPS, check_synthesizer_groups, primary_defaults
from tests.conftest import REPO_ROOT, compose_config
from tests.synth.conftest import TARGET, compose_cai

CONF = REPO_ROOT / "conf"
SYNTHESIZERS = sorted(p.stem for p in (CONF / "synthesizer").glob("*.yaml"))


def _cai_cfg(manifest: Path, overrides: list[str]):
    groups = {"dagm": "existing_datasets", "btad": "online_search", "mvtec": "existing_datasets"}
    return compose_cai([f"daad.manifest={manifest}", *[f"++daad.source_group_of.{k}={v}" for k, v in groups.items()],
                        *overrides])


def _context(n_per_image: int | None) -> SynthesisContext:
    return SynthesisContext("test", "cat", False, TARGET, n_per_image=n_per_image)


# ----------------------------------------------------------------------------- quotas (issue 12.4)
def test_quotas_that_do_not_add_up_to_n_per_image_are_refused(bank_manifest: Path) -> None:
    """5:3:3 with ten per image used to become 4:3:3 silently."""
    cfg = _cai_cfg(bank_manifest, ["scale.large=5"])
    syn = instantiate(cfg.synthesizer.params)
    with pytest.raises(ConfigError) as info:
        syn.prepare(_context(int(cfg.synthesizer.n_per_image)))
    assert "add up to 11" in info.value.message and "n_per_image=10" in info.value.message
    assert "scale.large" in info.value.message


@pytest.mark.parametrize("value", ["0.5", "-1", "abc"])
def test_quotas_must_be_whole_non_negative_counts(bank_manifest: Path, value: str) -> None:
    """scale.large=0.5 used to become 0 silently."""
    cfg = _cai_cfg(bank_manifest, [f"scale.large={value}"])
    with pytest.raises(Exception) as info:  # noqa: PT011 - Hydra wraps the ConfigError
        instantiate(cfg.synthesizer.params)
    err = info.value.__cause__
    assert isinstance(err, ConfigError) and "not a non-negative integer" in err.message


@pytest.mark.parametrize("synth", ["cai_n", "cai_m"])
@pytest.mark.parametrize("scale", sorted(p.stem for p in (CONF / "scale").glob("*.yaml")))
def test_shipped_scale_configs_add_up(bank_manifest: Path, synth: str, scale: str) -> None:
    cfg = _cai_cfg(bank_manifest, [f"synthesizer={synth}", f"scale={scale}"])
    syn = instantiate(cfg.synthesizer.params)
    syn.prepare(_context(int(cfg.synthesizer.n_per_image)))
    assert sum(syn.quotas.values()) == cfg.synthesizer.n_per_image == 10


# ----------------------------------------------------------------------------- groups (issue 12.4)
def _check(overrides: list[str], tmp_path: Path) -> None:
    cfg = compose_config("config", ["logger=none", *overrides], tmp_path)
    check_synthesizer_groups(cfg, hydra_choices(), CONF)


def test_primary_defaults_are_read_from_the_defaults_list() -> None:
    assert primary_defaults(CONF / "config.yaml") == {"daad": "daad_mini", "ablation": "full", "scale": "balanced"}


@pytest.mark.parametrize(("overrides", "shown"), [
    (["synthesizer=cutpaste", "ablation=no_pe"], "ablation=no_pe has no effect with synthesizer=cutpaste"),
    (["synthesizer=draem", "scale=large"], "scale=large has no effect with synthesizer=draem"),
    (["synthesizer=glass", "daad=built"], "daad=built has no effect with synthesizer=glass"),
    (["synthesizer=nsa_n", "scale.large=5"], "scale.large=5 has no effect with synthesizer=nsa_n"),
    (["synthesizer=cutpaste", "daad.source_groups=[existing_datasets]"], "daad.source_groups=['existing_datasets']"),
])
def test_groups_the_synthesizer_does_not_read_are_refused(tmp_path: Path, overrides: list[str], shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        _check(overrides, tmp_path)
    assert shown in info.value.message
    assert "(cai_m, cai_m_context, cai_m_tight, cai_n, cai_n_context, cai_n_tight)" in info.value.message  # readers


@pytest.mark.parametrize("overrides", [
    ["synthesizer=cutpaste"], ["synthesizer=cai_n", "ablation=no_pe"], ["synthesizer=cai_m", "scale=large"],
    ["synthesizer=cai_n", "daad.source_groups=[existing_datasets]", "scale=small", "ablation=no_stm"],
    *[[f"synthesizer={name}"] for name in SYNTHESIZERS],
])
def test_defaults_and_groups_the_synthesizer_reads_pass(tmp_path: Path, overrides: list[str]) -> None:
    _check(overrides, tmp_path)


@pytest.mark.parametrize("name", SYNTHESIZERS)
def test_reads_groups_matches_what_the_config_interpolates(tmp_path: Path, name: str) -> None:
    """A synthesizer declares exactly the groups its params take values from (``${scale}`` ...)."""
    cfg = compose_config("config", ["logger=none", f"synthesizer={name}"], tmp_path)
    text = OmegaConf.to_yaml(cfg.synthesizer.params)  # unresolved: interpolations stay as ${...}
    used = {g for g in SYNTHESIZER_GROUPS if "${" + g + "}" in text or "${" + g + "." in text}
    assert set(cfg.synthesizer.get("reads_groups") or []) == used


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled", "CAI_CACHE": str(tmp_path / "cache"),
           "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "run.py"), "logger=none", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_entry_point_refuses_an_ablation_with_cutpaste(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _run(["synthesizer=cutpaste", "ablation=no_pe", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "ablation=no_pe has no effect with synthesizer=cutpaste" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "metrics.json").exists() and not (tmp_path / "cache").exists()


def test_entry_point_refuses_quotas_that_do_not_add_up(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _run(["synthesizer=cai_n", "scale.large=5", "dataset=demo", "dataset.category=coin", "foreground=otsu",
                 "dataset.image_size=32", "dataset.reader.n_train=2", "dataset.reader.n_test_good=1",
                 "dataset.reader.n_test_anomalous=1", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "add up to 11" in proc.stderr and "Traceback" not in proc.stderr
    assert not list((tmp_path / "cache").rglob("manifest.jsonl"))


def test_an_experiment_may_set_a_group_for_the_synthesizers_that_read_it(tmp_path: Path) -> None:
    """experiment=demo sets daad=demo_bank for CAI-N and sweeps CutPaste beside it: only a group the user
    names on the command line is refused, and CutPaste's metrics.json does not record the bank."""
    from cai.synth.groups import recorded_choices

    cfg = compose_config("config", ["logger=none", "synthesizer=cutpaste", "daad=demo_bank"], tmp_path)
    choices = {"daad": "demo_bank", "synthesizer": "cutpaste", "dataset": "demo"}
    check_synthesizer_groups(cfg, choices, CONF, overrides=["experiment=demo", "synthesizer=cutpaste"])
    with pytest.raises(ConfigError, match="daad=demo_bank has no effect with synthesizer=cutpaste"):
        check_synthesizer_groups(cfg, choices, CONF, overrides=["synthesizer=cutpaste", "daad=demo_bank"])
    assert recorded_choices(cfg, choices) == {"synthesizer": "cutpaste", "dataset": "demo"}
    cai = compose_config("config", ["logger=none", "synthesizer=cai_n", "daad=demo_bank"], tmp_path / "c")
    assert recorded_choices(cai, choices) == choices
