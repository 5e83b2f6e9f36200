"""The streaming AnomalyMetrics equals the one-shot functions; selection score."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cai.metrics import (
    AnomalyMetrics,
    anomaly_metrics,
    image_ap,
    image_auroc,
    image_f1_max,
    image_scores,
    make_pro_benchmark_case,
    pixel_ap,
    pixel_auroc,
    pixel_f1_max,
    pro_score,
    selection_score,
)


@pytest.fixture
def case():
    return make_pro_benchmark_case(np.random.default_rng(4), n=10, size=48, regions=(0, 4), levels=None)


def _one_shot(maps, masks, limit=0.3, pool=21):
    scores, labels = image_scores(maps, pool), masks.any(axis=(1, 2))
    return {
        "pixel_auroc": pixel_auroc(maps, masks),
        "pixel_ap": pixel_ap(maps, masks),
        "pro": pro_score(maps, masks, limit),
        "pixel_f1_max": pixel_f1_max(maps, masks).f1,
        "image_auroc": image_auroc(scores, labels),
        "image_ap": image_ap(scores, labels),
        "image_f1_max": image_f1_max(scores, labels).f1,
    }


def test_streaming_in_batches_equals_one_shot(case):
    maps, masks = case
    assert 0 < masks.any(axis=(1, 2)).sum() < len(masks)  # both normal and anomalous images
    metric = AnomalyMetrics()
    for start in range(0, 10, 3):  # uneven batches, one as torch with a channel axis
        batch_maps, batch_masks = maps[start : start + 3], masks[start : start + 3]
        if start == 3:
            batch_maps, batch_masks = torch.from_numpy(batch_maps)[:, None], torch.from_numpy(batch_masks)
        metric.update(batch_maps, batch_masks)
    got, expected = metric.compute(), _one_shot(maps, masks)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key
        assert 0.0 <= got[key] <= 1.0
    assert anomaly_metrics(maps, masks) == pytest.approx(got, abs=1e-12)
    assert metric.compute(backend="torch") == pytest.approx(got, abs=1e-12)  # the CUDA code path, on CPU


def test_options_are_passed_through(case):
    maps, masks = case
    metric = AnomalyMetrics(fpr_limit=0.05, image_pool=5)
    metric.update(maps, masks)
    expected = _one_shot(maps, masks, limit=0.05, pool=5)
    assert metric.compute() == pytest.approx(expected, abs=1e-9)


def test_maps_are_copied_as_float32(case):
    maps, masks = case
    maps64 = maps.astype(np.float64) + 1e-9  # differences below float32 resolution vanish on storage
    metric = AnomalyMetrics()
    metric.update(maps64, masks)
    maps64[:] = 0.0  # the caller reusing its buffer must not change what was stored
    assert metric.compute() == pytest.approx(_one_shot(maps, masks), abs=1e-9)


def test_reset_and_empty_compute(case):
    maps, masks = case
    metric = AnomalyMetrics()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    metric.update(np.zeros_like(maps), masks)
    metric.reset()
    metric.update(maps, masks)
    assert metric.compute() == pytest.approx(_one_shot(maps, masks), abs=1e-9)


def test_batches_of_different_image_sizes():
    a_maps, a_masks = make_pro_benchmark_case(np.random.default_rng(1), n=3, size=32, regions=(1, 3))
    b_maps, b_masks = make_pro_benchmark_case(np.random.default_rng(2), n=2, size=40, regions=(0, 3))
    metric = AnomalyMetrics()
    metric.update(a_maps, a_masks)
    metric.update(b_maps, b_masks)
    got = metric.compute()
    flat_maps = np.concatenate([a_maps.reshape(1, 1, -1), b_maps.reshape(1, 1, -1)], axis=2)
    flat_masks = np.concatenate([a_masks.reshape(1, 1, -1), b_masks.reshape(1, 1, -1)], axis=2)
    assert got["pixel_auroc"] == pytest.approx(pixel_auroc(flat_maps, flat_masks), abs=1e-12)
    assert got["pixel_ap"] == pytest.approx(pixel_ap(flat_maps, flat_masks), abs=1e-12)
    # PRO labels regions per image: compare with a threshold loop over the batches as they are
    assert got["pro"] == pytest.approx(_pro_of_parts([(a_maps, a_masks), (b_maps, b_masks)]), abs=1e-9)


def _pro_of_parts(parts):
    """Reference PRO over batches of different sizes (as pro_score_reference, images kept apart)."""
    from skimage.measure import label, regionprops

    flat = np.concatenate([m.ravel() for m, _ in parts]).astype(np.float64)
    normal = np.concatenate([~k.ravel() for _, k in parts])
    regions, offset = [], 0
    for _, k in parts:
        for i, gt in enumerate(k):
            for prop in regionprops(label(gt, connectivity=2)):
                idx = np.ravel_multi_index((np.full(len(prop.coords), i), *prop.coords.T), k.shape)
                regions.append(idx + offset)
        offset += k.size
    fprs, pros = [0.0], [0.0]
    for t in np.unique(flat)[::-1]:
        pred = flat >= t
        fprs.append(np.count_nonzero(pred & normal) / normal.sum())
        pros.append(np.mean([pred[r].mean() for r in regions]))
    x, y = np.array(fprs + [1.0]), np.array(pros + [1.0])
    ins = int(np.searchsorted(x, 0.3, side="right"))
    y_lim = y[ins - 1] + (y[ins] - y[ins - 1]) * (0.3 - x[ins - 1]) / (x[ins] - x[ins - 1])
    area = np.trapezoid(y[:ins], x[:ins]) + 0.5 * (y_lim + y[ins - 1]) * (0.3 - x[ins - 1])
    return area / 0.3


def test_selection_score_sums_the_four_and_treats_nan_as_zero():
    metrics = {"image_auroc": 0.9, "pixel_auroc": 0.95, "pixel_ap": 0.5, "pro": 0.8, "other": 7.0}
    assert selection_score(metrics) == pytest.approx(3.15)
    assert selection_score({**metrics, "image_auroc": math.nan}) == pytest.approx(2.25)
    with pytest.raises(KeyError):
        selection_score({"pro": 1.0})
