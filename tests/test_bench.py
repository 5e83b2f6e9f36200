"""`make bench`: the report's measurements and decisions on tiny CPU sizes (no timing asserts).

The GPU side (bench_gpu.json) is exercised here through the same code on the CPU: the batch search, the
torch.compile stage, failure recording, the time budget and the Table 1 estimate from a measured rate.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import cai.benchmark as bench
import cai.config  # noqa: F401
from tests.conftest import REPO_ROOT

TINY_CPU = ("training.cpu={image_size: 32, base_width: 4, batches: [], precisions: [fp32], steps: 1, "
            "round_s: null, max_steps: 4, rounds: 1, compile: [], compile_precision: fp32, "
            "compile_backend: inductor, compile_timeout_s: null, min_compile_s: 0, time_budget_s: null}")


def _cfg(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("bench", overrides=["device=cpu", "detector.batch_size=2", "detector.eval_batch_size=4",
                                           TINY_CPU, *overrides])


def _entry(precision: str, batch: int, rate: float | None, compile: bool = False, **extra) -> dict:
    e = {"precision": precision, "batch_size": batch, "compile": compile, "image_size": 256, "base_width": 64,
         "device": "cuda:0", **extra}
    if rate is not None:
        e.update(loop_img_s=rate, ceiling_img_s=rate * 1.1, ratio=1 / 1.1, peak_mem_mib=100.0)
    return e


def test_best_batch_picks_the_fastest_measured_entry():
    entries = [_entry("bf16", 8, 500.0), _entry("bf16", 32, 900.0), _entry("bf16", 64, 850.0),
               _entry("bf16", 128, None, error="OutOfMemoryError: CUDA out of memory"),
               _entry("fp32", 16, 5000.0),              # another precision
               _entry("bf16", 16, 9000.0, compile=True)]  # compiled: not an eager batch
    assert bench.best_batch(entries, "bf16") == 32
    assert bench.best_batch(entries, "fp32") == 16
    assert bench.best_batch(entries, "bf16", compile=True) == 16
    assert bench.best_batch([_entry("bf16", 8, None, error="x")], "bf16") is None


def test_training_grid_searches_batches_then_compiles_paper_and_best(monkeypatch):
    rates = {2: 10.0, 4: 30.0, 8: 20.0}  # batch 4 is the fastest
    calls = []

    def fake_training(detector_cfg, device, image_size, batch_size, compile=False, precision="bf16", **kw):
        calls.append((batch_size, compile))
        return {"loop_img_s": rates[batch_size] * (2 if compile else 1), "ceiling_img_s": 40.0, "ratio": 0.5,
                "precision": precision, "compile": compile, "batch_size": batch_size, "peak_mem_mib": None}

    monkeypatch.setattr(bench, "bench_training", fake_training)
    cfg = _cfg("training.cpu.batches=[2,4,8]", "training.cpu.compile=[paper,best]")
    grid = bench.TrainingGrid(cfg, torch.device("cpu"), bench._Budget(None))
    grid.paper()
    grid.sweep()
    assert grid.best() == {"fp32": 4}
    grid.compiled()
    assert calls == [(2, False), (4, False), (8, False), (2, True), (4, True)]  # paper batch first, no repeat
    assert [e["compile"] for e in grid.entries] == [False, False, False, True, True]


def test_compile_failure_is_recorded_not_raised(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("inductor: no working C++ compiler")

    monkeypatch.setattr(torch, "compile", broken_compile)
    cfg = _cfg("training.cpu.compile=[paper]")
    saved = []
    grid = bench.TrainingGrid(cfg, torch.device("cpu"), bench._Budget(None), on_change=lambda e: saved.append(len(e)))
    grid.compiled()  # "paper": the detector's batch, whether or not its eager entry exists
    (compiled,) = grid.entries
    assert compiled["compile"] is True and compiled["batch_size"] == 2 and "loop_img_s" not in compiled
    assert compiled["error"].startswith("RuntimeError: inductor: no working C++ compiler")
    assert saved == [1]  # the report is saved after every entry


def test_spent_budget_lists_configurations_as_skipped(monkeypatch):
    monkeypatch.setattr(bench, "bench_training", lambda *a, **k: pytest.fail("must not measure"))
    grid = bench.TrainingGrid(_cfg("training.cpu.batches=[4]"), torch.device("cpu"), bench._Budget(-1.0))
    grid.paper()
    grid.sweep()
    assert [(e["batch_size"], "skipped" in e) for e in grid.entries] == [(2, True), (4, True)]


def test_run_guarded_kills_a_hanging_child_and_reports_a_failing_one():
    start = time.monotonic()
    hung = bench.run_guarded(time.sleep, 120, timeout_s=2)
    assert "timed out after 2 s" in hung["error"] and time.monotonic() - start < 60
    failed = bench.run_guarded(bench.effective_precision, "fp64", torch.device("cpu"), timeout_s=60)
    assert failed["error"].startswith("ConfigError: Unknown training precision 'fp64'")


def test_bench_training_calibrates_steps_and_reports_memory_field():
    cfg = _cfg()
    r = bench.bench_training(cfg.detector, torch.device("cpu"), 32, 2, steps=None, round_s=1e-9, base_width=4,
                             rounds=1, precision="bf16", max_steps=3)
    assert r["steps"] == 2  # at least 2 steps per round, however short round_s is
    assert r["precision"] == "fp32"  # the trainer autocasts on CUDA only: the CPU ran fp32
    assert r["peak_mem_mib"] is None and r["loop_img_s"] > 0 and r["ceiling_img_s"] > 0


def _gpu_report(rate_bf16_8: float, eval_s: float = 1.5) -> dict:
    return {"device": "cuda:0", "gpu": "NVIDIA H200",
            "training": [_entry("fp32", 8, 300.0), _entry("bf16", 8, rate_bf16_8), _entry("bf16", 64, 2000.0),
                         _entry("bf16", 8, None, compile=True, error="timed out")],
            "evaluation": {"epoch_s": eval_s, "n_images": 150, "image_size": 256}}


def test_table1_estimate_uses_the_measured_rate_and_counts_gpus():
    cfg = _cfg("detector.batch_size=8")  # the paper's (conf/detector/unet.yaml)
    e = bench.table1_estimate(cfg, _gpu_report(1000.0), source="bench_gpu.json")
    assert e["status"] == "measured" and e["gpu"] == "NVIDIA H200"
    assert e["config"] == {"precision": "bf16", "batch_size": 8, "compile": False, "image_size": 256,
                           "base_width": 64}
    train_h = 8 * 28 * 200 * 1000 / 1000.0 / 3600
    eval_h = 8 * 200 * 4891 * (1.5 / 150) / 3600
    assert e["img_per_s"] == 1000.0
    assert e["train_hours"] == pytest.approx(train_h) and e["eval_hours"] == pytest.approx(eval_h)
    assert e["gpus_for_goal"] == -(-(train_h + eval_h) // 24)
    assert e["fastest"]["config"]["batch_size"] == 64 and e["fastest"]["img_per_s"] == 2000.0
    slower = bench.table1_estimate(cfg, _gpu_report(250.0), source="x")
    assert slower["train_hours"] == pytest.approx(4 * train_h) and slower["gpus_for_goal"] > e["gpus_for_goal"]
    assert "1000 img/s" in bench.render_table1_estimate(e) and "GPU(s)" in bench.render_table1_estimate(e)


def test_table1_estimate_is_unmeasured_without_a_gpu_measurement():
    cfg = _cfg("detector.batch_size=8")
    none = bench.table1_estimate(cfg, None, source="results/bench_gpu.json")
    assert none["status"] == "unmeasured" and "img_per_s" not in none
    assert "unmeasured" in bench.render_table1_estimate(none)
    report = _gpu_report(1000.0)
    report["training"] = [t for t in report["training"] if t["batch_size"] != 8 or t["compile"]]
    assert bench.table1_estimate(cfg, report)["status"] == "unmeasured"  # nothing at the detector's batch


@pytest.mark.slow
def test_bench_smoke(tmp_path, shared_data):
    gpu_json = tmp_path / "bench_gpu.json"
    cfg = _cfg(f"paths.shared_data_dir={shared_data}", f"paths.results_dir={tmp_path}",
               f"table1_estimate.gpu_json={gpu_json}", "evaluation.n_images=6", "evaluation.repeats=1",
               "pro.cases=[{name: tiny, n: 3, size: 48}]", "synthesis.n_images=3", "synthesis.n_per_image=2",
               "synthesis.workers=[1,2]")
    report = bench.run_all(cfg)
    saved = json.loads((tmp_path / "bench.json").read_text())  # output.cpu: the CPU report's own file
    assert saved["training"][0]["ratio"] == pytest.approx(report["training"][0]["ratio"])
    assert {"loop_img_s", "ceiling_img_s", "peak_mem_mib", "precision", "batch_size"} <= set(saved["training"][0])
    assert {"epoch_s", "predict_s", "metrics_cpu_s", "metrics_device_s"} <= set(saved["evaluation"])
    assert saved["pro"][0]["abs_diff"] < 1e-6
    assert set(saved["synthesis"]["workers_seconds"]) == {"1", "2"}
    assert len(saved["synthesis"]["ms_per_anomaly_by_size"]) == 2  # 256 px and native 512x208
    assert saved["table1_estimate"]["status"] == "unmeasured" and saved["table1_estimate"]["runs"] == 8 * 28
    md = (tmp_path / "bench.md").read_text()
    assert "loop img/s" in md and "Table 1 estimate" in md and "unmeasured" in md
    assert not gpu_json.exists()  # a CPU run never writes the GPU report

    gpu_json.write_text(json.dumps(_gpu_report(800.0)))
    cfg = _cfg(f"paths.results_dir={tmp_path}", f"table1_estimate.gpu_json={gpu_json}", "sections.cpu=[]",
               "detector.batch_size=8")
    again = bench.run_all(cfg)
    assert again["table1_estimate"]["status"] == "measured" and again["table1_estimate"]["img_per_s"] == 800.0
    assert "800 img/s" in (tmp_path / "bench.md").read_text()
