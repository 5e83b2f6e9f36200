"""The anomaly bank (cai/bank.py) and scripts/build_daad.py."""

from __future__ import annotations

import csv
import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cai.bank import (
    ANOMALY_CLASSES,
    AnomalyBank,
    BankItem,
    canonical_source,
    crop_pattern,
    filter_items,
    harvest_mvtec_layout,
    load_source_aliases,
    lookup_class,
    read_manifest,
)
from cai.errors import ConfigError, DatasetError
from cai.io import write_png

from .conftest import CONF, REPO, write_bank

GROUPS = {"dagm": "existing_datasets", "btad": "online_search"}
MVTEC_CATEGORIES = {
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
}  # fmt: skip


def _item(source: str, cls: str = "crack", group: str = "existing_datasets") -> BankItem:
    return BankItem(Path(f"/x/{source}.png"), Path(f"/x/{source}_mask.png"), cls, source, group)


# ----------------------------------------------------------------------------- manifest
def test_read_manifest_maps_source_groups_and_resolves_paths(bank_manifest: Path) -> None:
    items = read_manifest(bank_manifest, source_group_of=GROUPS)
    assert len(items) == 4
    assert {it.source_group for it in items} == {"existing_datasets", "online_search"}
    assert all(it.image.is_file() and it.mask.is_file() for it in items)


def test_read_manifest_errors(bank_manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No source group"):
        read_manifest(bank_manifest, source_group_of={"dagm": "existing_datasets"})
    with pytest.raises(DatasetError, match="not found"):
        read_manifest(tmp_path / "none.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("image,mask,anomaly_class,source,source_group\na.png,a_mask.png,dent,neu,online_search\n")
    with pytest.raises(ConfigError, match="dent"):
        read_manifest(bad)
    bad.write_text("image,mask,source\na.png,a_mask.png,x\n")
    with pytest.raises(DatasetError, match="anomaly_class"):
        read_manifest(bad)


# ----------------------------------------------------------------------------- filters + leakage
def test_leakage_rule_drops_and_logs(caplog) -> None:
    items = [_item("bsdata"), _item("BSData"), _item("neu"), _item("crackforest")]
    with caplog.at_level(logging.INFO, logger="cai.bank"):
        kept = filter_items(items, leakage_sources=["bsdata"])
    assert [it.source for it in kept] == ["neu", "crackforest"]
    assert "leakage rule dropped 2 of 4 items" in caplog.text


def test_filters_and_empty_bank_errors_name_the_filter() -> None:
    items = [_item("neu", "crack"), _item("crackforest", "stain", "online_search")]
    assert [it.source for it in filter_items(items, classes=["stain"])] == ["crackforest"]
    assert [it.source for it in filter_items(items, source_groups=["existing_datasets"])] == ["neu"]
    with pytest.raises(ConfigError, match="leakage rule"):
        filter_items(items, leakage_sources=["neu", "crackforest"])
    with pytest.raises(ConfigError, match="class filter"):
        filter_items(items, classes=["hole"])
    with pytest.raises(ConfigError, match="source-group filter"):
        filter_items(items, source_groups=["reality_photographing"])
    with pytest.raises(ConfigError, match="Unknown value"):
        filter_items(items, classes=["dent"])


def test_leakage_applies_before_the_other_filters() -> None:
    items = [_item("mvtec", "hole"), _item("visa", "crack")]
    with pytest.raises(ConfigError, match="class filter.*hole"):
        filter_items(items, classes=["hole"], leakage_sources=["mvtec"])


# ----------------------------------------------------------------------------- patterns
def test_crop_pattern_keeps_box_and_clipped_context() -> None:
    image = np.arange(100 * 80 * 3, dtype=np.uint32).reshape(100, 80, 3).astype(np.uint8)
    mask = np.zeros((100, 80), bool)
    mask[5:25, 60:78] = True  # 20 x 18 box near the top-right corner
    pat = crop_pattern(image, mask, context_frac=0.5)
    assert pat is not None and pat.s_a == 20
    top, left, h, w = pat.box
    assert (h, w) == (20, 18) and top == 5 and pat.image.shape[1] == left + w + 2  # clipped at the border
    assert np.array_equal(pat.mask[top : top + h, left : left + w], mask[5:25, 60:78])
    assert np.array_equal(pat.image[top, left], image[5, 60])
    assert crop_pattern(image, np.zeros_like(mask), 0.5) is None


def test_bank_loads_lazily_and_caches(bank_manifest: Path, tmp_path: Path, caplog) -> None:
    bank = AnomalyBank.from_manifest(bank_manifest, source_group_of=GROUPS)
    assert bank._cache == {}
    p = bank.pattern(0)
    assert p is bank.pattern(0) and p.s_a == 120
    bank.preload()
    assert len(bank._cache) == len(bank)
    # an item with an empty mask is skipped with a warning
    write_png(tmp_path / "e.png", np.zeros((20, 20, 3), np.uint8))
    write_png(tmp_path / "e_mask.png", np.zeros((20, 20), bool))
    empty = AnomalyBank(
        [BankItem(tmp_path / "e.png", tmp_path / "e_mask.png", "crack", "s", "online_search")]
    )
    with caplog.at_level(logging.WARNING, logger="cai.bank"):
        assert empty.pattern(0) is None
    assert "empty mask" in caplog.text


def test_from_config_reads_the_daad_group(bank_manifest: Path) -> None:
    cfg = OmegaConf.load(CONF / "daad" / "daad_mini.yaml")
    cfg.manifest = str(bank_manifest)
    cfg.source_group_of = GROUPS
    cfg.classes = ["crack", "stain"]
    bank = AnomalyBank.from_config(cfg, leakage_sources=["btad"])
    assert sorted(it.anomaly_class for it in bank.items) == ["crack", "stain"]
    with pytest.raises(ConfigError, match="manifest"):
        AnomalyBank.from_config({"manifest": None})


# ----------------------------------------------------------------------------- building
def _mvtec_tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cat, defects in {
        "bottle": ["broken_large", "contamination"],
        "cable": ["bent_wire", "poke_insulation"],
    }.items():
        write_png(root / cat / "test" / "good" / "000.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
        for d in defects:
            for stem in ("000", "001"):
                write_png(
                    root / cat / "test" / d / f"{stem}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                )
                if not (d == "contamination" and stem == "001"):  # one image without a mask
                    m = np.zeros((32, 32), bool)
                    m[4:12, 6:20] = True
                    write_png(root / cat / "ground_truth" / d / f"{stem}_mask.png", m)
    return root


def _tables() -> dict:
    return {
        p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in (CONF / "daad" / "tables").glob("*.yaml")
    }


def test_defect_tables() -> None:
    tables = _tables()
    assert set(tables) == {"mvtec_ad", "visa", "ksdd2", "bsdata"}
    mvtec = tables["mvtec_ad"]
    assert {k.split("/")[0] for k in mvtec["defects"]} == MVTEC_CATEGORIES
    for t in tables.values():
        values = [*t["defects"].values(), *(t.get("by_category") or {}).values(), t.get("default")]
        assert all(v is None or v in ANOMALY_CLASSES for v in values)
    assert lookup_class(mvtec, "bottle", "broken_large") == "hole"
    assert lookup_class(mvtec, "cable", "bent_wire") is None
    assert lookup_class(tables["visa"], "candle", "bad") == "stain"
    assert lookup_class(tables["visa"], "pcb1", "bad") is None
    assert lookup_class(tables["ksdd2"], "ksdd2", "bad") == "scratch"
    assert lookup_class(tables["bsdata"], "ball_screw", "pitting") == "pits"


def test_harvest_mvtec_layout(tmp_path: Path) -> None:
    rows, left_out = harvest_mvtec_layout(_mvtec_tree(tmp_path / "mv"), _tables()["mvtec_ad"], source="mvtec")
    assert sorted((r.origin, r.anomaly_class) for r in rows) == [
        ("bottle/broken_large", "hole"),
        ("bottle/broken_large", "hole"),
        ("bottle/contamination", "impurity"),
        ("cable/poke_insulation", "hole"),
        ("cable/poke_insulation", "hole"),
    ]
    assert all(r.source == "mvtec" and r.source_group == "existing_datasets" for r in rows)
    assert any("cable/bent_wire (2 images): no anomaly class" in n for n in left_out)
    assert any("contamination/001.png: no mask" in n for n in left_out)


def test_harvest_mvtec_layout_finds_masks_with_an_upper_case_suffix(tmp_path: Path) -> None:
    """``<stem>_mask.PNG`` was looked up as ``_mask.png`` only: every such anomaly was left out as "no mask"."""
    root = _mvtec_tree(tmp_path / "mv")
    for mask in sorted(root.rglob("*_mask.png")):
        mask.rename(mask.with_suffix(".PNG"))
    rows, left_out = harvest_mvtec_layout(root, _tables()["mvtec_ad"], source="mvtec")
    assert len(rows) == 5 and all(r.mask.suffix == ".PNG" for r in rows)
    assert [n for n in left_out if "no mask" in n] == [n for n in left_out if "contamination/001.png" in n]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_daad_script_on_a_tiny_tree(tmp_path: Path, caplog) -> None:
    mv = _mvtec_tree(tmp_path / "mv")
    folder = tmp_path / "bank"
    write_bank(folder)
    os_dir = tmp_path / "os"  # an online-search folder without manifest.csv
    write_png(os_dir / "hole" / "web1.jpg", np.full((16, 16, 3), 9, np.uint8))
    write_png(os_dir / "hole" / "web1_mask.png", np.eye(16, dtype=bool))
    out = tmp_path / "out" / "manifest.csv"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "build_daad",
            overrides=[
                f"out={out}",
                f"datasets=[{{root: {mv}, table: mvtec_ad}}]",
                f"folders=[{{root: {folder}}}, {{root: {os_dir}, source: web, source_group: online_search}}]",
                "++source_group_of.dagm=existing_datasets",
                "++source_group_of.btad=reality_photographing",
            ],
        )
    with caplog.at_level(logging.INFO, logger="cai.bank"):
        assert _load_script("build_daad").run(cfg) == out
    assert "left out mvtec: cable/bent_wire" in caplog.text
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 + 4 + 1
    assert {r["source_group"] for r in rows} == {
        "existing_datasets",
        "reality_photographing",
        "online_search",
    }
    bank = AnomalyBank.from_manifest(out, source_groups=["online_search"])
    assert [it.source for it in bank.items] == ["online_search"]  # stored canonical
    assert len(AnomalyBank.from_manifest(out, leakage_sources=["mvtec"])) == 5


@pytest.mark.shared_data
def test_build_daad_on_daad_mini(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "manifest.csv"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("build_daad", overrides=[f"paths.shared_data_dir={shared_data}", f"out={out}"])
    _load_script("build_daad").run(cfg)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 558
    assert {r["anomaly_class"] for r in rows} == {"pits", "crack", "stain", "scratch", "impurity"}
    assert {r["source_group"] for r in rows} == {"existing_datasets"}
    bank = AnomalyBank.from_manifest(out, leakage_sources=["bsdata"])
    assert len(bank) == 478 and "bsdata" not in {it.source for it in bank.items}
    pat = bank.pattern(0)
    assert pat is not None and pat.mask[pat.box[0] : pat.box[0] + pat.box[2]].any()


# ----------------------------------------------------------------------------- source names (one alias table)
def test_leakage_rule_matches_source_aliases() -> None:
    # a bank built with `source: mvtec_ad` must not slip past a target whose leakage_sources say `mvtec`
    items = [_item("mvtec_ad"), _item("MVTec-AD"), _item("KolektorSDD2"), _item("neu")]
    assert [it.source for it in filter_items(items, leakage_sources=["mvtec"])] == ["KolektorSDD2", "neu"]
    assert [it.source for it in filter_items(items, leakage_sources=["ksdd2", "mvtec_ad"])] == ["neu"]
    assert canonical_source("VT-ADL") == "btad" and canonical_source("Magnetic tile") == "mtd"
    assert canonical_source("mvtec_loco_ad") == "mvtec_loco" != canonical_source("mvtec")


def test_unknown_sources_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Unknown anomaly-bank source 'my_scans'"):
        filter_items([_item("my_scans"), _item("neu")], leakage_sources=["mvtec"])
    with pytest.raises(ConfigError, match="Unknown anomaly-bank source 'mvtek'"):
        filter_items([_item("neu")], leakage_sources=["mvtek"])  # a typo in a dataset's leakage_sources
    bad = tmp_path / "manifest.csv"
    bad.write_text("image,mask,anomaly_class,source,source_group\na.png,a_mask.png,crack,mvtec_ad,existing_datasets\n"
                   "b.png,b_mask.png,crack,my_scans,online_search\n")
    with pytest.raises(ConfigError, match=r"(?s)my_scans.*aliases\.yaml"):
        read_manifest(bad)


def test_manifest_sources_are_stored_canonical(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image,mask,anomaly_class,source,source_group\n"
                        "a.png,a_mask.png,crack,MVTec_AD,existing_datasets\nb.png,b_mask.png,pits,BSData-AD,\n")
    items = read_manifest(manifest, source_group_of={"bsdata_ad": "existing_datasets"})
    assert [it.source for it in items] == ["mvtec", "bsdata"]
    assert [it.source_group for it in items] == ["existing_datasets"] * 2


def test_every_dataset_leakage_source_is_a_known_name() -> None:
    conf = Path(__file__).resolve().parents[2] / "conf"
    table = load_source_aliases()
    for path in sorted((conf / "dataset").glob("*.yaml")):
        for name in OmegaConf.load(path).get("leakage_sources") or []:
            assert canonical_source(name) in table.values(), path
