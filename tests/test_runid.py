"""Run identity: run dirs named by the resolved config, the stored config checked on re-run, run-dir locks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cai.errors import ConfigError
from cai.runid import (
    RESOLVED_CONFIG,
    RunDirLock,
    check_run_config,
    config_diff,
    identity_config,
    record_run_config,
)
from tests.conftest import REPO_ROOT, compose_config


def _dirs(tmp_path: Path, overrides: list[str]) -> tuple[str, str]:
    cfg = compose_config("config", overrides, tmp_path / "job")
    return OmegaConf.select(cfg, "hydra.run.dir"), OmegaConf.select(cfg, "hydra.sweep.subdir")


def test_run_dir_is_deterministic_and_follows_the_resolved_config(tmp_path, monkeypatch):
    base = ["logger=none", f"paths.log_dir={tmp_path}/logs"]
    run, sub = _dirs(tmp_path, base)
    assert run == f"{tmp_path}/logs/run/demo/brick/cutpaste/{sub.split('/')[-1]}"
    assert sub.startswith("demo/brick/cutpaste/seed0-")
    assert _dirs(tmp_path, base) == (run, sub)                                          # no timestamp
    # Locations, logging, device, resume and worker counts do not make another run ...
    same = ["paths.cache_dir=/elsewhere", "device=cpu", "resume=false", "synthesis.workers=3", "logger=wandb",
            "dataset.categories=[brick,coin]"]  # a sweep over fewer categories shares the full sweep's runs
    assert _dirs(tmp_path, [*base, *same])[0] == run
    assert _dirs(tmp_path, [*base[1:], f"paths.root_dir={tmp_path}/x", f"paths.log_dir={tmp_path}/logs"])[0] == run
    monkeypatch.setenv("HOME", str(tmp_path / "another_home"))   # the default rembg's model_dir follows $HOME
    assert _dirs(tmp_path, [*base, "foreground=rembg"])[0] == run
    # ... every value that changes results does, nested or interpolated.
    for change in ("foreground=otsu", "detector.epochs=2", "detector.selection=val", "dataset.image_size=64", "seed=1",
                   "synthesizer.params.area_ratio=[0.1,0.2]", "synthesizer=draem", "dataset.category=coin"):
        assert _dirs(tmp_path, [*base, change])[0] != run, change
    assert "/seed1-" in _dirs(tmp_path, [*base, "seed=1"])[0]


def test_experiment_sweeps_get_one_dir_per_config_under_results_raw(tmp_path):
    base = ["logger=none", f"paths.results_dir={tmp_path}/results"]
    for exp in ("table1", "table3", "table4", "fig7a", "fig7c", "fig7d", "demo"):
        cfg = compose_config("config", [*base, f"experiment={exp}"], tmp_path / "job")
        assert OmegaConf.select(cfg, "hydra.sweep.dir") == f"{tmp_path}/results/raw/{exp}"
        sub = OmegaConf.select(cfg, "hydra.sweep.subdir")
        changed = compose_config("config", [*base, f"experiment={exp}", "detector.epochs=3"], tmp_path / "job")
        assert OmegaConf.select(changed, "hydra.sweep.subdir") != sub, exp
        other_seed = compose_config("config", [*base, f"experiment={exp}", "seed=7"], tmp_path / "job")
        assert OmegaConf.select(other_seed, "hydra.sweep.subdir") != sub, exp


def test_identity_config_leaves_out_locations_and_logging(tmp_path):
    cfg = compose_config("config", ["logger=none", "paths.cache_dir=/somewhere"], tmp_path)
    ident = identity_config(cfg)
    for key in ("hydra", "paths", "logger", "device", "resume", "n_panels"):
        assert key not in ident
    assert "workers" not in ident["synthesis"]
    assert ident["detector"]["epochs"] == 200 and ident["seed"] == 0
    assert "/somewhere" not in str(ident) and ident["dataset"]["reader"]["root"] == "<paths.cache_dir>/demo_data"


def test_changed_config_in_a_used_dir_is_an_error_naming_the_difference(tmp_path):
    run = tmp_path / "run"
    # Nothing recorded yet (e.g. the first attempt failed before training): any config may use the dir.
    check_run_config(run, compose_config("config", ["logger=none", "dataset=mvtec"], run))
    first = compose_config("config", ["logger=none", "detector.epochs=1"], run)
    record_run_config(run, check_run_config(run, first))
    stored = (run / RESOLVED_CONFIG).read_text()
    assert "epochs: 1" in stored
    check_run_config(run, compose_config("config", ["logger=none", "detector.epochs=1", "device=cpu"], run))
    (run / "done").write_text("ok\n")
    with pytest.raises(ConfigError) as err:
        check_run_config(run, compose_config("config", ["logger=none", "detector.epochs=2"], run))
    assert "detector.epochs: 1 -> 2" in err.value.message and "finished" in err.value.message
    assert str(run) in err.value.message and "delete" in err.value.message
    assert (run / RESOLVED_CONFIG).read_text() == stored


def test_config_diff_lists_changed_added_and_removed_keys():
    old = {"a": {"b": 1, "c": [1, 2]}, "gone": 1}
    new = {"a": {"b": 2, "c": [1, 2]}, "new": "x"}
    assert config_diff(old, new) == ["a.b: 1 -> 2", "gone: 1 -> <absent>", "new: <absent> -> x"]


def test_second_owner_waits_for_the_first_and_is_told_its_pid(tmp_path, caplog):
    marker = tmp_path / "first-finished"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, sys, time
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from cai.runid import RunDirLock
        with RunDirLock({str(tmp_path)!r}):
            print("locked", flush=True)
            time.sleep(2.0)
            pathlib.Path({str(marker)!r}).write_text("done")
        """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    lock = RunDirLock(tmp_path, poll_s=0.05)
    assert lock.holder() == str(holder.pid)
    start = time.monotonic()
    with lock:
        waited = time.monotonic() - start
        assert marker.is_file()                            # only after the first released it
        assert lock.holder() == str(os.getpid())
    assert waited > 0.5
    assert f"in use by PID {holder.pid}" in caplog.text and str(tmp_path) in caplog.text
    holder.wait()


def test_lock_is_released_when_the_holder_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from cai.runid import RunDirLock
        RunDirLock({str(tmp_path)!r}).acquire()
        print("locked", flush=True)
        os._exit(1)                                    # a crash: no release, no cleanup
        """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.wait()
    with RunDirLock(tmp_path, poll_s=0.05):
        pass
