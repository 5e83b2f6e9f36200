"""Fixtures for the CAI tests: a tiny anomaly bank on disk, targets, and config composition."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from omegaconf import DictConfig

from cai.io import write_png
from cai.synth.base import SynthesisContext
from cai.synth.cai import CAISynthesizer

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
TARGET = 128  # target side in these tests (s_f = 128 for a full foreground)

# (name, anomaly class, source, longest side of the anomaly's box): with s_f = 128 the STRs are
# 0.94 (large), 0.47 (medium), 0.20 (small) and 0.06 (trivial).
BANK_SPEC = (
    ("big", "crack", "dagm", 120),
    ("mid", "stain", "dagm", 60),
    ("low", "scratch", "btad", 26),
    ("tiny", "pits", "btad", 8),
)


def _source_image(rng: np.random.Generator, side: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth light texture with a dark, strongly textured anomaly whose box is size x size//2."""
    base = cv2.GaussianBlur(rng.integers(150, 230, (side, side, 3), dtype=np.uint8), (0, 0), 3)
    mask = np.zeros((side, side), np.uint8)
    top, left = (side - size) // 2, (side - size // 2) // 2
    cv2.ellipse(
        mask,
        (left + size // 4, top + size // 2),
        (max(size // 4 - 1, 1), max(size // 2 - 1, 1)),
        0,
        0,
        360,
        1,
        -1,
    )
    mask[top, left + size // 4] = mask[top + size - 1, left + size // 4] = 1  # box exactly size tall
    dark = rng.integers(0, 70, (side, side, 3), dtype=np.uint8)
    image = np.where(mask[:, :, None] > 0, dark, base)
    return image, mask > 0


def write_bank(root: Path, spec: Sequence[tuple[str, str, str, int]] = BANK_SPEC, seed: int = 0) -> Path:
    """Write a daad_mini-style bank (``<class>/<source>_<name>.png`` + mask + manifest.csv)."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, cls, source, size in spec:
        image, mask = _source_image(rng, max(160, size + 20), size)
        img_rel = f"{cls}/{source}_{name}.png"
        mask_rel = f"{cls}/{source}_{name}_mask.png"
        write_png(root / img_rel, image)
        write_png(root / mask_rel, mask)
        rows.append([img_rel, mask_rel, cls, source, "test", *image.shape[:2], round(mask.mean(), 6)])
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["image", "mask", "anomaly_class", "source", "license_note", "height", "width", "mask_area_frac"]
        )
        w.writerows(rows)
    return root / "manifest.csv"


@pytest.fixture
def bank_manifest(tmp_path: Path) -> Path:
    return write_bank(tmp_path / "bank")


def target_image(seed: int = 0, size: int = TARGET) -> np.ndarray:
    """A smooth, lightly textured target (so Poisson editing has something to blend into)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([90 + 0.4 * x, 110 + 0.3 * y, 100 + 0.2 * (x + y)], axis=2)
    noise = cv2.GaussianBlur(rng.normal(0, 6, (size, size, 3)), (0, 0), 1.5)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def disc(size: int = TARGET, radius: int = 45, centre: tuple[int, int] | None = None) -> np.ndarray:
    cy, cx = centre or (size // 2, size // 2)
    y, x = np.mgrid[0:size, 0:size]
    return (y - cy) ** 2 + (x - cx) ** 2 <= radius**2


_PRIMARY = "_cai_test_primary"


def compose_cai(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose conf/ with the groups the lead's main config selects (daad, ablation, scale, synthesizer)."""
    ConfigStore.instance().store(
        name=_PRIMARY,
        node={
            "defaults": [
                "_self_",
                {"daad": "daad_mini"},
                {"ablation": "full"},
                {"scale": "balanced"},
                {"synthesizer": "cai_n"},
            ],
            "paths": {"shared_data_dir": str(REPO.parent / "shared" / "data"), "cache_dir": "/nonexistent"},
        },
    )
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=_PRIMARY, overrides=list(overrides))


def make_cai(
    manifest: Path | None,
    overrides: Sequence[str] = (),
    leakage: Sequence[str] = (),
    groups: dict[str, str] | None = None,
) -> CAISynthesizer:
    """Instantiate a CAI synthesizer from the real configs, with ``manifest`` as its bank, prepared."""
    ov = list(overrides)
    if manifest is not None:
        ov += [f"daad.manifest={manifest}"]
        mapping = groups or {
            "dagm": "existing_datasets",
            "btad": "online_search",
            "mvtec": "existing_datasets",
        }
        ov += [f"++daad.source_group_of.{k}={v}" for k, v in mapping.items()]
    cfg = compose_cai(ov)
    syn = instantiate(cfg.synthesizer.params)
    syn.prepare(SynthesisContext("test", "cat", False, TARGET, leakage_sources=tuple(leakage)))
    return syn
