"""`make bank` offline: fake CrackForest / NEU-Seg / BSData archives (their layouts, made in tmp_path) go
through bank.local_dir, the sha256 check, extraction and conversion into a bank manifest."""

from __future__ import annotations

import csv
import json
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy.io import savemat

from cai.bank import AnomalyBank
from cai.bank_sources import build_public_bank, sha256_of
from cai.errors import ConfigError, DatasetError
from tests.conftest import REPO_ROOT, compose_config


def _jpg(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _fake_archives(tmp: Path, public: dict) -> Path:
    """Write the three archives with each source's configured layout (root folder, patterns) into tmp/archives."""
    src = {s["name"]: s for s in public["sources"]}
    stage, out = tmp / "stage", tmp / "archives"
    out.mkdir()
    # CrackForest: image/<stem>.jpg + groundTruth/<stem>.mat (Segmentation: 1 pavement, 2 crack)
    cf = stage / "cf" / src["crackforest"]["root"]
    for i in range(2):
        _jpg(cf / "image" / f"00{i}.jpg", 64, 96, i)
        (cf / "groundTruth").mkdir(parents=True, exist_ok=True)
        seg = np.ones((64, 96), np.uint16)
        seg[30:34, 10:80] = 2
        savemat(cf / "groundTruth" / f"00{i}.mat", {"groundTruth": {"Segmentation": seg, "Boundaries": seg == 2}})
    with zipfile.ZipFile(out / src["crackforest"]["file"], "w") as z:
        for p in sorted((stage / "cf").rglob("*")):
            z.write(p, p.relative_to(stage / "cf"))
    # NEU-Seg (VOC layout) as a tar.gz to exercise the tar path: labels 1 inclusion and 3 scratches
    neu = stage / "neu" / src["neu"]["root"]
    _jpg(neu / "JPEGImages" / "a.jpg", 50, 50, 7)
    lab = np.zeros((50, 50), np.uint8)
    lab[5:15, 5:15], lab[30:45, 20:24] = 1, 3
    (neu / "SegmentationClass").mkdir(parents=True)
    cv2.imwrite(str(neu / "SegmentationClass" / "a.png"), lab)
    with tarfile.open(out / src["neu"]["file"], "w:gz") as t:
        t.add(stage / "neu" / src["neu"]["root"].split("/")[0], arcname=src["neu"]["root"].split("/")[0])
    # BSData: data/<stem>.jpg + label/<stem>.json (labelme); only KGT1* (drive type 1) may be used
    bs = stage / "bs" / src["bsdata"]["root"]
    for stem in ("KGT1-S-001_crop_0", "01_200828_crop_2"):
        _jpg(bs / "data" / f"{stem}.jpg", 300, 400, 3)
        (bs / "label").mkdir(parents=True, exist_ok=True)
        (bs / "label" / f"{stem}.json").write_text(json.dumps({"shapes": [
            {"label": "Pitting", "points": [[200, 100], [240, 100], [240, 130], [200, 130]]},
            {"label": "other", "points": [[0, 0], [10, 0], [10, 10]]}]}))
    with zipfile.ZipFile(out / src["bsdata"]["file"], "w") as z:
        for p in sorted((stage / "bs").rglob("*")):
            z.write(p, p.relative_to(stage / "bs"))
    return out


def _bank_cfg(tmp_path: Path, **overrides) -> dict:
    cfg = compose_config("build_daad", ["bank=public"], tmp_path)
    c = OmegaConf.to_container(cfg, resolve=False)
    c.pop("hydra", None)
    c["paths"]["cache_dir"] = str(tmp_path / "cache")
    c["out"] = str(tmp_path / "cache" / "daad" / "manifest.csv")
    c = OmegaConf.to_container(OmegaConf.create(c), resolve=True)
    c["bank"].update(overrides)
    return c


def test_config_ships_no_unverified_checksum_silently():
    public = OmegaConf.load(REPO_ROOT / "conf" / "bank" / "public.yaml")
    assert public.bank.allow_unverified is False
    for s in public.bank.sources:  # null = unverified (refused by default); otherwise a 64-hex digest
        assert s.sha256 is None or len(str(s.sha256)) == 64


def test_public_bank_from_a_local_folder_with_pinned_checksums(tmp_path):
    import importlib.util

    c = _bank_cfg(tmp_path)
    archives = _fake_archives(tmp_path, c["bank"])
    c["bank"]["local_dir"] = str(archives)
    for s in c["bank"]["sources"]:
        s["sha256"] = sha256_of(archives / s["file"])
    spec = importlib.util.spec_from_file_location("build_daad", REPO_ROOT / "scripts" / "build_daad.py")
    build_daad = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_daad)
    out = build_daad.run(OmegaConf.create(c))
    with Path(out).open(newline="") as f:
        rows = list(csv.DictReader(f))
    by = sorted((r["source"], r["anomaly_class"]) for r in rows)
    assert by == [("bsdata", "pits"), ("crackforest", "crack"), ("crackforest", "crack"),
                  ("neu", "impurity"), ("neu", "scratch")]
    assert not any("01_200828" in r["image"] for r in rows)          # drive type 2 (the bsdata target) left out
    bank = AnomalyBank.from_manifest(out)
    for i in range(len(bank)):
        assert bank.pattern(i) is not None and bank.pattern(i).mask.any()
    pits = next(i for i, it in enumerate(bank.items) if it.anomaly_class == "pits")
    image = cv2.imread(str(bank.items[pits].image))
    assert image.shape[:2] == (256, 256)                             # a 256 px window around the pitting
    # the leakage rule still applies to the built bank: BSData as the target drops the pits
    assert len(AnomalyBank.from_manifest(out, leakage_sources=["bsdata"])) == len(bank) - 1


def test_a_wrong_checksum_is_an_error(tmp_path):
    c = _bank_cfg(tmp_path)
    archives = _fake_archives(tmp_path, c["bank"])
    c["bank"]["local_dir"] = str(archives)
    c["bank"]["sources"] = [dict(c["bank"]["sources"][0], sha256="0" * 64)]
    with pytest.raises(ConfigError, match="Checksum mismatch"):
        build_public_bank(c["bank"])
    # even with allow_unverified: that only admits a *missing* digest
    c["bank"]["allow_unverified"] = True
    with pytest.raises(ConfigError, match="Checksum mismatch"):
        build_public_bank(c["bank"])


def test_a_null_checksum_is_refused_unless_allowed(tmp_path):
    c = _bank_cfg(tmp_path)
    archives = _fake_archives(tmp_path, c["bank"])
    c["bank"]["local_dir"] = str(archives)
    c["bank"]["sources"] = [dict(c["bank"]["sources"][1], sha256=None)]
    digest = sha256_of(archives / c["bank"]["sources"][0]["file"])
    with pytest.raises(ConfigError, match="unverified") as err:
        build_public_bank(c["bank"])
    assert digest in str(err.value) and "allow_unverified" in str(err.value)
    c["bank"]["allow_unverified"] = True
    root = build_public_bank(c["bank"])
    with (root / "manifest.csv").open(newline="") as f:
        assert {r["anomaly_class"] for r in csv.DictReader(f)} == {"impurity", "scratch"}


def test_a_missing_local_archive_names_the_file(tmp_path):
    c = _bank_cfg(tmp_path, local_dir=str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="not found") as err:
        build_public_bank(c["bank"])
    assert "crackforest.zip" in str(err.value)
