"""Your own data without pixel ground truth (dataset=folder dataset.masks=optional), end to end: training,
skipped pixel metrics with the reason, selection on image AUROC + AP, samples.png, label fidelity, the table
and predictions."""

from __future__ import annotations

import csv
import json

import cv2
import pytest

from tests.conftest import compose_config
from tests.fake_runs import make_dataset

TINY_FOLDER = [
    "logger=none", "synthesizer=cutpaste", "foreground=full", "dataset=folder", "dataset.category=widget",
    "dataset.image_size=32", "dataset.masks=optional", "synthesizer.n_per_image=2", "detector.model.base_width=4",
    "detector.epochs=3", "detector.samples_per_epoch=16", "detector.batch_size=4", "synthesis.workers=1",
]


def test_folder_dataset_without_some_masks_end_to_end(tmp_path, caplog):
    import logging

    from cai.pipeline import run_job
    from cai.predict import run_predict
    from cai.report import TableSpec, collect_runs, render, run_metric

    root = make_dataset(tmp_path / "data", n_train=6, n_good=3, n_bad=6)
    for stem in ("000", "003"):  # two of the six defects come without their masks
        (root / "widget" / "ground_truth" / ("crack" if stem == "000" else "hole") / f"{stem}_mask.png").unlink()
    run_dir = tmp_path / "runs" / "run"
    cfg = compose_config("config", [*TINY_FOLDER, f"dataset.reader.root={root}", f"paths.cache_dir={tmp_path / 'c'}"],
                         run_dir)
    with caplog.at_level(logging.WARNING):
        run_job(cfg, run_dir)
    warned = [r.getMessage() for r in caplog.records if "Pixel metrics skipped" in r.getMessage()]
    assert warned and all("no ground-truth masks for 2 of 6 anomalous test images" in w for w in warned)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    m = metrics["metrics"]
    assert all(m[k] is None for k in ("pixel_auroc", "pixel_ap", "pro", "pixel_f1_max"))
    assert all(0.0 <= m[k] <= 1.0 for k in ("image_auroc", "image_ap", "image_f1_max"))
    assert metrics["skipped"] == {"pixel": "no ground-truth masks for 2 of 6 anomalous test images "
                                           "(the epoch was chosen on image AUROC + image AP)"}
    assert metrics["thresholds"]["pixel"] is None and 0.0 <= metrics["thresholds"]["image"] <= 1.0
    assert metrics["n_test"] == 9 and metrics["label_fidelity"]["n"] == 12
    assert (run_dir / "done").is_file()
    samples = cv2.imread(str(run_dir / "samples.png"))
    assert samples is not None and samples.shape[0] > 6 * 32  # six rows: the four defects with masks and two without
    # every evaluated epoch was scored on image AUROC + image AP, and the best of them was selected
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    evaluated = [h for h in history if "selection_score" in h]
    assert len(evaluated) == 3
    for h in evaluated:  # a metric not measured is null (strict JSON), not NaN
        assert h["pixel_auroc"] is None and h["selection_score"] == pytest.approx(h["image_auroc"] + h["image_ap"])
    best = max(evaluated, key=lambda h: h["selection_score"])
    assert metrics["selected_epoch"] == best["epoch"] and m["image_ap"] == best["image_ap"]

    # tables: image columns have values, skipped pixel columns say so (with the reason under the table)
    runs = collect_runs(tmp_path / "runs")
    assert run_metric(runs[0], "pixel_auroc") is None and run_metric(runs[0], "image_ap") == m["image_ap"]
    spec = TableSpec(name="mine", title="mine", runs_dir=tmp_path / "runs", datasets=["folder"],
                     metrics={"AUC": "pixel_auroc", "AP-I": "image_ap", "F1-I": "image_f1_max"})
    text = render(spec, runs)
    assert f"| CutPaste | skipped [1] | {100 * m['image_ap']:.1f} | {100 * m['image_f1_max']:.1f} |\n" in text
    assert f"- [1] pixel metrics: {metrics['skipped']['pixel']}\n" in text and "Incomplete" not in text

    # predictions: image labels at the run's image threshold; the outline falls back to it
    summary = run_predict(compose_config("predict", [f"run={run_dir}", f"images={root / 'widget' / 'test'}",
                                                     f"out={tmp_path / 'out'}"], tmp_path))
    assert summary["n_images"] == 9
    assert summary["thresholds"]["pixel"] == summary["thresholds"]["image"] == metrics["thresholds"]["image"]
    assert summary["thresholds"]["source"]["pixel"].startswith("image threshold")

    # every JSON file the run and its predictions wrote is strict JSON (no bare NaN, which jq, JavaScript and many
    # readers refuse); a threshold recomputation stores the unmeasured pixel metrics and threshold as null
    recomputed = run_predict(compose_config("predict", [f"run={run_dir}", f"images={root / 'widget' / 'test'}",
                                                        f"out={tmp_path / 'out2'}", "recompute_thresholds=true"],
                                            tmp_path))
    assert recomputed["thresholds"]["image"] == metrics["thresholds"]["image"]
    written = [run_dir / "metrics.json", run_dir / "thresholds.json", run_dir / "run_info.json",
               tmp_path / "out" / "predict.json", tmp_path / "out2" / "predict.json"]
    parsed = {p: strict_json(p.read_text()) for p in written}
    parsed.update({run_dir / f"history.jsonl:{i}": strict_json(line)
                   for i, line in enumerate((run_dir / "history.jsonl").read_text().splitlines())})
    saved = parsed[run_dir / "thresholds.json"]
    assert saved["pixel"] is None and saved["metrics"]["pixel_auroc"] is None and saved["matches_metrics_json"]
    assert saved["metrics"]["image_ap"] == m["image_ap"]

    # the runs CSV beside the table: unmeasured metrics are empty cells, the reason is its own column
    from cai.report import write_runs_csv

    assert write_runs_csv(tmp_path / "runs.csv", tmp_path / "runs") == 1
    with (tmp_path / "runs.csv").open() as f:
        row = next(csv.DictReader(f))
    assert row["pixel_auroc"] == "" and float(row["image_ap"]) == m["image_ap"]
    assert row["skipped.pixel"] == metrics["skipped"]["pixel"]


def strict_json(text: str) -> object:
    """json.loads that refuses NaN / Infinity, as jq, JavaScript's JSON.parse and strict readers do."""
    def refuse(constant: str) -> object:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_masks_required_by_default(tmp_path):
    """dataset.masks defaults to required: a missing mask still stops before any work, naming it."""
    from cai.errors import DatasetError
    from cai.pipeline import load_category

    root = make_dataset(tmp_path / "data", n_train=2, n_good=1, n_bad=2)
    (root / "widget" / "ground_truth" / "crack" / "000_mask.png").unlink()
    overrides = [o for o in TINY_FOLDER if not o.startswith("dataset.masks")]
    default = compose_config("config", [*overrides, f"dataset.reader.root={root}"], tmp_path / "run")
    assert default.dataset.masks == "required" and default.dataset.reader.masks == "required"
    cfg = compose_config("config", [*overrides, "dataset.masks=required", f"dataset.reader.root={root}"],
                         tmp_path / "run")
    with pytest.raises(DatasetError, match="lack a mask"):
        load_category(cfg)


def test_samples_panel_puts_defects_without_masks_first_with_a_crossed_out_ground_truth():
    import numpy as np

    from cai.synth.grid import tile
    from cai.viz import heat, no_truth_tile, prediction_panel

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    masks = np.zeros((3, 16, 16), bool)
    masks[2, 4:8, 4:8] = True
    maps = rng.random((3, 16, 16)).astype(np.float32)
    labels, has_mask = np.array([False, True, True]), np.array([True, False, True])
    panel = prediction_panel(images, masks, maps, ["a", "b", "c"], n=2, labels=labels, has_mask=has_mask)
    expected = tile([[images[1], no_truth_tile(16), heat(maps[1])], [images[2], masks[2], heat(maps[2])]],
                    labels=["b", "c"])
    assert np.array_equal(panel, expected)
