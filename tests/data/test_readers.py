"""Readers on tiny fixture trees in every layout, the real bsdata_ad fixture, and their clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import pytest

from cai.data.readers import BTADReader, FolderReader, KSDD2Reader, MVTecReader, VisAReader
from cai.data.types import NORMAL
from cai.errors import ConfigError, DatasetError
from cai.io import read_image, read_mask
from tests.data.fixtures import (
    BTAD_EXTENSIONS,
    MPDD_DEFECTS,
    ksdd2_truth,
    make_btad,
    make_ksdd2,
    make_mpdd,
    make_mvtec,
    make_visa,
)

HINT = "https://example.org/get-the-data"


def mvtec(root: Path, **kw) -> MVTecReader:
    args = {"name": "mvtec", "root": root, "categories": ["bottle", "carpet"], "textures": ["carpet"]}
    return MVTecReader(**(args | {"download": HINT} | kw))


def assert_clear(exc: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    """The error names the path, the expected layout, the download hint and the given words."""
    msg = str(exc.value)
    assert str(path) in msg, msg
    assert "Expected layout" in msg and HINT in msg, msg
    for w in words:
        assert w in msg, msg


# ------------------------------------------------------------------------------------------- MVTec


def test_mvtec_load_reads_the_layout(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path, defects={"crack": 2, "scratch": 1})
    data = mvtec(root).load("bottle")
    assert (data.dataset, data.category, data.root, data.is_texture) == ("mvtec", "bottle", root, False)
    assert data.train == tuple(sorted((root / "bottle/train/good").glob("*.png")))
    assert len(data.train) == 3
    assert [(t.defect, t.image.name) for t in data.test] == [
        ("crack", "000.png"),
        ("crack", "001.png"),
        (NORMAL, "000.png"),
        (NORMAL, "001.png"),
        ("scratch", "000.png"),
    ]
    for t in data.test:
        if t.defect == NORMAL:
            assert t.mask is None and not t.is_anomalous
        else:
            assert t.mask == root / "bottle/ground_truth" / t.defect / f"{t.image.stem}_mask.png"
            mask = read_mask(t.mask, shape=read_image(t.image).shape[:2])
            assert mask.any()  # both the 0/255 and the 0/1 fixture masks binarise to something
    assert len(data.anomalies) == 3
    assert mvtec(root).load("carpet").is_texture
    assert mvtec(root).categories() == ["bottle", "carpet"]


def test_mvtec_ignores_hidden_and_non_image_files(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    (root / "bottle/train/good/.004.png.tmp.png").write_bytes(b"partial")
    (root / "bottle/train/good/notes.txt").write_text("x")
    (root / "bottle/test/.ipynb_checkpoints").mkdir()
    data = mvtec(root).load("bottle")
    assert len(data.train) == 3
    assert {t.defect for t in data.test} == {"crack", "scratch", NORMAL}


def test_missing_root_is_one_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as exc:
        mvtec(root).load("bottle")
    assert_clear(exc, root, "root")


def test_unknown_category_lists_the_valid_ones(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    with pytest.raises(DatasetError) as exc:
        mvtec(root).load("bottel")
    assert_clear(exc, root, "'bottel'", "bottle, carpet")


def test_missing_category_folder(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path, categories=("bottle",))
    with pytest.raises(DatasetError) as exc:
        mvtec(root).load("carpet")
    assert_clear(exc, root / "carpet")


def test_empty_train_good(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    for p in (root / "bottle/train/good").iterdir():
        p.unlink()
    with pytest.raises(DatasetError) as exc:
        mvtec(root).load("bottle")
    assert_clear(exc, root / "bottle/train/good", "training")


def test_missing_test_folder(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    shutil.rmtree(root / "bottle/test")
    with pytest.raises(DatasetError) as exc:
        mvtec(root).load("bottle")
    assert_clear(exc, root / "bottle/test")


def test_anomaly_without_mask_names_the_mask(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    missing = root / "bottle/ground_truth/crack/001_mask.png"
    missing.unlink()
    with pytest.raises(DatasetError) as exc:
        mvtec(root).load("bottle")
    assert_clear(exc, missing, "1 anomalous test image")


def test_textures_must_be_categories() -> None:
    with pytest.raises(ConfigError, match="rug"):
        MVTecReader("mvtec", "/x", categories=["bottle"], textures=["rug"])


# ------------------------------------------------------------------------------------------ Folder


def test_folder_reader_discovers_categories(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path, categories=("b_part", "a_part"))
    (root / "not_a_category").mkdir()
    reader = FolderReader("folder", root, categories=[], textures=[], download=HINT)
    assert reader.categories() == ["a_part", "b_part"]
    assert len(reader.load("b_part").train) == 3
    with pytest.raises(DatasetError) as exc:
        reader.load("not_a_category")
    assert_clear(exc, root, "a_part, b_part")


def test_folder_reader_uses_the_configured_list(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path, categories=("b_part", "a_part"))
    reader = FolderReader("folder", root, categories=["b_part"], download=HINT)
    assert reader.categories() == ["b_part"]
    with pytest.raises(DatasetError):
        reader.load("a_part")


def test_folder_reader_discovery_needs_the_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as exc:
        FolderReader("folder", tmp_path / "absent", download=HINT).categories()
    assert_clear(exc, tmp_path / "absent")


def test_folder_reader_optional_masks_give_defects_without_ground_truth(tmp_path: Path) -> None:
    """dataset.masks=optional: a defect without its mask file is anomalous with mask=None (no pixel ground
    truth); the default (required) still stops, naming the missing mask; a defect with its mask keeps it."""
    root = make_mvtec(tmp_path, categories=("part",), defects={"crack": 2})
    missing = root / "part/ground_truth/crack/001_mask.png"
    missing.unlink()
    with pytest.raises(DatasetError) as exc:
        FolderReader("folder", root, download=HINT).load("part")
    assert_clear(exc, missing, "lack a mask")
    data = FolderReader("folder", root, download=HINT, masks="optional").load("part")
    cracks = [t for t in data.test if t.defect == "crack"]
    assert [t.mask for t in cracks] == [root / "part/ground_truth/crack/000_mask.png", None]
    assert all(t.is_anomalous for t in cracks) and len(data.anomalies) == 2
    with pytest.raises(ConfigError, match="dataset.masks"):
        FolderReader("folder", root, masks="sometimes")


@pytest.mark.shared_data
def test_folder_reader_on_bsdata(shared_data: Path) -> None:
    root = shared_data / "bsdata_ad"
    reader = FolderReader("bsdata", root, categories=[], textures=[], download=HINT)
    assert reader.categories() == ["ball_screw"]
    data = reader.load("ball_screw")
    assert not data.is_texture
    assert len(data.train) == 200
    assert sum(not t.is_anomalous for t in data.test) == 60
    assert len(data.anomalies) == 167 and {t.defect for t in data.anomalies} == {"pitting"}
    assert all(t.mask is not None and t.mask.is_file() for t in data.anomalies)
    first = data.anomalies[0]
    image = read_image(first.image)
    assert image.shape == (208, 512, 3)
    assert read_mask(first.mask, shape=image.shape[:2]).any()


# -------------------------------------------------------------------------------------------- VisA


def visa(root: Path, **kw) -> VisAReader:
    args = {"name": "visa", "root": root, "categories": ["candle", "pcb1"], "textures": [], "download": HINT}
    return VisAReader(**(args | kw))


def test_visa_load_follows_the_split(tmp_path: Path) -> None:
    root = make_visa(tmp_path, n_train=3, n_train_anomaly=1, n_test_normal=2, n_test_anomaly=2)
    data = visa(root).load("pcb1")
    assert (data.dataset, data.category, data.is_texture) == ("visa", "pcb1", False)
    assert len(data.train) == 3  # the anomalous train row is not a normal image
    assert all("Normal" in p.parts for p in data.train) and list(data.train) == sorted(data.train)
    assert [t.defect for t in data.test] == ["anomaly", "anomaly", NORMAL, NORMAL]
    for t in data.anomalies:
        assert t.mask is not None and t.mask.parts[-3:-1] == ("Masks", "Anomaly")
        assert t.image.parts[0 : len(root.parts)] == root.parts and "pcb1" in t.image.parts
        assert read_mask(t.mask).any()  # VisA's 0/1 masks
    assert all(t.mask is None for t in data.test if not t.is_anomalous)


def test_visa_missing_csv(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    (root / "split_csv/1cls.csv").unlink()
    with pytest.raises(DatasetError) as exc:
        visa(root).load("candle")
    assert_clear(exc, root / "split_csv/1cls.csv", "split file")


def test_visa_wrong_header(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    csv_file = root / "split_csv/1cls.csv"
    lines = csv_file.read_text().splitlines()
    csv_file.write_text("\n".join(["object,split,label,img,mask", *lines[1:]]) + "\n")
    with pytest.raises(DatasetError) as exc:
        visa(root).load("candle")
    assert_clear(exc, csv_file, "img")


def test_visa_malformed_row_names_the_line(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    csv_file = root / "split_csv/1cls.csv"
    lines = csv_file.read_text().splitlines()
    lines[2] = lines[2].replace(",normal,", ",broken,")
    csv_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as exc:
        visa(root).load("candle")
    assert_clear(exc, csv_file, "line 3", "'broken'")


def test_visa_missing_mask_file(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    mask = sorted((root / "candle/Data/Masks/Anomaly").iterdir())[-1]  # a test row (train rows come first)
    mask.unlink()
    with pytest.raises(DatasetError) as exc:
        visa(root).load("candle")
    assert_clear(exc, mask, "missing")


def test_visa_category_without_rows(tmp_path: Path) -> None:
    root = make_visa(tmp_path, categories=("candle",))
    with pytest.raises(DatasetError) as exc:
        visa(root).load("pcb1")
    assert_clear(exc, root / "split_csv/1cls.csv", "'pcb1'")


def test_visa_unknown_category(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    with pytest.raises(DatasetError) as exc:
        visa(root).load("pcb9")
    assert_clear(exc, root, "candle, pcb1")


# ------------------------------------------------------------------------------------------- KSDD2


def ksdd2(root: Path) -> KSDD2Reader:
    return KSDD2Reader("ksdd2", root, categories=["ksdd2"], textures=["ksdd2"], download=HINT)


def test_ksdd2_splits_by_mask_content(tmp_path: Path) -> None:
    root = make_ksdd2(tmp_path, n_train_good=4, n_train_defect=3, n_test_good=2, n_test_defect=3)
    truth = ksdd2_truth(root)
    data = ksdd2(root).load("ksdd2")
    assert data.is_texture and data.category == "ksdd2"
    assert [p.stem for p in data.train] == sorted(s for s, bad in truth["train"].items() if not bad)
    assert len(data.train) == 4
    assert not any(p.stem.endswith("_GT") for p in data.train)
    good = {t.image.stem for t in data.test if not t.is_anomalous}
    bad = {t.image.stem for t in data.anomalies}
    assert good == {s for s, b in truth["test"].items() if not b} and len(good) == 2
    assert bad == {s for s, b in truth["test"].items() if b} and len(bad) == 3
    for t in data.test:
        if t.is_anomalous:
            assert t.defect == "defect" and t.mask == t.image.with_name(f"{t.image.stem}_GT.png")
        else:
            assert t.mask is None


def test_ksdd2_missing_gt(tmp_path: Path) -> None:
    root = make_ksdd2(tmp_path)
    gt = sorted((root / "test").glob("*_GT.png"))[0]
    gt.unlink()
    with pytest.raises(DatasetError) as exc:
        ksdd2(root).load("ksdd2")
    assert_clear(exc, gt, "ground-truth")


def test_ksdd2_missing_split_folder(tmp_path: Path) -> None:
    root = make_ksdd2(tmp_path)
    shutil.rmtree(root / "test")
    with pytest.raises(DatasetError) as exc:
        ksdd2(root).load("ksdd2")
    assert_clear(exc, root / "test")


def test_ksdd2_truncated_gt_is_a_dataset_error(tmp_path: Path) -> None:
    root = make_ksdd2(tmp_path)
    gt = sorted((root / "train").glob("*_GT.png"))[0]
    gt.write_bytes(gt.read_bytes()[:20])
    with pytest.raises(DatasetError) as exc:
        ksdd2(root).load("ksdd2")
    assert str(gt) in str(exc.value)


# -------------------------------------------------------------------------------------------- MPDD


def test_mpdd_tree_reads_with_the_mvtec_reader(tmp_path: Path) -> None:
    """MPDD is the MVTec AD layout: every category, its defect folders and ``<stem>_mask.png`` masks."""
    root = make_mpdd(tmp_path)
    reader = MVTecReader("mpdd", root, categories=list(MPDD_DEFECTS), download=HINT)
    for cat, defects in MPDD_DEFECTS.items():
        data = reader.load(cat)
        assert len(data.train) == 2 and not data.is_texture
        assert sorted(t.defect for t in data.anomalies) == sorted(defects)
        for t in data.anomalies:
            assert t.mask == root / cat / "ground_truth" / t.defect / f"{t.image.stem}_mask.png"
            assert read_mask(t.mask).any()
    missing = root / "metal_plate/ground_truth/total_rust/000_mask.png"
    missing.unlink()
    with pytest.raises(DatasetError) as exc:
        reader.load("metal_plate")
    assert_clear(exc, missing, "1 anomalous test image")


# -------------------------------------------------------------------------------------------- BTAD


def btad(root: Path, **kw) -> BTADReader:
    args = {"name": "btad", "root": root, "categories": ["01", "02", "03"], "textures": ["02"], "download": HINT}
    return BTADReader(**(args | kw))


def test_btad_reads_each_category_with_its_extensions(tmp_path: Path) -> None:
    """ok/ko folders, masks named by the image's stem, and per-category extensions: 01 .bmp images with .png
    masks, 02 .png with .png, 03 .bmp with .bmp."""
    root = make_btad(tmp_path, n_train=3, n_ok=2, n_ko=2)
    reader = btad(root)
    for cat, (image_ext, mask_ext) in BTAD_EXTENSIONS.items():
        data = reader.load(cat)
        assert (data.dataset, data.category, data.is_texture) == ("btad", cat, cat == "02")
        assert data.train == tuple(sorted((root / cat / "train/ok").iterdir())) and len(data.train) == 3
        assert {p.suffix for p in data.train} == {image_ext}
        assert [(t.defect, t.image.name) for t in data.test] == [  # by folder (ko, ok), then name
            ("ko", f"0000{image_ext}"), ("ko", f"0001{image_ext}"),
            (NORMAL, f"0000{image_ext}"), (NORMAL, f"0001{image_ext}"),
        ]
        assert all(t.mask is None for t in data.test if not t.is_anomalous)
        for t in data.anomalies:
            assert t.mask == root / cat / "ground_truth/ko" / f"{t.image.stem}{mask_ext}"
            mask = read_mask(t.mask, shape=read_image(t.image).shape[:2])
            assert mask.any() and not mask.all()


def test_btad_mask_of_another_extension_is_found_too(tmp_path: Path) -> None:
    """A copy whose .bmp files were converted to .png (as some tools do) still reads."""
    root = make_btad(tmp_path, categories=("03",))
    for bmp in sorted((root / "03").rglob("*.bmp")):
        bmp.rename(bmp.with_suffix(".png"))
    data = btad(root).load("03")
    assert {t.mask.suffix for t in data.anomalies} == {".png"} and len(data.anomalies) == 2


def test_btad_missing_mask_names_the_file(tmp_path: Path) -> None:
    root = make_btad(tmp_path, categories=("03",))
    gone = root / "03/ground_truth/ko/0001.bmp"
    gone.unlink()
    with pytest.raises(DatasetError) as exc:
        btad(root).load("03")
    expected = root / "03/ground_truth/ko/0001.png"  # the first place looked, then the .bmp one
    assert_clear(exc, expected, "1 anomalous test image", "also looked for 0001.bmp")


def test_btad_needs_train_ok(tmp_path: Path) -> None:
    root = make_btad(tmp_path, categories=("01",))
    shutil.rmtree(root / "01/train/ok")
    (root / "01/train/good").mkdir()
    with pytest.raises(DatasetError) as exc:
        btad(root).load("01")
    assert_clear(exc, root / "01/train/ok", "training")


def test_btad_mask_extensions_must_not_be_empty(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mask_extensions"):
        btad(tmp_path, mask_extensions=[])
    assert btad(tmp_path, mask_extensions=["bmp"]).mask_extensions == (".bmp",)


# ------------------------------------------------------------------------------- upper-case suffixes


def _upper_suffixes(root: Path) -> None:
    """Rename every file under ``root`` to an upper-case suffix (0001.bmp -> 0001.BMP), as cameras, Windows tools
    and some archives write them."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        path.rename(path.with_suffix(path.suffix.upper()))


def test_upper_case_suffixes_read_in_every_reader_that_looks_files_up_by_suffix(tmp_path: Path) -> None:
    """A mask was looked up under its exact lower-case name (``<stem>_mask.png``, ``<stem>.png|.bmp``,
    ``<stem>_GT.png``), so a tree written with ``.PNG`` / ``.BMP`` / ``.JPG`` stopped with "lack a mask" although
    every mask was there (the images themselves were already listed in any case)."""
    root = make_btad(tmp_path / "btad", n_train=2, n_ok=1, n_ko=2)
    _upper_suffixes(root)
    for cat, (image_ext, mask_ext) in BTAD_EXTENSIONS.items():
        data = btad(root).load(cat)
        assert len(data.train) == 2 and {p.suffix for p in data.train} == {image_ext.upper()}
        assert len(data.anomalies) == 2
        for t in data.anomalies:
            assert t.mask == root / cat / "ground_truth/ko" / f"{t.image.stem}{mask_ext.upper()}"
            assert read_mask(t.mask, shape=read_image(t.image).shape[:2]).any()

    folder = make_mvtec(tmp_path / "folder", defects={"crack": 2})
    for image in sorted((folder / "bottle").rglob("*.png")):
        if "ground_truth" not in image.parts:  # images as .JPG (a phone / camera export), masks as _mask.PNG
            cv2.imwrite(str(image.with_suffix(".JPG")), cv2.imread(str(image)))
            image.unlink()
    _upper_suffixes(folder / "bottle" / "ground_truth")
    data = FolderReader("folder", folder, categories=["bottle"], download=HINT).load("bottle")
    assert {p.suffix for p in data.train} == {".JPG"} and len(data.anomalies) == 2
    assert [t.mask.name for t in data.anomalies] == ["000_mask.PNG", "001_mask.PNG"]
    assert [t.mask.name for t in mvtec(folder).load("bottle").anomalies] == ["000_mask.PNG", "001_mask.PNG"]

    ksdd = make_ksdd2(tmp_path / "ksdd2", n_train_good=2, n_train_defect=1, n_test_good=1, n_test_defect=2)
    truth = ksdd2_truth(ksdd)
    _upper_suffixes(ksdd)
    data = ksdd2(ksdd).load("ksdd2")
    assert sorted(p.stem for p in data.train) == sorted(s for s, bad in truth["train"].items() if not bad)
    assert {t.image.stem for t in data.anomalies} == {s for s, bad in truth["test"].items() if bad}
    assert all(t.mask == t.image.with_name(f"{t.image.stem}_GT.PNG") for t in data.anomalies)


def test_an_exact_name_wins_over_another_case_and_a_missing_mask_still_names_the_expected_file(tmp_path: Path) -> None:
    root = make_btad(tmp_path, categories=("03",))
    masks = root / "03/ground_truth/ko"
    (masks / "0000.bmp").rename(masks / "0000.BMP")
    (masks / "0001.bmp").unlink()
    with pytest.raises(DatasetError) as exc:
        btad(root).load("03")
    assert_clear(exc, masks / "0001.png", "1 anomalous test image", "also looked for 0001.bmp")
    shutil.copy(masks / "0000.BMP", masks / "0001.BMP")
    shutil.copy(masks / "0000.BMP", masks / "0001.bmp")  # both: the exact name is the one read
    assert [t.mask.name for t in btad(root).load("03").anomalies] == ["0000.BMP", "0001.bmp"]
