"""``make labels`` end to end on the demo dataset (scripts/label_fidelity.py), and the label_fidelity key
that run_job writes into metrics.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[1]

DEMO = ["dataset=demo", "dataset.category=coin", "dataset.image_size=64", "dataset.reader.n_train=4",
        "dataset.reader.n_test_good=1", "dataset.reader.n_test_anomalous=3", "synthesizer.n_per_image=3",
        "synthesis.workers=1", "foreground=otsu"]


def _script(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "CAI_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "label_fidelity.py"), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_script_writes_table_json_and_galleries(tmp_path):
    out = tmp_path / "results"
    proc = _script([*DEMO, "label_fidelity.synthesizers=[cutpaste,nsa_n]", f"paths.results_dir={out}",
                    "label_fidelity.gallery_n=3"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "label_fidelity.md").read_text()
    assert "| cutpaste | 12 |" in md and "| nsa_n | 12 |" in md and "over-labelling %" in md
    result = json.loads((out / "label_fidelity.json").read_text())
    assert result["dataset"] == "demo" and result["image_size"] == 64 and result["n_train_images"] == 4
    assert result["measure"] == "ciede2000" and result["visibility_threshold"] == 2.3
    rows = {s["synthesizer"]: s for s in result["synthesizers"]}
    assert set(rows) == {"cutpaste", "nsa_n"}
    for s in rows.values():
        assert s["n"] == 12 and 0 < s["label_area"] < 1 and 0 <= s["over"] <= 1 and 0 < s["iou"] <= 1
        assert "by_scale" not in s  # no scale in these synthesizers' records
    for name in rows:
        import cv2

        gallery = cv2.imread(str(out / "figures" / "label_fidelity" / f"{name}.png"))
        assert gallery is not None and gallery.shape[0] == 3 * (64 + 2) + 2  # 3 worst rows of 64 px cells

    # The same measures from the cache dir alone (any synthesizer's cache; normals from the dataset config).
    cache = Path(rows["cutpaste"]["cache"])
    again = _script([*DEMO, f"label_fidelity.cache_dir={cache}", f"paths.results_dir={tmp_path / 'again'}"],
                    tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    (single,) = json.loads((tmp_path / "again" / "label_fidelity.json").read_text())["synthesizers"]
    assert single["synthesizer"] == "cutpaste"
    assert {k: single[k] for k in ("n", "over", "under", "iou")} == {k: rows["cutpaste"][k]
                                                                       for k in ("n", "over", "under", "iou")}

    # A cache made from other normals is refused with one clear message.
    wrong = _script([*DEMO[:3], "dataset.reader.n_train=5", *DEMO[4:], f"label_fidelity.cache_dir={cache}",
                     f"paths.results_dir={tmp_path / 'wrong'}"], tmp_path)
    assert wrong.returncode == 2 and "n_train cache=4 config=5" in wrong.stderr


@pytest.mark.slow
def test_run_job_writes_label_fidelity_into_metrics(tmp_path):
    from cai.pipeline import run_job

    run_dir = tmp_path / "run"
    cfg = compose_config("config", [
        *DEMO, "logger=none", "synthesizer=cutpaste", f"paths.cache_dir={tmp_path / 'cache'}",
        "detector.model.base_width=4", "detector.epochs=1", "detector.samples_per_epoch=8",
        "detector.batch_size=4", "device=cpu"], run_dir)
    metrics = run_job(cfg, run_dir)
    lf = json.loads((run_dir / "metrics.json").read_text())["label_fidelity"]
    assert lf == json.loads(json.dumps(metrics["label_fidelity"]))
    assert lf["n"] == 12 and lf["measure"] == "ciede2000" and lf["visibility_threshold"] == 2.3
    assert 0 < lf["label_area"] < 1 and 0 <= lf["over"] <= 1 and 0 <= lf["under"] <= 1 and 0 < lf["iou"] <= 1
    assert np.isfinite([lf["label_area"], lf["visible_area"], lf["over"], lf["iou"]]).all()
