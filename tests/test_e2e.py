"""End to end through the real entry point: synthesize -> train -> evaluate -> table, and clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "logger=none", "synthesizer=cutpaste", "foreground=otsu", "dataset=demo", "dataset.category=coin",
    "dataset.image_size=64", "dataset.reader.n_train=6", "dataset.reader.n_test_good=3",
    "dataset.reader.n_test_anomalous=3", "synthesizer.n_per_image=2", "detector.model.base_width=4",
    "detector.epochs=2", "detector.samples_per_epoch=16", "detector.batch_size=4", "synthesis.workers=1",
]


def _run(args: list[str], tmp_path: Path, cache: str = "cache") -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled", "CAI_CACHE": str(tmp_path / cache),
           "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "run.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    proc = _run([*TINY, f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["display_name"] == "CutPaste" and metrics["n_pseudo"] == 12 and metrics["n_test"] == 6
    assert metrics["synthesis"] == {"n": 12, "redrawn": 0}  # CutPaste never leaves an output empty
    assert metrics["texture_source"] is None  # CutPaste reads no DTD textures
    assert metrics["budget"] == "paper"  # the budget group's choice (its sizes overridden on the command line)
    for key in ("pixel_auroc", "pixel_ap", "pro", "image_auroc", "pixel_f1_max", "image_ap", "image_f1_max"):
        assert 0.0 <= metrics["metrics"][key] <= 1.0
    assert metrics["skipped"] == {} and all(0.0 <= metrics["thresholds"][k] <= 1.0 for k in ("pixel", "image"))
    for name in ("done", "samples.png", "synthesis.png", "history.jsonl", "run_info.json", ".hydra/config.yaml",
                 "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run_dir / name).exists(), name
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["packages"]["torch"] and len(info["data"]["train"]) == 64
    # A second call on the finished run dir is skipped, not redone.
    again = _run([*TINY, f"hydra.run.dir={run_dir}"], tmp_path)
    assert again.returncode == 0 and "Already finished" in again.stdout + again.stderr

    # Same seed and config from scratch (fresh cache, fresh run dir): byte-identical pseudo anomalies and
    # identical CPU metrics.
    twin_dir = tmp_path / "twin"
    twin = _run([*TINY, f"hydra.run.dir={twin_dir}"], tmp_path, cache="cache2")
    assert twin.returncode == 0, twin.stderr[-3000:]
    assert json.loads((twin_dir / "metrics.json").read_text())["metrics"] == metrics["metrics"]
    caches = [json.loads((d / "run_info.json").read_text())["data"]["pseudo_cache"] for d in (run_dir, twin_dir)]
    files = [sorted(p.relative_to(c) for p in Path(c).rglob("*.png")) for c in caches]
    assert files[0] == files[1] and len(files[0]) == 24
    assert all((Path(caches[0]) / f).read_bytes() == (Path(caches[1]) / f).read_bytes() for f in files[0])


def test_missing_dataset_gives_one_clear_error(tmp_path):
    proc = _run(["logger=none", "dataset=mvtec", f"paths.data_dir={tmp_path / 'nowhere'}",
                 f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "nowhere" in proc.stderr and "mvtec.com" in proc.stderr
    assert "nowhere" in (tmp_path / "run" / "failed.txt").read_text()
    # Once the data is there, the same run dir succeeds and no stale failure is left behind.
    fixed = _run([*TINY, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert (tmp_path / "run" / "done").is_file() and not (tmp_path / "run" / "failed.txt").exists()


def test_cfg_job_prints_composed_config(tmp_path):
    proc = _run(["--cfg", "job", "synthesizer=cai_m"], tmp_path)
    assert proc.returncode == 0
    assert "display_name: CAI-M" in proc.stdout and "samples_per_epoch: 1000" in proc.stdout
