"""Run identity through the real entry point: deterministic dirs, finished runs skipped only for the same
config, a finished dir never rewritten under another config, and concurrent identical runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.test_e2e import REPO, TINY, _run

TINY1 = [*(a for a in TINY if not a.startswith("detector.epochs=")), "detector.epochs=1"]


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    names = ("resolved_config.yaml", ".hydra/config.yaml", "metrics.json", "history.jsonl", "done")
    return {n: (run_dir / n).read_bytes() for n in names}


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "history.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_same_config_is_skipped_changed_config_gets_its_own_dir(tmp_path):
    logs = tmp_path / "logs"
    first = _run([*TINY1, f"paths.log_dir={logs}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = sorted((logs / "run/demo/coin/cutpaste").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("seed0-") and (runs[0] / "done").is_file()
    old = runs[0]
    before = _snapshot(old)
    assert "epochs: 1" in before["resolved_config.yaml"].decode()

    # The same config as a single run or as a plain -m sweep lands in the same dir and is skipped.
    for extra in ([], ["-m"]):
        again = _run([*extra, *TINY1, f"paths.log_dir={logs}", "device=cpu"], tmp_path)
        assert again.returncode == 0 and "Already finished" in again.stdout + again.stderr, again.stderr[-3000:]
    assert sorted((logs / "run/demo/coin/cutpaste").iterdir()) == runs

    # A changed value is another run in another dir; the finished one is untouched.
    changed = _run([*TINY1, f"paths.log_dir={logs}", "detector.epochs=2"], tmp_path)
    assert changed.returncode == 0, changed.stderr[-3000:]
    new = [d for d in (logs / "run/demo/coin/cutpaste").iterdir() if d != old]
    assert len(new) == 1 and _epochs(new[0]) == [1, 2] and "epochs: 2" in (new[0] / "resolved_config.yaml").read_text()
    assert _snapshot(old) == before

    # Forced into the finished dir with the changed value: a clear error saying what differs, nothing rewritten.
    forced = _run([*TINY1, f"hydra.run.dir={old}", "detector.epochs=2"], tmp_path)
    assert forced.returncode == 2 and "Traceback" not in forced.stderr
    assert "detector.epochs: 1 -> 2" in forced.stderr and str(old) in forced.stderr and "delete" in forced.stderr
    assert _snapshot(old) == before and json.loads(before["metrics.json"])["selected_epoch"] == 1


@pytest.mark.slow
def test_experiment_sweep_rerun_with_changed_value_does_not_reuse_old_metrics(tmp_path):
    results = tmp_path / "results"
    args = ["experiment=demo", *TINY1, f"paths.results_dir={results}"]
    first = _run(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run([*args, "detector.epochs=2"], tmp_path)
    assert second.returncode == 0 and "Already finished" not in second.stdout + second.stderr
    runs = sorted(p.parent for p in (results / "raw/demo").rglob("metrics.json"))
    assert len(runs) == 2 and all(r.parent == results / "raw/demo/demo/coin/cutpaste" for r in runs)
    assert sorted(OmegaConf.load(r / "resolved_config.yaml").detector.epochs for r in runs) == [1, 2]
    assert sorted(len(_epochs(r)) for r in runs) == [1, 2]


@pytest.mark.slow
def test_two_identical_runs_started_together_train_once(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled", "CAI_CACHE": str(tmp_path / "cache"),
           "HOME": str(tmp_path)}
    cmd = [sys.executable, str(REPO / "scripts" / "run.py"), *TINY, f"paths.log_dir={tmp_path / 'logs'}"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    (run,) = (tmp_path / "logs/run/demo/coin/cutpaste").iterdir()
    assert _epochs(run) == [1, 2]                                 # every epoch once, not twice
    assert sum("Already finished" in o for o in outs) == 1        # the other one found it finished
    # It normally arrived while the first was training: it waited, told which dir and which PID held it.
    waited = [o for o in outs if "in use by PID" in o]
    assert all(str(run) in o and f"PID {procs[1 - outs.index(o)].pid}" in o for o in waited)


@pytest.mark.slow
def test_finished_run_dir_is_not_reused_for_other_images(tmp_path):
    """Locations are not in the run dir's hash (``paths.data_dir=/a`` and ``/b`` share it), so a finished dir
    must check the images themselves before it says "Already finished"."""
    import numpy as np

    from cai.io import write_png

    logs = tmp_path / "logs"
    first = _run([*TINY1, f"paths.log_dir={logs}"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = (logs / "run/demo/coin/cutpaste").iterdir()
    before = _snapshot(run_dir)
    train_image = sorted((tmp_path / "cache" / "demo_data" / "coin" / "train" / "good").glob("*.png"))[0]
    write_png(train_image, np.full((64, 64, 3), 128, np.uint8))  # another image under the same name
    again = _run([*TINY1, f"paths.log_dir={logs}"], tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert "finished on other data: the train images differ" in again.stderr
    assert "Already finished" not in again.stdout + again.stderr
    assert _snapshot(run_dir) == before
