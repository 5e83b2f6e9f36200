"""Seeded builders of tiny datasets in the real on-disk layouts (MVTec AD / MPDD, VisA, KolektorSDD2, BTAD).

Images are small random RGB/grey pictures; masks are written in the formats the real datasets use
(0/255 and 0/1), so the readers and :mod:`cai.io` are exercised on the same variety.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

SIZE = 32


def _image(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _mask(rng: np.random.Generator, size: int = SIZE, high: int = 255) -> np.ndarray:
    """A uint8 mask with one random rectangle set to ``high`` (255 or 1)."""
    m = np.zeros((size, size), np.uint8)
    y, x = rng.integers(0, size // 2, size=2)
    h, w = rng.integers(2, size // 2, size=2)
    m[y : y + h, x : x + w] = high
    return m


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, array)
    assert ok, path
    path.write_bytes(buf.tobytes())


def make_mvtec(
    root: Path,
    categories: tuple[str, ...] = ("bottle", "carpet"),
    n_train: int = 3,
    n_good: int = 2,
    defects: dict[str, int] | None = None,
    seed: int = 0,
) -> Path:
    """An MVTec-AD tree; masks alternate between 0/255 and 0/1. Returns ``root``."""
    defects = {"crack": 2, "scratch": 1} if defects is None else defects
    rng = np.random.default_rng(seed)
    for cat in categories:
        for i in range(n_train):
            _write(root / cat / "train" / "good" / f"{i:03d}.png", _image(rng))
        for i in range(n_good):
            _write(root / cat / "test" / "good" / f"{i:03d}.png", _image(rng))
        for d, n in defects.items():
            for i in range(n):
                _write(root / cat / "test" / d / f"{i:03d}.png", _image(rng))
                high = 255 if i % 2 == 0 else 1
                _write(root / cat / "ground_truth" / d / f"{i:03d}_mask.png", _mask(rng, high=high))
    return root


VISA_HEADER = ["object", "split", "label", "image", "mask"]


def make_visa(
    root: Path,
    categories: tuple[str, ...] = ("candle", "pcb1"),
    n_train: int = 3,
    n_train_anomaly: int = 1,
    n_test_normal: int = 2,
    n_test_anomaly: int = 2,
    seed: int = 0,
) -> Path:
    """A VisA tree with ``split_csv/1cls.csv``; JPEG images, 0/1 masks (VisA's own format).

    ``n_train_anomaly`` anomalous rows in the train split test that readers do not take them as normal.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for cat in categories:
        base = Path(cat) / "Data"
        k = 0
        for split, label, n in (
            ("train", "normal", n_train),
            ("train", "anomaly", n_train_anomaly),
            ("test", "normal", n_test_normal),
            ("test", "anomaly", n_test_anomaly),
        ):
            for _ in range(n):
                kind = "Normal" if label == "normal" else "Anomaly"
                image = base / "Images" / kind / f"{k:04d}.JPG"
                _write(root / image, _image(rng))
                mask = ""
                if label == "anomaly":
                    mask_path = base / "Masks" / "Anomaly" / f"{k:04d}.png"
                    _write(root / mask_path, _mask(rng, high=1))
                    mask = mask_path.as_posix()
                rows.append([cat, split, label, image.as_posix(), mask])
                k += 1
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(VISA_HEADER)
        writer.writerows(rows)
    return root


def make_ksdd2(
    root: Path,
    n_train_good: int = 3,
    n_train_defect: int = 2,
    n_test_good: int = 2,
    n_test_defect: int = 2,
    seed: int = 0,
) -> Path:
    """A KolektorSDD2 tree: ``train/`` and ``test/`` with ``<id>.png`` and ``<id>_GT.png`` (0/255).

    Ids interleave good and defective images, so a reader cannot tell them apart by name.
    """
    rng = np.random.default_rng(seed)
    k = 10000
    counts = (("train", n_train_good, n_train_defect), ("test", n_test_good, n_test_defect))
    for split, n_good, n_defect in counts:
        kinds = [False] * n_good + [True] * n_defect
        rng.shuffle(kinds)
        for defective in kinds:
            image = rng.integers(0, 256, size=(SIZE * 2, SIZE), dtype=np.uint8)
            gt = _mask(rng) if defective else np.zeros((SIZE, SIZE), np.uint8)
            _write(root / split / f"{k}.png", image)
            _write(root / split / f"{k}_GT.png", np.repeat(gt, 2, axis=0))
            k += 1
    return root


def ksdd2_truth(root: Path) -> dict[str, dict[str, bool]]:
    """{split: {stem: defective}} read back from the GT files (independent of the reader)."""
    return {
        split: {
            p.name[: -len("_GT.png")]: bool(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).any())
            for p in sorted((root / split).glob("*_GT.png"))
        }
        for split in ("train", "test")
    }


#: MPDD's categories and the defect folders of each in the published archive (MVTec AD layout).
MPDD_DEFECTS = {
    "bracket_black": ("hole", "scratches"),
    "bracket_brown": ("bend_and_parts_mismatch", "parts_mismatch"),
    "bracket_white": ("defective_painting", "scratches"),
    "connector": ("parts_mismatch",),
    "metal_plate": ("major_rust", "scratches", "total_rust"),
    "tubes": ("flattening",),
}


def make_mpdd(root: Path, categories: tuple[str, ...] = tuple(MPDD_DEFECTS), seed: int = 0) -> Path:
    """An MPDD tree: the MVTec AD layout with MPDD's category and defect folder names. Returns ``root``."""
    for i, cat in enumerate(categories):
        make_mvtec(root, categories=(cat,), n_train=2, n_good=1, defects=dict.fromkeys(MPDD_DEFECTS[cat], 1),
                   seed=seed + i)
    return root


#: BTAD's file extensions per category as published: (image extension, mask extension).
BTAD_EXTENSIONS = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}


def make_btad(
    root: Path,
    categories: tuple[str, ...] = tuple(BTAD_EXTENSIONS),
    n_train: int = 3,
    n_ok: int = 2,
    n_ko: int = 2,
    seed: int = 0,
) -> Path:
    """A BTAD tree: ``<NN>/train/ok``, ``<NN>/test/{ok,ko}``, ``<NN>/ground_truth/ko/<stem><mask ext>``.

    Each category uses its published extensions (:data:`BTAD_EXTENSIONS`); masks are 0/255. Returns ``root``.
    """
    rng = np.random.default_rng(seed)
    for cat in categories:
        image_ext, mask_ext = BTAD_EXTENSIONS[cat]
        for i in range(n_train):
            _write(root / cat / "train" / "ok" / f"{i:04d}{image_ext}", _image(rng))
        for i in range(n_ok):
            _write(root / cat / "test" / "ok" / f"{i:04d}{image_ext}", _image(rng))
        for i in range(n_ko):
            _write(root / cat / "test" / "ko" / f"{i:04d}{image_ext}", _image(rng))
            _write(root / cat / "ground_truth" / "ko" / f"{i:04d}{mask_ext}", _mask(rng))
    return root
