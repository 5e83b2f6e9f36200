"""Evaluation metrics of the paper's protocol: pixel AUROC, pixel AP, PRO (AU-PRO up to FPR 0.3), image AUROC;
beside them the ones users of anomalib / GLASS / DRAEM compare with: pixel F1-max, image AP, image F1-max.

All pixel metrics are exact (every distinct score is a threshold, ties handled as the standard
definitions do) and share one ranking of the pixels:

* the scores of the *normal* pixels are sorted once (values only);
* the *anomalous* pixels are sorted with their weights and grouped into distinct scores ``v``;
* ``searchsorted`` gives, for every such ``v``, the number of normal pixels scoring ``>= v`` and ``> v``.

**PRO** follows the MVTec AD evaluation code (``compute_pro`` + ``trapezoid``): connected components of
every ground-truth map with 8-connectivity (scipy, none across images; sizes by ``bincount``); every
normal pixel adds 1 false positive, every pixel of region ``k`` adds ``1/|k|`` overlap; with the scores
sorted in descending order FPR = cumsum(fp) / #normal and PRO = cumsum(overlap) / #regions, keeping the
last point of tied scores; (0, 0) is prepended and (1, 1) appended; the curve is integrated with the
trapezoid rule up to ``fpr_limit`` (the end point interpolated) and divided by ``fpr_limit`` -- never by
the last FPR reached (anomalib <= 2.2's bug, which could exceed 1).

The vertices kept here are those where that curve can change direction: between two distinct anomalous
scores only normal pixels enter, so the curve runs horizontally and its intermediate vertices add no
area; each anomalous score group is entered at ``(#normal > v, overlap > v)`` and left at
``(#normal >= v, overlap >= v)`` (a diagonal when normal pixels tie with it). :func:`pro_score` ranks
only the pixels scoring at least a floor that more than ``limit * #normal`` normal pixels reach: every
curve point with FPR <= limit is among them, and so is the segment crossing the limit.
:func:`pro_score_reference` recomputes the curve threshold by threshold and region by region.

Inputs are numpy arrays or torch tensors: anomaly maps (N, H, W) (also (H, W) or (N, 1, H, W)) of real
scores, masks of the same shape (bool, or 0/1 values). Ranking runs in NumPy for CPU data (faster there
than torch) and in torch on the tensors' device otherwise (a CUDA tensor is sorted on the GPU);
``backend="torch"`` forces the torch code on any device. Connected components are labelled on the CPU.
Higher score = more anomalous. NaN scores are rejected; +-inf are ordinary (extreme) scores.

**F1-max** is the best F1 over every threshold (a pixel or image is predicted anomalous when its score is
``>= t``), exact, not binned: between two distinct anomalous scores only normal pixels enter, so F1 can
only fall there and its maximum is reached at an anomalous score ``v`` with ``tp = #anomalous >= v``,
``fp = #normal >= v`` and ``F1 = 2 tp / (tp + fp + #anomalous)`` -- read off the same ranking. The
threshold reported with it is that ``v`` (the highest one when several reach the maximum).

Undefined cases return ``nan``: PRO without anomalous or without normal pixels, AUROC without both
classes, AP and F1-max without anomalous pixels (AP without normal pixels is 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

ArrayLike = np.ndarray | torch.Tensor
Backend = Literal["auto", "numpy", "torch"]

# 8-connectivity inside each image, none across images: one scipy call labels a whole (N, H, W) stack.
_STACK_8_CONNECTIVITY = np.zeros((3, 3, 3), dtype=bool)
_STACK_8_CONNECTIVITY[1] = True

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


# --------------------------------------------------------------------------------------------- inputs


def _as_tensor(x: ArrayLike | Sequence) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x)))


def _as_maps(anomaly_maps: ArrayLike) -> torch.Tensor:
    """Anomaly maps as an (N, H, W) real tensor on their own device (float16 widened, ints to float64)."""
    t = _as_tensor(anomaly_maps)
    if t.ndim == 2:
        t = t[None]
    elif t.ndim == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 3:
        raise ValueError(f"anomaly maps must be (N, H, W), (H, W) or (N, 1, H, W); got {tuple(t.shape)}")
    if t.is_complex():
        raise ValueError("anomaly maps must be real")
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    elif not t.is_floating_point():
        t = t.double()
    has_nan = np.isnan(t.numpy()).any() if t.device.type == "cpu" else torch.isnan(t).any()
    if has_nan:
        raise ValueError("anomaly maps contain NaN")
    return t


def _as_masks(masks: ArrayLike, shape: torch.Size) -> np.ndarray:
    """Ground-truth masks as a bool (N, H, W) numpy array on the CPU, checked against the maps' shape."""
    m = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if m.ndim == 2:
        m = m[None]
    elif m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.shape != tuple(shape):
        raise ValueError(f"masks have shape {m.shape}, anomaly maps {tuple(shape)}")
    if m.dtype != np.bool_:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("masks must be bool or contain only 0 and 1 (binarise them first)")
        m = m.astype(bool)
    return m


def _check_limit(fpr_limit: float) -> float:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return float(fpr_limit)


def _label_regions(masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """Connected components (8-connectivity) of every (H, W) mask of every batch, flattened.

    Returns int32 labels (0 = normal pixel, region ids 1.. unique over all batches), the pixel count of
    every label (index 0: normal pixels) and the number of regions.
    """
    flat, n_regions = [], 0
    for batch in masks:
        labels, n = ndimage.label(batch, structure=_STACK_8_CONNECTIVITY, output=np.int32)
        if n_regions:
            np.add(labels, n_regions, out=labels, where=labels > 0)
        flat.append(labels.reshape(-1))
        n_regions += int(n)
    labels = flat[0] if len(flat) == 1 else np.concatenate(flat)
    return labels, np.bincount(labels, minlength=n_regions + 1), n_regions


# --------------------------------------------------------------------------------------------- ranking


class _NumpyOps:
    """The few array operations the ranking needs, on NumPy (the faster choice on a CPU)."""

    @staticmethod
    def array(a: np.ndarray, like: np.ndarray) -> np.ndarray:
        return a

    @staticmethod
    def sort(x: np.ndarray) -> np.ndarray:
        return np.sort(x)

    @staticmethod
    def sort_descending(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(x)[::-1]
        return x[order], order

    @staticmethod
    def kth_largest(x: np.ndarray, k: int):
        return np.partition(x, x.size - k)[x.size - k]

    @staticmethod
    def last_of_ties(x: np.ndarray) -> np.ndarray:
        last = np.ones(x.shape, dtype=bool)
        last[:-1] = x[1:] != x[:-1]
        return last

    @staticmethod
    def nonzero(x: np.ndarray) -> np.ndarray:
        return np.flatnonzero(x)

    @staticmethod
    def cumsum(x: np.ndarray) -> np.ndarray:
        return np.cumsum(x, dtype=np.float64)

    @staticmethod
    def searchsorted(a: np.ndarray, v: np.ndarray, right: bool = False) -> np.ndarray:
        return np.searchsorted(a, v, side="right" if right else "left")

    @staticmethod
    def prepend_zero(x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros(1, x.dtype), x])

    @staticmethod
    def interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.stack([a, b], 1).reshape(-1).astype(np.float64)

    @staticmethod
    def float64(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64)

    @staticmethod
    def numpy(x: np.ndarray) -> np.ndarray:
        return x


class _TorchOps:
    """The same operations in torch, on the tensors' device (a CUDA tensor is sorted on the GPU)."""

    @staticmethod
    def array(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(a).to(like.device)

    @staticmethod
    def sort(x: torch.Tensor) -> torch.Tensor:
        return torch.sort(x).values

    @staticmethod
    def sort_descending(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.sort(x, descending=True)

    @staticmethod
    def kth_largest(x: torch.Tensor, k: int):
        return torch.kthvalue(x, x.numel() - k + 1).values

    @staticmethod
    def last_of_ties(x: torch.Tensor) -> torch.Tensor:
        last = torch.ones_like(x, dtype=torch.bool)
        last[:-1] = x[1:] != x[:-1]
        return last

    @staticmethod
    def nonzero(x: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(x).squeeze(1)

    @staticmethod
    def cumsum(x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, 0, dtype=torch.float64)

    @staticmethod
    def searchsorted(a: torch.Tensor, v: torch.Tensor, right: bool = False) -> torch.Tensor:
        return torch.searchsorted(a, v, right=right)

    @staticmethod
    def prepend_zero(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.new_zeros(1), x])

    @staticmethod
    def interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.stack([a, b], 1).reshape(-1).to(torch.float64)

    @staticmethod
    def float64(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64)

    @staticmethod
    def numpy(x: torch.Tensor) -> np.ndarray:
        return x.cpu().numpy()


_Ops = type[_NumpyOps] | type[_TorchOps]


def _ops_for(maps: torch.Tensor, backend: Backend) -> _Ops:
    """NumPy on the CPU ("auto" with CPU maps, or "numpy"); torch on the maps' device otherwise."""
    if backend not in ("auto", "numpy", "torch"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'torch', got {backend!r}")
    if backend == "torch" or (backend == "auto" and maps.device.type != "cpu"):
        return _TorchOps
    return _NumpyOps


@dataclass
class _Ranking:
    """Distinct anomalous scores (descending) with cumulative counts, and the sorted normal scores.

    Only pixels scoring >= the ranking's floor are ranked, so ``normal_sorted`` may miss low normal
    scores, but every count taken at a value in ``values`` is exact.
    """

    ops: _Ops
    n_normal: int  # all normal pixels, not only those above the floor
    n_anomalous: int
    values: ArrayLike  # distinct anomalous scores, descending
    anomalous_ge: ArrayLike  # int: anomalous pixels scoring >= value
    overlap_ge: ArrayLike | None  # float64: sum of 1/|region| over anomalous pixels scoring >= value
    normal_sorted: ArrayLike  # ascending

    def normal_ge(self) -> ArrayLike:
        return len(self.normal_sorted) - self.ops.searchsorted(self.normal_sorted, self.values)

    def normal_gt(self) -> ArrayLike:
        return len(self.normal_sorted) - self.ops.searchsorted(self.normal_sorted, self.values, right=True)


def _rank(
    ops: _Ops,
    scores: ArrayLike,
    labels: ArrayLike,
    counts: np.ndarray,
    with_overlap: bool = False,
    floor: ArrayLike | None = None,
) -> _Ranking:
    """Rank flat ``scores``; ``labels`` is 0 for a normal pixel, else its region id; ``counts[i]`` the
    number of pixels labelled i. With ``floor``, pixels scoring below it are left out."""
    if floor is not None:
        keep = scores >= floor
        scores, labels = scores[keep], labels[keep]
    normal = labels == 0
    normal_sorted = ops.sort(scores[normal])
    anomalous = ~normal
    anomalous_sorted, order = ops.sort_descending(scores[anomalous])
    ends = ops.nonzero(ops.last_of_ties(anomalous_sorted))
    overlap_ge = None
    if with_overlap:
        inverse_sizes = ops.array(1.0 / np.maximum(counts, 1), like=scores)
        overlap_ge = ops.cumsum(inverse_sizes[labels[anomalous][order]])[ends]
    return _Ranking(
        ops=ops,
        n_normal=int(counts[0]),
        n_anomalous=int(counts[1:].sum()),
        values=anomalous_sorted[ends],
        anomalous_ge=ends + 1,
        overlap_ge=overlap_ge,
        normal_sorted=normal_sorted,
    )


def _area_to_limit(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under (x, y) (x ascending) up to ``limit``, the end point interpolated (as MVTec)."""
    ins = int(np.searchsorted(x, limit, side="right"))  # x[ins - 1] <= limit < x[ins]
    area = float(np.sum((x[1:ins] - x[: ins - 1]) * (y[1:ins] + y[: ins - 1]))) / 2
    if ins < len(x):
        x0, y0, x1, y1 = x[ins - 1], y[ins - 1], x[ins], y[ins]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += (limit - x0) * (y0 + y_limit) / 2
    return area


def _pro_from_ranking(r: _Ranking, n_regions: int, limit: float) -> float:
    if r.n_normal == 0 or n_regions == 0:
        return math.nan
    assert r.overlap_ge is not None
    ops = r.ops
    # each distinct anomalous score is entered at (#normal > v, overlap > v), left at (>= v, >= v)
    fpr = ops.numpy(ops.interleave(r.normal_gt(), r.normal_ge())) / r.n_normal
    pro = ops.numpy(ops.interleave(ops.prepend_zero(r.overlap_ge)[:-1], r.overlap_ge)) / n_regions
    # after the last distinct score ranked the curve runs horizontally (at least) to the limit
    pro_last = pro[-1:] if len(pro) else [0.0]
    fpr = np.concatenate([[0.0], fpr, [1.0, 1.0]]).clip(max=1.0)
    pro = np.concatenate([[0.0], pro, pro_last, [1.0]]).clip(max=1.0)
    return _area_to_limit(fpr, pro, limit) / limit


def _auroc_from_ranking(r: _Ranking) -> float:
    """P(anomalous > normal) + P(tie) / 2 -- the trapezoid ROC area with tied scores as diagonals."""
    if r.n_normal == 0 or r.n_anomalous == 0:
        return math.nan
    count = r.anomalous_ge - r.ops.prepend_zero(r.anomalous_ge)[:-1]
    ge, gt = r.normal_ge(), r.normal_gt()
    twice_wins = 2 * (r.n_normal - ge) + (ge - gt)  # normal pixels below v count 2, tied ones 1
    return float((count * twice_wins).sum()) / (2.0 * r.n_anomalous * r.n_normal)


def _ap_from_ranking(r: _Ranking) -> float:
    """Sum over distinct thresholds of (recall step) x precision, as sklearn/torchmetrics define AP."""
    if r.n_anomalous == 0:
        return math.nan
    count = r.anomalous_ge - r.ops.prepend_zero(r.anomalous_ge)[:-1]
    tp = r.ops.float64(r.anomalous_ge)
    precision = tp / (tp + r.normal_ge())
    return float((count * precision).sum()) / r.n_anomalous


class F1Max(NamedTuple):
    """The best F1 over all thresholds and the threshold reaching it (score >= threshold: anomalous)."""

    f1: float
    threshold: float


def _f1_max_from_ranking(r: _Ranking) -> F1Max:
    """Exact F1-max: the maximum is at a distinct anomalous score (see the module docstring)."""
    if r.n_anomalous == 0:
        return F1Max(math.nan, math.nan)
    ops = r.ops
    tp = ops.float64(r.anomalous_ge)
    f1 = ops.numpy(2.0 * tp / (tp + r.normal_ge() + r.n_anomalous))
    best = int(np.argmax(f1))  # the first maximum: the highest threshold reaching it
    return F1Max(float(f1[best]), float(ops.numpy(r.values[best : best + 1])[0]))


def _flatten(ops: _Ops, maps: Sequence[torch.Tensor], device: torch.device | None = None) -> ArrayLike:
    if ops is _NumpyOps:
        flat = [m.cpu().numpy().reshape(-1) for m in maps]
        return flat[0] if len(flat) == 1 else np.concatenate(flat)
    return torch.cat([m.reshape(-1).to(device or m.device) for m in maps])


# --------------------------------------------------------------------------------------------- public


def pro_score(
    anomaly_maps: ArrayLike, masks: ArrayLike, fpr_limit: float = 0.3, *, backend: Backend = "auto"
) -> float:
    """Exact PRO: area under the per-region-overlap curve up to FPR ``fpr_limit``, divided by it.

    As the MVTec AD evaluation code computes it (see the module docstring); a perfect detector scores 1.
    Returns nan when there is no anomalous pixel or no normal pixel. ``backend``: "auto" ranks CUDA
    tensors with torch on their device and everything else with NumPy; "torch"/"numpy" force one.
    """
    limit = _check_limit(fpr_limit)
    maps = _as_maps(anomaly_maps)
    ops = _ops_for(maps, backend)
    labels, counts, n_regions = _label_regions([_as_masks(masks, maps.shape)])
    n_normal = int(counts[0])
    if n_normal == 0 or n_regions == 0:
        return math.nan
    scores = _flatten(ops, [maps])
    labels = ops.array(labels, like=scores)
    k = math.floor(Fraction(limit) * n_normal)  # k / n_normal <= limit < (k + 1) / n_normal
    floor = _pro_floor(ops, scores[labels == 0], k) if k < n_normal else None
    ranking = _rank(ops, scores, labels, counts, with_overlap=True, floor=floor)
    return _pro_from_ranking(ranking, n_regions, limit)


def _pro_floor(ops: _Ops, normal_scores: ArrayLike, k: int) -> ArrayLike:
    """A score with at least k + 1 normal scores >= it, close to the (k + 1)-th highest.

    Ranking only the pixels scoring >= such a floor keeps every PRO curve point with FPR <= limit and
    the segment crossing the limit: the first anomalous score below the floor comes after more than k
    normal pixels, i.e. beyond the limit. A strided sample gives a candidate a little below the
    (k + 1)-th highest score; it is used only when the count confirms it, otherwise the exact order
    statistic is taken. Either way the result is exact; the sample only saves a full selection.
    """
    n = len(normal_scores)
    step = n // 65_536
    if step >= 8:
        sample = normal_scores[::step]
        rank = min(len(sample), (k + 1) // step + (k + 1) // (20 * step) + 64)  # 5 % + 64 slack
        candidate = ops.kth_largest(sample, rank)
        if int((normal_scores >= candidate).sum()) >= k + 1:
            return candidate
    return ops.kth_largest(normal_scores, k + 1)


def _binary_ranking(anomaly_maps: ArrayLike, masks: ArrayLike, backend: Backend) -> _Ranking:
    maps = _as_maps(anomaly_maps)
    mask = _as_masks(masks, maps.shape).reshape(-1)
    ops = _ops_for(maps, backend)
    scores = _flatten(ops, [maps])
    counts = np.array([mask.size - np.count_nonzero(mask), np.count_nonzero(mask)])
    return _rank(ops, scores, ops.array(mask.view(np.uint8), like=scores), counts)


def pixel_auroc(anomaly_maps: ArrayLike, masks: ArrayLike, *, backend: Backend = "auto") -> float:
    """Exact pixel-level ROC AUC (ties count 1/2); nan unless both classes are present."""
    return _auroc_from_ranking(_binary_ranking(anomaly_maps, masks, backend))


def pixel_ap(anomaly_maps: ArrayLike, masks: ArrayLike, *, backend: Backend = "auto") -> float:
    """Exact pixel-level average precision (sklearn's step definition); nan without anomalous pixels."""
    return _ap_from_ranking(_binary_ranking(anomaly_maps, masks, backend))


def pixel_f1_max(anomaly_maps: ArrayLike, masks: ArrayLike, *, backend: Backend = "auto") -> F1Max:
    """Exact pixel-level F1-max and its threshold (every distinct score tried); nan without anomalous pixels."""
    return _f1_max_from_ranking(_binary_ranking(anomaly_maps, masks, backend))


def image_scores(anomaly_maps: ArrayLike, pool: int = 21) -> np.ndarray:
    """Image scores as DRAEM/AnomalyDiffusion compute them: max of the ``pool`` x ``pool`` average-pooled map.

    ``avg_pool2d(map, pool, stride=1, padding=pool // 2)`` (zero padding counted, as theirs) then the max;
    ``pool=1`` is the plain maximum. Computed separably (rows, then columns) in float64 on the maps'
    device -- the same window means, 20x cheaper than the 2-D pool; returns a float64 array (N,).
    """
    if pool < 1 or pool % 2 == 0:
        raise ValueError(f"pool must be a positive odd size, got {pool}")
    x = _as_maps(anomaly_maps)[:, None].to(torch.float64)
    if pool > 1:
        x = F.avg_pool2d(x, (pool, 1), stride=1, padding=(pool // 2, 0))
        x = F.avg_pool2d(x, (1, pool), stride=1, padding=(0, pool // 2))
    return x.amax(dim=(1, 2, 3)).cpu().numpy()


def _image_ranking(scores: ArrayLike | Sequence[float], labels: ArrayLike | Sequence[bool]) -> _Ranking:
    s = _as_tensor(scores).reshape(-1).cpu().numpy().astype(np.float64)
    lab = _as_tensor(labels).reshape(-1).cpu().numpy()
    if np.isnan(s).any():
        raise ValueError("image scores contain NaN")
    if lab.shape != s.shape:
        raise ValueError(f"{lab.size} labels for {s.size} scores")
    if lab.dtype != np.bool_ and not np.isin(lab, (0, 1)).all():
        raise ValueError("image labels must be bool or 0/1")
    lab = lab.astype(np.uint8)
    counts = np.array([lab.size - np.count_nonzero(lab), np.count_nonzero(lab)])
    return _rank(_NumpyOps, s, lab, counts)


def image_auroc(scores: ArrayLike | Sequence[float], labels: ArrayLike | Sequence[bool]) -> float:
    """Exact image-level ROC AUC of per-image ``scores`` against ``labels`` (True/1 = anomalous)."""
    return _auroc_from_ranking(_image_ranking(scores, labels))


def image_ap(scores: ArrayLike | Sequence[float], labels: ArrayLike | Sequence[bool]) -> float:
    """Exact image-level average precision (sklearn's step definition); nan without anomalous images."""
    return _ap_from_ranking(_image_ranking(scores, labels))


def image_f1_max(scores: ArrayLike | Sequence[float], labels: ArrayLike | Sequence[bool]) -> F1Max:
    """Exact image-level F1-max and its threshold on the image scores; nan without anomalous images."""
    return _f1_max_from_ranking(_image_ranking(scores, labels))


#: The metrics that need pixel ground truth: skipped (nan) when an anomalous test image has no mask.
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pro", "pixel_f1_max")


def selection_score(metrics: Mapping[str, float]) -> float:
    """AnomalyDiffusion's model-selection score: AUROC-I + AUROC-P + AP-P + PRO, a NaN counting as 0.

    Without pixel ground truth (pixel AUROC, AP and PRO all nan, e.g. skipped by :class:`AnomalyMetrics`
    because test defects have no masks) the score is image AUROC + image AP instead, so the epoch is still
    chosen on what can be measured rather than on image AUROC alone."""
    keys: tuple[str, ...] = ("image_auroc", "pixel_auroc", "pixel_ap", "pro")
    if all(math.isnan(float(metrics[k])) for k in keys[1:]):
        keys = ("image_auroc", "image_ap")
    return float(sum(0.0 if math.isnan(v) else float(v) for v in (metrics[k] for k in keys)))


@dataclass
class Evaluation:
    """What :meth:`AnomalyMetrics.evaluate` finds: the metrics, the F1-max thresholds and what was skipped.

    ``thresholds``: ``{"pixel": t, "image": t}``, the scores at which pixel / image F1 is maximal (None when
    undefined or skipped); ``skipped``: metric family -> reason, e.g. ``{"pixel": "no ground-truth masks
    for 3 of 5 anomalous test images"}``."""

    metrics: dict[str, float]
    thresholds: dict[str, float | None] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def pixel_skipped(self) -> bool:
        return "pixel" in self.skipped


def _threshold(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


class AnomalyMetrics:
    """Streaming evaluation (torchmetrics-style ``update``/``compute``/``reset``), no distributed sync.

    ``update`` copies each batch to the CPU as float32 maps and bool masks (exact: nothing is quantised);
    ``compute`` ranks all pixels once and returns ``pixel_auroc``, ``pixel_ap``, ``pro`` (up to
    ``fpr_limit``), ``pixel_f1_max``, and ``image_auroc``, ``image_ap``, ``image_f1_max`` (image score:
    the one given to ``update`` -- a detector with its own image score, e.g. HeadCLIP's joint score --, else
    :func:`image_scores` with ``image_pool``; ``image_pool=None``: every batch must bring its scores; image
    label: the one given to ``update``, else the mask has an anomalous pixel). :meth:`evaluate` adds the
    F1-max thresholds and what was skipped: the pixel metrics need a ground-truth mask for every anomalous
    image (``has_mask``), else they are nan and skipped with the reason. ``device``: "cpu" ranks with NumPy,
    a CUDA device with torch on it. Batches may differ in image size.
    """

    def __init__(self, fpr_limit: float = 0.3, image_pool: int | None = 21, device: str | torch.device = "cpu"):
        if image_pool is not None and (image_pool < 1 or image_pool % 2 == 0):
            raise ValueError(f"image_pool must be a positive odd size (or None), got {image_pool}")
        self.fpr_limit = _check_limit(fpr_limit)
        self.image_pool = image_pool
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        self._maps: list[torch.Tensor] = []
        self._masks: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._has_mask: list[np.ndarray] = []
        self._scores: list[np.ndarray | None] = []

    def update(self, anomaly_maps: ArrayLike, masks: ArrayLike, labels: ArrayLike | None = None,
               has_mask: ArrayLike | None = None, scores: ArrayLike | None = None) -> None:
        """Add a batch: maps (B, H, W) or (B, 1, H, W), masks of the same shape, optional image labels
        (B,) (e.g. from the original-size masks, so a defect lost in resizing still counts); default:
        the mask has an anomalous pixel. ``has_mask`` (B,) False marks an image without pixel ground truth
        (its mask is then ignored; default: every image has one). Optional image ``scores`` (B,): the
        detector's own image scores; default: :func:`image_scores` of the maps."""
        maps = _as_maps(anomaly_maps)
        mask = _as_masks(masks, maps.shape)
        if labels is None:
            label = mask.reshape(len(mask), -1).any(axis=1)
        else:
            label = _per_image(labels, len(mask), "image labels")
        known = np.ones(len(mask), bool) if has_mask is None else _per_image(has_mask, len(mask), "has_mask flags")
        self._maps.append(maps.to(device="cpu", dtype=torch.float32, copy=True))
        self._masks.append(mask.copy())
        self._labels.append(label)
        self._has_mask.append(known)
        if scores is not None:
            score = _as_tensor(scores).reshape(-1).cpu().numpy().astype(np.float64)
            if len(score) != len(mask):
                raise ValueError(f"{len(score)} image scores for {len(mask)} masks")
            self._scores.append(score)
        else:
            self._scores.append(None)

    def compute(self, backend: Backend = "auto") -> dict[str, float]:
        """The seven metrics over everything added since the last reset (``backend`` as in pro_score)."""
        return self.evaluate(backend).metrics

    def evaluate(self, backend: Backend = "auto") -> Evaluation:
        """The metrics, their F1-max thresholds and the skipped metric families (see the class docstring)."""
        if not self._maps:
            raise ValueError("AnomalyMetrics.compute() called before any update()")
        if self.image_pool is None and any(s is None for s in self._scores):
            raise ValueError("image_pool=None: the detector scores images itself, but a batch came without scores")
        img_scores = np.concatenate([image_scores(m.to(self.device), self.image_pool) if s is None else s
                                     for m, s in zip(self._maps, self._scores, strict=True)])
        img_labels = np.concatenate(self._labels)
        img_ranking = _image_ranking(img_scores, img_labels)
        img_f1 = _f1_max_from_ranking(img_ranking)
        metrics = dict.fromkeys(PIXEL_METRICS, math.nan)
        thresholds: dict[str, float | None] = {"pixel": None, "image": _threshold(img_f1.threshold)}
        skipped: dict[str, str] = {}
        no_gt = int(np.count_nonzero(img_labels & ~np.concatenate(self._has_mask)))
        if no_gt:
            skipped["pixel"] = (f"no ground-truth masks for {no_gt} of {int(img_labels.sum())} anomalous test "
                                "images")
        else:
            ops = _ops_for(torch.empty(0, device=self.device), backend)
            labels, counts, n_regions = _label_regions(self._masks)
            scores = _flatten(ops, self._maps, self.device)
            ranking = _rank(ops, scores, ops.array(labels, like=scores), counts, with_overlap=True)
            pix_f1 = _f1_max_from_ranking(ranking)
            metrics.update({
                "pixel_auroc": _auroc_from_ranking(ranking),
                "pixel_ap": _ap_from_ranking(ranking),
                "pro": _pro_from_ranking(ranking, n_regions, self.fpr_limit),
                "pixel_f1_max": pix_f1.f1,
            })
            thresholds["pixel"] = _threshold(pix_f1.threshold)
        metrics.update({
            "image_auroc": _auroc_from_ranking(img_ranking),
            "image_ap": _ap_from_ranking(img_ranking),
            "image_f1_max": img_f1.f1,
        })
        return Evaluation(metrics, thresholds, skipped)


def _per_image(values: ArrayLike, n: int, what: str) -> np.ndarray:
    out = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values, dtype=bool).reshape(-1)
    if len(out) != n:
        raise ValueError(f"{len(out)} {what} for {n} masks")
    return out


def anomaly_metrics(
    anomaly_maps: ArrayLike, masks: ArrayLike, fpr_limit: float = 0.3, image_pool: int = 21
) -> dict[str, float]:
    """One-shot :class:`AnomalyMetrics` on one stack of maps and masks (ranked on the maps' device)."""
    maps = _as_maps(anomaly_maps)
    metric = AnomalyMetrics(fpr_limit, image_pool, device=maps.device)
    metric.update(maps, masks)
    return metric.compute()


# --------------------------------------------------------------------------------------------- reference


def pro_score_reference(
    anomaly_maps: ArrayLike,
    masks: ArrayLike,
    fpr_limit: float = 0.3,
    thresholds: int | np.ndarray | None = None,
) -> float:
    """Plain-NumPy PRO, threshold by threshold and region by region (for tests and benchmarks only).

    For each threshold t (descending): binarise ``map >= t``; FPR = predicted normal pixels / normal
    pixels; PRO = mean over the connected components (8-connectivity, skimage) of the fraction of the
    component predicted. Then (0, 0) and (1, 1) are added and the curve is integrated with the MVTec AD
    code's ``trapezoid`` up to ``fpr_limit``, divided by ``fpr_limit``. ``thresholds=None`` uses every
    distinct score (the exact curve, so equal to :func:`pro_score`); an int ``n`` uses ``n`` evenly spaced
    thresholds from the highest to the lowest score (an approximation); an array is used as given.
    Costs O(#thresholds x #pixels).
    """
    from skimage.measure import label, regionprops

    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    maps = anomaly_maps.detach().cpu().numpy() if isinstance(anomaly_maps, torch.Tensor) else anomaly_maps
    gts = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else masks
    maps = np.asarray(maps, dtype=np.float64).reshape(-1, *np.shape(maps)[-2:])
    gts = np.asarray(gts).astype(bool).reshape(maps.shape)

    regions = []  # flat pixel indices of every connected component of every image
    for i, gt in enumerate(gts):
        for prop in regionprops(label(gt, connectivity=2)):
            rows, cols = prop.coords[:, 0], prop.coords[:, 1]
            regions.append(np.ravel_multi_index((np.full_like(rows, i), rows, cols), gts.shape))
    normal = ~gts.ravel()
    n_normal = int(normal.sum())
    if not regions or n_normal == 0:
        return math.nan

    flat = maps.ravel()
    if thresholds is None:
        ts = np.unique(flat)[::-1]
    elif np.isscalar(thresholds):
        ts = np.linspace(flat.max(), flat.min(), int(thresholds))
    else:
        ts = np.sort(np.asarray(thresholds, dtype=np.float64))[::-1]

    fprs, pros = [0.0], [0.0]
    for t in ts:
        predicted = flat >= t
        fprs.append(np.count_nonzero(predicted & normal) / n_normal)
        pros.append(float(np.mean([predicted[idx].mean() for idx in regions])))
    fprs.append(1.0)
    pros.append(1.0)
    return _trapezoid_reference(np.array(fprs), np.array(pros), fpr_limit) / fpr_limit


def _trapezoid_reference(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """The MVTec AD evaluation code's ``trapezoid`` (x ascending), written out independently."""
    correction = 0.0
    if x_max not in x:
        ins = int(np.searchsorted(x, x_max, side="right"))  # bisect.bisect(x, x_max)
        assert 0 < ins < len(x)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def make_pro_benchmark_case(
    rng: np.random.Generator,
    n: int = 150,
    size: int = 256,
    regions: tuple[int, int] = (0, 8),
    levels: int | None = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """Realistic random anomaly maps (float32 (n, size, size) in [0, 1]) and masks (bool, same shape).

    Each image gets ``regions[0]..regions[1]`` elliptic regions (overlaps merge) whose half-axes are
    log-uniform from 1 px to size/6, so single pixels and large blobs both occur; images with no region
    are normal. A map is the blurred mask times a per-image strength plus smooth noise and an offset,
    clipped to [0, 1] and, unless ``levels`` is None, rounded to ``levels`` values (so a per-threshold
    reference given every distinct score is exact and affordable; ties are plentiful).
    """
    lo, hi = regions
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        for _ in range(int(rng.integers(lo, hi + 1))):
            cy, cx = rng.uniform(0, size, 2)
            a = float(np.exp(rng.uniform(0.0, np.log(max(size / 6, 1.0)))))
            b = a * rng.uniform(0.25, 1.0)
            theta = rng.uniform(0, np.pi)
            r = math.ceil(a) + 1
            y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, size)
            x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, size)
            yy, xx = np.ogrid[y0:y1, x0:x1]
            dy, dx = yy + 0.5 - cy, xx + 0.5 - cx
            u = (np.cos(theta) * dx + np.sin(theta) * dy) / a
            v = (-np.sin(theta) * dx + np.cos(theta) * dy) / b
            masks[i, y0:y1, x0:x1] |= u * u + v * v <= 1.0
            masks[i, int(cy), int(cx)] = True
    sigma = max(size / 128, 1.0)
    blurred = ndimage.gaussian_filter(masks.astype(np.float32), (0, 1.5 * sigma, 1.5 * sigma))
    strength = rng.uniform(0.3, 1.0, (n, 1, 1)).astype(np.float32)
    noise = rng.standard_normal((n, size, size), dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, (0, 2 * sigma, 2 * sigma))
    noise /= max(float(noise.std()), 1e-12)
    maps = np.clip(0.2 + strength * blurred + 0.12 * noise, 0.0, 1.0)
    if levels is not None:
        maps = np.round(maps * (levels - 1)) / (levels - 1)
    return maps.astype(np.float32), masks
