"""Panels logged by runs: detector heat maps beside test images, and pseudo-anomaly samples.

Tiling lives in :mod:`cai.synth.grid`; this module only decides what goes in each panel.
"""

from __future__ import annotations

import cv2
import numpy as np

from cai.synth.grid import tile


def heat(anomaly_map: np.ndarray) -> np.ndarray:
    """Colour a [0, 1] map with the JET colour map as RGB uint8."""
    u8 = np.clip(anomaly_map * 255.0, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(u8, cv2.COLORMAP_JET)[:, :, ::-1]


def no_truth_tile(size: int) -> np.ndarray:
    """A grey tile crossed out: the ground-truth cell of an anomalous image that has no mask."""
    out = np.full((size, size, 3), 128, np.uint8)
    cv2.line(out, (0, 0), (size - 1, size - 1), (200, 200, 200), max(1, size // 64))
    cv2.line(out, (0, size - 1), (size - 1, 0), (200, 200, 200), max(1, size // 64))
    return out


def prediction_panel(images: np.ndarray, masks: np.ndarray, maps: np.ndarray, names: list[str] | None = None,
                     n: int = 6, labels: np.ndarray | None = None, has_mask: np.ndarray | None = None) -> np.ndarray:
    """Rows of (test image, ground truth, anomaly map in [0, 1], JET) for up to ``n`` test images,
    anomalous first (``labels``, default: a mask with an anomalous pixel); rows are labelled with the test
    image's name. An image whose ``has_mask`` is False shows a crossed-out grey ground-truth cell."""
    anomalous = masks.reshape(len(masks), -1).any(axis=1) if labels is None else np.asarray(labels, bool)
    order = np.argsort(~anomalous, kind="stable")[:n]
    known = np.ones(len(masks), bool) if has_mask is None else np.asarray(has_mask, bool)
    row_labels = [names[i][-16:] for i in order] if names else None
    return tile([[images[i], masks[i] if known[i] else no_truth_tile(masks.shape[1]), heat(maps[i])] for i in order],
                labels=row_labels)


def synthesis_panel(normals: list[np.ndarray], pseudo: np.ndarray, masks: np.ndarray, normal_index: list[int],
                    n: int = 6) -> np.ndarray:
    """Rows normal / pseudo anomaly / mask for the first pseudo anomaly of ``n`` normal images."""
    firsts: dict[int, int] = {}
    for k, i in enumerate(normal_index):
        if i not in firsts and masks[k].any():
            firsts[i] = k
    picks = list(firsts.items())[:n]
    if not picks:
        picks = [(normal_index[k], k) for k in range(min(n, len(pseudo)))]
    return tile([[normals[i] for i, _ in picks], [pseudo[k] for _, k in picks], [masks[k] for _, k in picks]],
                labels=["normal", "pseudo anomaly", "mask"])
