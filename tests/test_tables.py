"""A tiny `make table1` on the demo dataset: every synthesizer through the real sweep, then the table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_e2e import REPO

SYNTHESIZERS = ["cutpaste", "nsa_n", "nsa_m", "draem", "glass", "cai_n", "cai_m"]
DISPLAY = ["CutPaste", "NSA-N", "NSA-M", "DRAEM", "GLASS", "CAI-N", "CAI-M"]


@pytest.mark.slow
def test_tiny_table1_on_demo(tmp_path, shared_data):
    env = {"PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled", "CAI_CACHE": str(tmp_path / "cache"),
           "CAI_SHARED_DATA": str(shared_data), "HOME": str(tmp_path)}
    sweep = tmp_path / "raw"
    args = [
        "experiment=table1", "dataset=demo", "logger=none", "foreground=otsu",
        f"synthesizer={','.join(SYNTHESIZERS)}", "dataset.category=coin",  # command line wins over the sweep
        f"hydra.sweep.dir={sweep}", "dataset.image_size=64", "dataset.reader.n_train=3",  # x 10 per image:
        "dataset.reader.n_test_good=3", "dataset.reader.n_test_anomalous=3",  # CAI's 4:3:3 quotas must add up
        "detector.model.base_width=4", "detector.epochs=1", "detector.samples_per_epoch=8",
        "detector.batch_size=4", "synthesis.workers=1",
        "textures=dtd_mini",  # table1 reads the full DTD (conf/textures/dtd.yaml), absent here
    ]
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "run.py"), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    failed = sorted(p.parent.parent.name for p in sweep.rglob("failed.txt"))  # <synthesizer>/seed0-<hash>/
    assert not failed, failed
    assert sorted(p.parent.parent.name for p in sweep.rglob("done")) == sorted(SYNTHESIZERS)

    out = tmp_path / "table1.md"
    table = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_table.py"), "table=table1", f"table.runs_dir={sweep}",
         "table.datasets=[demo]", "table.expected={demo:[coin]}", f"table.output={out}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr[-2000:]
    text = out.read_text()
    for name in DISPLAY:
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        assert "X /" not in row and "*" not in row, row  # every synthesizer has a complete number
    assert "| RealNet | X / X | X / X | X / X |" in text  # not in this sweep
    assert not Path(tmp_path, "make_table.log").exists()


@pytest.mark.slow
def test_multirun_with_a_failed_job_exits_nonzero_after_the_others(tmp_path):
    """One job of the sweep fails (unknown category): the other still finishes, the process exits 1 and
    names the failed run dir."""
    from tests.test_e2e import TINY, _run

    sweep = tmp_path / "sweep"
    args = [a for a in TINY if not a.startswith("dataset.category=")]
    proc = _run(["-m", *args, "dataset.category=coin,no_such_category", f"hydra.sweep.dir={sweep}",
                 "hydra.sweep.subdir=${dataset.category}"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert (sweep / "coin" / "done").is_file()
    assert (sweep / "no_such_category" / "failed.txt").is_file()
    assert "1 job(s) of this multirun failed" in proc.stderr
    assert str(sweep / "no_such_category") in proc.stderr
    assert str(sweep / "coin") + "\n" not in proc.stderr and f"{sweep / 'coin'}:" not in proc.stderr


def test_a_mistyped_runs_dir_stops_instead_of_rendering_an_empty_table(tmp_path):
    out = tmp_path / "t.md"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_table.py"), "table=bsdata",
         f"table.runs_dir={tmp_path / 'no_such_sweep'}", f"table.output={out}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "table.runs_dir" in proc.stderr + proc.stdout and "no_such_sweep" in proc.stderr + proc.stdout
    assert not out.exists()
