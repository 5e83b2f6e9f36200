"""Pixel F1-max, image AP, image F1-max (with their thresholds) against torchmetrics and a threshold loop;
skipped pixel metrics without pixel ground truth; the selection score's image fallback."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_average_precision, binary_precision_recall_curve

from cai.metrics import (
    AnomalyMetrics,
    image_ap,
    image_auroc,
    image_f1_max,
    image_scores,
    make_pro_benchmark_case,
    pixel_f1_max,
    selection_score,
)
from tests.metrics.test_auroc_ap import numpy_ap


def loop_f1_max(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Best F1 of ``scores >= t`` over every distinct score t, the highest t among equal bests."""
    best, best_t = -1.0, math.nan
    for t in np.unique(scores)[::-1]:
        predicted = scores >= t
        tp = np.count_nonzero(predicted & labels)
        f1 = 2 * tp / (predicted.sum() + labels.sum())
        if f1 > best:
            best, best_t = f1, float(t)
    return best, best_t


#: torchmetrics returns precision and recall as float32: agreement to its rounding, exactness by the loop.
TM_TOL = 1e-6


def torchmetrics_f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """F1-max from torchmetrics' exact precision-recall curve (thresholds=None: every distinct score)."""
    precision, recall, _ = binary_precision_recall_curve(torch.from_numpy(scores).double().flatten(),
                                                         torch.from_numpy(labels).long().flatten())
    f1 = torch.nan_to_num(2 * precision * recall / (precision + recall))
    return float(f1.max())


def _cases():
    rng = np.random.default_rng(3)
    for levels in (None, 4, 20):
        for density in (0.05, 0.4):
            labels = rng.random((3, 10, 12)) < density
            scores = rng.random(labels.shape) * 0.8 + labels * rng.uniform(0.0, 0.5)
            if levels is not None:
                scores = np.round(scores * levels) / levels  # ties within and across classes
            yield scores / 1.5, labels  # in [0, 1]: torchmetrics applies no sigmoid


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_pixel_f1_max_equals_the_threshold_loop_and_torchmetrics(backend):
    for scores, labels in _cases():
        got = pixel_f1_max(scores, labels, backend=backend)
        f1, threshold = loop_f1_max(scores.ravel(), labels.ravel())
        assert got.f1 == pytest.approx(f1, abs=1e-12) and got.threshold == threshold
        assert got.f1 == pytest.approx(torchmetrics_f1_max(scores, labels), abs=TM_TOL)
        predicted = scores >= got.threshold  # the threshold reaches the maximum
        assert 2 * np.count_nonzero(predicted & labels) / (predicted.sum() + labels.sum()) == pytest.approx(got.f1)


def test_image_ap_and_f1_max_equal_torchmetrics():
    rng = np.random.default_rng(5)
    for levels in (None, 5):
        labels = rng.random(40) < 0.6
        scores = rng.random(40) * 0.7 + labels * 0.3
        if levels is not None:
            scores = np.round(scores * levels) / levels
        ref_ap = float(binary_average_precision(torch.from_numpy(scores), torch.from_numpy(labels).long()))
        assert image_ap(scores, labels) == pytest.approx(ref_ap, abs=TM_TOL)
        assert image_ap(scores, labels) == pytest.approx(numpy_ap(scores, labels), abs=1e-12)
        got = image_f1_max(scores, labels)
        assert got.f1 == pytest.approx(torchmetrics_f1_max(scores, labels), abs=TM_TOL)
        assert (got.f1, got.threshold) == pytest.approx(loop_f1_max(scores, labels), abs=1e-12)


def test_undefined_cases_are_nan():
    assert math.isnan(image_ap([0.1, 0.2], [False, False]))
    assert math.isnan(image_f1_max([0.1, 0.2], [False, False]).f1)
    assert math.isnan(pixel_f1_max(np.zeros((4, 4)), np.zeros((4, 4), bool)).f1)
    assert image_ap([0.1, 0.2], [True, True]) == 1.0  # no normal image: every threshold is precise


def test_streaming_metrics_thresholds_equal_the_one_shot_functions():
    maps, masks = make_pro_benchmark_case(np.random.default_rng(7), n=8, size=40, regions=(0, 3), levels=None)
    metric = AnomalyMetrics(image_pool=5)
    for start in range(0, 8, 3):
        metric.update(maps[start : start + 3], masks[start : start + 3])
    ev = metric.evaluate()
    scores, labels = image_scores(maps, 5), masks.any(axis=(1, 2))
    pix, img = pixel_f1_max(maps, masks), image_f1_max(scores, labels)
    assert ev.metrics["pixel_f1_max"] == pytest.approx(pix.f1, abs=1e-12)
    assert ev.metrics["image_ap"] == pytest.approx(image_ap(scores, labels), abs=1e-12)
    assert ev.metrics["image_f1_max"] == pytest.approx(img.f1, abs=1e-12)
    assert ev.thresholds == {"pixel": pix.threshold, "image": img.threshold} and ev.skipped == {}
    assert metric.compute() == ev.metrics


def test_pixel_metrics_are_skipped_when_an_anomalous_image_has_no_mask():
    maps, masks = make_pro_benchmark_case(np.random.default_rng(8), n=6, size=32, regions=(1, 3), levels=None)
    masks[:2] = False  # two normal images
    labels = masks.any(axis=(1, 2))
    full = AnomalyMetrics(image_pool=5)
    full.update(maps, masks)
    complete = full.evaluate()
    metric = AnomalyMetrics(image_pool=5)
    has_mask = np.array([True, False, True, False, True, True])  # image 1 is normal: a missing mask is fine there
    placeholder = masks.copy()
    placeholder[3] = False  # the anomalous image 3 comes without its mask
    metric.update(maps, placeholder, labels=labels, has_mask=has_mask)
    ev = metric.evaluate()
    assert ev.skipped == {"pixel": "no ground-truth masks for 1 of 4 anomalous test images"} and ev.pixel_skipped
    assert all(math.isnan(ev.metrics[k]) for k in ("pixel_auroc", "pixel_ap", "pro", "pixel_f1_max"))
    for key in ("image_auroc", "image_ap", "image_f1_max"):  # image metrics need only the labels
        assert ev.metrics[key] == complete.metrics[key]
    assert ev.thresholds == {"pixel": None, "image": complete.thresholds["image"]}
    # a missing mask on a normal image only: nothing skipped
    normal_only = AnomalyMetrics(image_pool=5)
    normal_only.update(maps, masks, has_mask=[True, False, True, True, True, True])
    assert normal_only.evaluate().skipped == {}


def test_selection_score_falls_back_to_image_auroc_and_ap_without_pixel_metrics():
    metrics = {"image_auroc": 0.9, "image_ap": 0.8, "pixel_auroc": math.nan, "pixel_ap": math.nan, "pro": math.nan}
    assert selection_score(metrics) == pytest.approx(1.7)
    assert selection_score({**metrics, "pro": 0.5}) == pytest.approx(1.4)  # pixel metrics measured: the paper's sum
    assert image_auroc([0.1, 0.9], [False, True]) == 1.0


def test_pixel_f1_max_is_exact_on_a_full_size_test_set():
    """150 maps of 256 x 256 (the paper's size): one ranking, exact against torchmetrics' exact curve."""
    maps, masks = make_pro_benchmark_case(np.random.default_rng(0), n=150, size=256)
    metric = AnomalyMetrics()
    metric.update(maps, masks)
    ev = metric.evaluate()
    assert ev.metrics["pixel_f1_max"] == pytest.approx(torchmetrics_f1_max(maps, masks), abs=TM_TOL)
    predicted = maps >= ev.thresholds["pixel"]
    tp = np.count_nonzero(predicted & masks)
    assert 2 * tp / (predicted.sum() + masks.sum()) == pytest.approx(ev.metrics["pixel_f1_max"], abs=1e-12)
