"""Image grids for eyeballing synthesizers: rows of images, bool masks rendered white-on-black.

Any synthesizer's output can be shown with :func:`save_grid`, e.g. rows "normal", "pseudo anomaly",
"mask" for a few target images. Plain NumPy tiling (+ ``cv2.putText`` for row labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cai.errors import CaiError
from cai.io import list_images, read_image, resize_image, write_png
from cai.synth.base import SynthesisContext


def as_rgb(array: np.ndarray) -> np.ndarray:
    """RGB uint8 view of an image (H, W, 3), a grey image or a bool mask (True = white)."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array.astype(np.uint8))


def outline(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 0, 0)) -> np.ndarray:
    """``image`` with the contours of ``mask`` drawn on it (1 px)."""
    out = as_rgb(image).copy()
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, color, 1)
    return out


def tile(
    rows: Sequence[Sequence[np.ndarray]],
    labels: Sequence[str] | None = None,
    cell: int | None = None,
    pad: int = 2,
    label_width: int = 110,
) -> np.ndarray:
    """Tile ``rows`` of images into one RGB array; every cell is resized to ``cell``² (default: the
    first image's height) and row labels (if any) are written in a left margin."""
    if not rows or not rows[0]:
        raise ValueError("tile needs at least one image")
    size = cell or rows[0][0].shape[0]
    ncols = max(len(r) for r in rows)
    left = label_width if labels else 0
    height = len(rows) * (size + pad) + pad
    width = left + ncols * (size + pad) + pad
    canvas = np.full((height, width, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        y = pad + i * (size + pad)
        for j, img in enumerate(row):
            x = left + pad + j * (size + pad)
            canvas[y : y + size, x : x + size] = cv2.resize(
                as_rgb(img), (size, size), interpolation=cv2.INTER_NEAREST
            )
        if labels:
            cv2.putText(
                canvas,
                str(labels[i]),
                (4, y + size // 2),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.45,
                (0, 0, 0),
                1,
                cv2.LINE_AA,
            )
    return canvas


def save_grid(
    path: str | Path,
    rows: Sequence[Sequence[np.ndarray]],
    labels: Sequence[str] | None = None,
    cell: int | None = None,
    pad: int = 2,
) -> np.ndarray:
    """Tile ``rows`` (see :func:`tile`) and write the PNG atomically; returns the grid."""
    grid = tile(rows, labels=labels, cell=cell, pad=pad)
    write_png(path, grid)
    return grid


def grid_targets(cfg: Any) -> tuple[list[Path], SynthesisContext]:
    """The first ``cfg.n_images`` images of ``cfg.images_dir`` (their paths) at ``cfg.image_size`` with their
    foregrounds (``cfg.foreground``), as the synthesis context the grid scripts prepare every synthesizer with."""
    from hydra.utils import instantiate

    paths = list_images(Path(cfg.images_dir))[: cfg.n_images]
    if not paths:
        raise CaiError("No images found.", where=cfg.images_dir)
    images = [resize_image(read_image(p), cfg.image_size) for p in paths]
    foreground = instantiate(cfg.foreground)
    fgs = [foreground(im, cfg.is_texture) for im in images]
    return paths, SynthesisContext(cfg.dataset, cfg.category, cfg.is_texture, cfg.image_size,
                                   tuple(cfg.leakage_sources), images, fgs)
