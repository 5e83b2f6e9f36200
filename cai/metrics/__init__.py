"""Evaluation metrics: pixel AUROC, AP, PRO (AU-PRO to FPR 0.3), F1-max; image AUROC, AP, F1-max; selection."""

from cai.metrics.pixel import (
    PIXEL_METRICS,
    AnomalyMetrics,
    Evaluation,
    F1Max,
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
    pro_score_reference,
    selection_score,
)

__all__ = [
    "PIXEL_METRICS",
    "AnomalyMetrics",
    "Evaluation",
    "F1Max",
    "anomaly_metrics",
    "image_ap",
    "image_auroc",
    "image_f1_max",
    "image_scores",
    "make_pro_benchmark_case",
    "pixel_ap",
    "pixel_auroc",
    "pixel_f1_max",
    "pro_score",
    "pro_score_reference",
    "selection_score",
]
