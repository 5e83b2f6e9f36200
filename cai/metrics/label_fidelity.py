"""Label fidelity: how well a pseudo anomaly's mask matches what visibly changed in the image.

A detector trained on pseudo anomalies learns their masks. A mask wider than the visible change (e.g. the
smooth Poisson halo inside CAI's Eq. 4 label) teaches it to mark normal pixels; visible change outside the
mask (e.g. NSA's shared-background region, a low-opacity DRAEM texture) teaches it to ignore defects.

Per pixel, the perceptual change between the normal image and its pseudo anomaly (both at the working size
the detector sees) is CIEDE2000 ΔE00 (``measure: ciede2000``) or the absolute difference of the grey
images (``measure: grey``; OpenCV's RGB→grey, as CAI's Eq. 4 label); a pixel changed *visibly* when it exceeds
``visibility_threshold`` (conf/fidelity). Per output:

* ``label_area``    share of the image inside the mask;
* ``visible_area``  share of the image that changed visibly;
* ``over``          share of mask pixels with no visible change (over-labelling; NaN for an empty mask);
* ``under``         share of visibly changed pixels outside the mask (under-labelling; NaN when nothing
  changed visibly);
* ``iou``           |mask ∩ visible| / |mask ∪ visible| (NaN when both are empty: a normal output);
* ``invisible``     the mask is non-empty but none of its pixels changed visibly;
* ``misaligned``    the synthesizer recorded a whole-image transform of its base (``info["rotation"]`` in
  the cache record: DRAEM rotates the normal image before synthesis in 30 % of draws), so the stored normal
  image is not the base of this output and the pixel comparison says nothing about its label. Only the
  synthesizer's own record decides this: a change outside the mask is otherwise under-labelling (e.g. the
  Poisson halo outside CAI's tight label), never a guess that the output was transformed.

Summaries are means over outputs of these per-output shares (each output counts once, whatever its
size), NaNs skipped and misaligned outputs left out (counted in ``n_misaligned``); ``invisible`` becomes
the share of labelled outputs flagged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from skimage.color import deltaE_ciede2000, rgb2lab

from cai.errors import ConfigError

MEASURES = ("ciede2000", "grey")
MEASURE_KEYS = ("label_area", "visible_area", "over", "under", "iou")


@dataclass(frozen=True)
class FidelityOptions:
    """conf/fidelity: the change measure and the threshold above which a change counts as visible."""

    measure: str = "ciede2000"
    visibility_threshold: float = 2.3

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise ConfigError(f"Unknown label-fidelity measure {self.measure!r}.", where="fidelity.measure",
                              fix=f"Use one of {list(MEASURES)}.")
        if not self.visibility_threshold >= 0:
            raise ConfigError(f"visibility_threshold must be >= 0, got {self.visibility_threshold}.",
                              where="fidelity.visibility_threshold", fix="Give a non-negative ΔE / grey level.")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> FidelityOptions:
        return cls(measure=str(cfg["measure"]), visibility_threshold=float(cfg["visibility_threshold"]))


@dataclass(frozen=True)
class LabelFidelity:
    """The measures of one pseudo anomaly (see the module docstring)."""

    label_area: float
    visible_area: float
    over: float
    under: float
    iou: float
    invisible: bool
    misaligned: bool = False


def change_map(normal: np.ndarray, pseudo: np.ndarray, measure: str = "ciede2000") -> np.ndarray:
    """Per-pixel perceptual change (H, W) float between two RGB uint8 images of the same size.

    Only pixels whose RGB values differ are converted (identical pixels have ΔE 0), which keeps CIEDE2000
    cheap for local edits.
    """
    if normal.shape != pseudo.shape:
        raise ValueError(f"normal {normal.shape} and pseudo {pseudo.shape} differ in size")
    if measure == "grey":
        a, b = (cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2GRAY).astype(np.float64) for x in (normal, pseudo))
        return np.abs(a - b)
    if measure != "ciede2000":
        raise ValueError(f"unknown measure {measure!r}")
    out = np.zeros(normal.shape[:2], np.float64)
    changed = (normal != pseudo).any(axis=-1)
    if changed.any():
        lab_a = rgb2lab(normal[changed][None].astype(np.float64) / 255.0)[0]
        lab_b = rgb2lab(pseudo[changed][None].astype(np.float64) / 255.0)[0]
        out[changed] = deltaE_ciede2000(lab_a, lab_b)
    return out


def measure_visible(mask: np.ndarray, visible: np.ndarray, misaligned: bool = False) -> LabelFidelity:
    """The measures for a bool label ``mask`` against a bool ``visible``-change map of the same shape;
    ``misaligned``: the output's base is not the stored normal image (see :func:`is_misaligned`)."""
    mask, visible = mask.astype(bool), visible.astype(bool)
    n_mask, n_vis = int(mask.sum()), int(visible.sum())
    inter = int((mask & visible).sum())
    union = n_mask + n_vis - inter
    total = mask.size
    return LabelFidelity(
        label_area=n_mask / total,
        visible_area=n_vis / total,
        over=(n_mask - inter) / n_mask if n_mask else math.nan,
        under=(n_vis - inter) / n_vis if n_vis else math.nan,
        iou=inter / union if union else math.nan,
        invisible=bool(n_mask and inter == 0),
        misaligned=bool(misaligned),
    )


def is_misaligned(info: Mapping[str, Any] | None) -> bool:
    """Whether a cache record says its output's base is a transformed normal image (DRAEM's rotation)."""
    return bool(info) and info.get("rotation") is not None


def label_fidelity(normal: np.ndarray, pseudo: np.ndarray, mask: np.ndarray, options: FidelityOptions,
                   info: Mapping[str, Any] | None = None) -> tuple[LabelFidelity, np.ndarray]:
    """Measures of one pseudo anomaly and its change map (for galleries); ``info`` is its cache record's."""
    change = change_map(normal, pseudo, options.measure)
    return measure_visible(mask, change > options.visibility_threshold, is_misaligned(info)), change


def summarize(items: Sequence[LabelFidelity]) -> dict[str, Any]:
    """Means over aligned outputs (NaN skipped; None when no output has the measure), counts, invisible
    share."""
    out: dict[str, Any] = {"n": len(items), "n_misaligned": sum(i.misaligned for i in items)}
    items = [i for i in items if not i.misaligned]
    for key in MEASURE_KEYS:
        values = np.array([getattr(i, key) for i in items], np.float64)
        finite = values[~np.isnan(values)]
        out[key] = float(finite.mean()) if finite.size else None
    labelled = [i for i in items if i.label_area > 0]
    out["n_labelled"] = len(labelled)
    out["n_invisible"] = sum(i.invisible for i in labelled)
    out["invisible"] = out["n_invisible"] / len(labelled) if labelled else None
    return out


def summarize_groups(items: Sequence[LabelFidelity], groups: Sequence[str | None]) -> dict[str, dict[str, Any]]:
    """:func:`summarize` per group label (e.g. CAI's scale type); outputs without a label are left out."""
    if len(items) != len(groups):
        raise ValueError("one group label per item")
    names = sorted({g for g in groups if g is not None})
    return {name: summarize([i for i, g in zip(items, groups, strict=True) if g == name]) for name in names}


def evaluate_pseudo(normals: Sequence[np.ndarray], pseudo: np.ndarray, masks: np.ndarray,
                    normal_index: Sequence[int], options: FidelityOptions,
                    infos: Sequence[Mapping[str, Any] | None] | None = None) -> list[LabelFidelity]:
    """Measures for every pseudo anomaly ``k`` (made from ``normals[normal_index[k]]``; ``infos``: the cache
    records' provenance, which says when an output's base was transformed)."""
    infos = list(infos) if infos is not None else [None] * len(pseudo)
    if not len(pseudo) == len(masks) == len(normal_index) == len(infos):
        raise ValueError("pseudo, masks, normal_index and infos must have one entry per pseudo anomaly")
    return [label_fidelity(normals[i], pseudo[k], masks[k], options, infos[k])[0]
            for k, i in enumerate(normal_index)]


def run_summary(fidelity_cfg: Mapping[str, Any], normals: Sequence[np.ndarray], pseudo: np.ndarray,
                masks: np.ndarray, normal_index: Sequence[int], cache_dir: str | Path | None = None,
                ) -> dict[str, Any]:
    """metrics.json's ``label_fidelity`` (called by ``cai.pipeline.run_job``): the mean measures of a run's
    pseudo anomalies, the options used and, when the cache's records carry ``info[group_by]`` (CAI:
    ``scale``), the same split by that key."""
    from cai.synth.cache import read_manifest

    infos = [r.info for r in read_manifest(Path(cache_dir))] if cache_dir is not None else None
    options = FidelityOptions.from_config(fidelity_cfg)
    items = evaluate_pseudo(normals, pseudo, masks, normal_index, options, infos)
    result = {**summarize(items), **asdict(options)}
    key = fidelity_cfg.get("group_by")
    if key and infos is not None and len(infos) == len(items):
        groups = [(info or {}).get(key) for info in infos]
        if any(g is not None for g in groups):
            result[f"by_{key}"] = summarize_groups(items, groups)
    return result
