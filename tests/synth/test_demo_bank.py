"""The anomaly bank that ships in the package (cai/data/demo_bank, daad=demo_bank): CAI works with no
../shared at all, and the bank stays small, licensed and well-formed."""

from __future__ import annotations

import csv

import numpy as np

from cai.bank import AnomalyBank
from cai.pipeline import load_category, prepare_category, synthesize
from tests.conftest import REPO_ROOT, compose_config

BANK = REPO_ROOT / "cai" / "data" / "demo_bank"


def test_demo_bank_is_small_attributed_and_loads():
    total = sum(p.stat().st_size for p in BANK.rglob("*") if p.is_file())
    assert total <= 3 * 1024 * 1024
    attribution = (BANK / "ATTRIBUTION.md").read_text()
    for needed in ("BSData", "Schlagenhauf", "2103.13003", "2Obe/BSData", "CC BY-SA 4.0", "Modifications"):
        assert needed in attribution
    with (BANK / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 20 and {r["source"] for r in rows} == {"bsdata"}
    assert {r["anomaly_class"] for r in rows} == {"pits"}
    bank = AnomalyBank.from_manifest(BANK / "manifest.csv", source_group_of={"bsdata": "existing_datasets"})
    assert len(bank) == len(rows)
    pattern = bank.pattern(0)
    assert pattern is not None and pattern.mask.any()


def test_cai_n_on_the_demo_dataset_needs_no_shared_data(tmp_path, monkeypatch):
    missing = tmp_path / "no_shared_data"
    monkeypatch.setenv("CAI_SHARED_DATA", str(missing))
    cfg = compose_config("config", [
        "dataset=demo", "dataset.category=brick", "dataset.image_size=64", "dataset.reader.n_train=2",
        "dataset.reader.n_test_good=1", "dataset.reader.n_test_anomalous=3", "synthesizer=cai_n",
        "synthesizer.n_per_image=2", "scale.large=1", "scale.medium=1", "scale.small=0", "daad=demo_bank",
        "foreground=otsu", "logger=none",
        f"paths.cache_dir={tmp_path / 'cache'}", "synthesis.workers=1",
    ], tmp_path / "run")
    assert cfg.paths.shared_data_dir == str(missing) and not missing.exists()
    prep = prepare_category(cfg, load_category(cfg))
    _, images, masks, normal_index = synthesize(cfg, prep)
    assert images.shape == (4, 64, 64, 3) and masks.shape == (4, 64, 64)
    assert sorted(normal_index) == [0, 0, 1, 1]
    for image, mask, i in zip(images, masks, normal_index, strict=True):
        assert mask.any()                                    # an injected pit, labelled
        changed = np.abs(image.astype(int) - prep.normals[i].astype(int)).max(axis=-1) > 0
        assert changed[mask].mean() > 0.5                    # the labelled pixels were edited
    assert not missing.exists()
