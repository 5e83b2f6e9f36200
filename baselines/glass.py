"""GLASS's image-level pseudo anomalies (Local Anomaly Synthesis, LAS).

Chen, Luo, Lv, Zhang, "A Unified Anomaly Synthesis Strategy with Gradient Ascent for Industrial Anomaly
Detection and Localization", ECCV 2024; code cqylunlun/GLASS ``datasets/mvtec.py::MVTecDataset``
(``rand_augmenter``, ``__getitem__``) and ``perlin.py::perlin_mask``/``generate_thr``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image

from baselines.augment import apply_random_subset, build_augmenters
from baselines.perlin import perlin_threshold_mask
from baselines.textures import TextureSource, blend_texture
from cai.errors import ConfigError, DatasetError
from cai.synth.base import Synthesizer

COMBINE_MODES = ("first", "intersection", "union")


@dataclass
class GlassSample:
    """One GLASS draw and the random choices behind it (for tests and inspection)."""

    image: np.ndarray
    mask: np.ndarray
    beta: float
    combine: str
    tries: int
    texture: Path | None = None
    augmenters: list[int] = field(default_factory=list)


def _resize_cover_center_crop(texture: np.ndarray, h: int, w: int) -> tuple[np.ndarray, tuple[int, int]]:
    """torchvision ``Resize(size)`` (shorter side, PIL bilinear) generalised to cover (h, w); returns the
    resized texture and the crop offset that ``CenterCrop`` takes after the augmenters."""
    th, tw = texture.shape[:2]
    if h / th >= w / tw:
        nh, nw = h, max(w, int(h * tw / th))
    else:
        nh, nw = max(h, int(w * th / tw)), w
    out = TF.resize(Image.fromarray(texture), [nh, nw], interpolation=TF.InterpolationMode.BILINEAR)
    top, left = int(round((nh - h) / 2.0)), int(round((nw - w) / 2.0))  # TF.center_crop's rounding
    return np.asarray(out).copy(), (top, left)


class GLASS(Synthesizer):
    """GLASS image-level anomaly synthesis (LAS), detector-agnostic part.

    Per call: a texture from ``texture_dir/*/*.jpg`` is resized so its shorter side covers the image (PIL
    bilinear), passed through ``n_augmenters`` distinct transforms of ``augmenters`` (3 of GLASS's 9
    torchvision ones) and centre-cropped; two Perlin masks (DRAEM's recipe,
    :func:`baselines.perlin.perlin_threshold_mask`) are combined as the first alone, their intersection
    or their union (``combine_modes``, one third each: ``torch.rand(1)`` ≤ 1/3, ≤ 2/3, > 2/3), multiplied
    by the foreground and redrawn until non-empty; β ~ N(``beta_mean``, ``beta_std``) clipped to
    ``beta_clip``; blend as DRAEM (:func:`blend_texture`). Every sample is anomalous.

    GLASS also has a feature-level branch (GAS): it perturbs normal *features* with Gaussian noise and
    moves them by gradient ascent on its discriminator's loss, constrained to a ring around the normal
    features; LAS's image is fed to the same extractor for a second "anomalous" feature set. That branch
    yields no image and is tied to GLASS's own backbone and discriminator, so a detector-agnostic
    comparison, which trains the same detector on every method's images, can only use LAS's image. GLASS
    trains on the mask max-pooled to its feature grid (``mask_s``); the full-resolution mask (``mask_l``)
    is the one that matches the image pixel for pixel and is returned here. GLASS loops until the pooled
    mask is non-empty; with full coverage that equals a non-empty full-resolution mask, which is the test
    here, bounded by ``max_tries`` (a guard GLASS lacks).
    """

    def __init__(
        self,
        texture_dir: str | Path,
        augmenters: Sequence[Mapping],
        n_augmenters: int,
        perlin_scale_exp: Sequence[int],
        perlin_rotate: Sequence[float],
        perlin_threshold: float,
        combine_modes: Sequence[str],
        beta_mean: float,
        beta_std: float,
        beta_clip: Sequence[float],
        max_tries: int,
        min_texture_classes: int | None = None,
    ) -> None:
        self.textures = TextureSource(texture_dir, "GLASS", min_texture_classes)
        self.augmenters = build_augmenters(augmenters)
        self.n_augmenters = int(n_augmenters)
        self.perlin_scale_exp = tuple(int(v) for v in perlin_scale_exp)
        self.perlin_rotate = tuple(float(v) for v in perlin_rotate)
        self.perlin_threshold = float(perlin_threshold)
        bad = [m for m in combine_modes if m not in COMBINE_MODES]
        if bad or not combine_modes:
            raise ConfigError(
                f"GLASS combine_modes {list(combine_modes)} invalid", fix=f"use {COMBINE_MODES}"
            )
        self.combine_modes = tuple(combine_modes)
        self.beta_mean, self.beta_std = float(beta_mean), float(beta_std)
        self.beta_clip = (float(beta_clip[0]), float(beta_clip[1]))
        self.max_tries = int(max_tries)

    def draw_beta(self, rng: np.random.Generator) -> float:
        """β ~ N(mean, std) clipped (GLASS ``np.clip(np.random.normal(0.5, 0.1), .2, .8)``)."""
        return float(np.clip(rng.normal(self.beta_mean, self.beta_std), *self.beta_clip))

    def draw_mask(
        self, shape: tuple[int, int], foreground: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, str, int]:
        """GLASS ``perlin.py::perlin_mask``: combined Perlin masks × foreground, redrawn until non-empty."""
        if not foreground.any():
            raise DatasetError(
                "GLASS needs a non-empty foreground mask to place an anomaly in.",
                fix="check the foreground masks of this category (all True for textures).",
            )
        args = (self.perlin_scale_exp, self.perlin_rotate, self.perlin_threshold)
        for tries in range(1, self.max_tries + 1):
            m1 = perlin_threshold_mask(shape, rng, *args)
            m2 = perlin_threshold_mask(shape, rng, *args)
            t = float(rng.random())
            mode = self.combine_modes[min(int(t * len(self.combine_modes)), len(self.combine_modes) - 1)]
            m = m1 | m2 if mode == "union" else (m1 & m2 if mode == "intersection" else m1)
            m &= foreground
            if m.any():
                return m, mode, tries
        raise DatasetError(
            f"GLASS found no Perlin mask overlapping the foreground in {self.max_tries} tries.",
            fix=f"the foreground covers only {int(foreground.sum())} pixels; check this category's "
            "foreground masks.",
        )

    def synthesize(self, image: np.ndarray, foreground: np.ndarray, rng: np.random.Generator) -> GlassSample:
        """Run one draw and return it with its random choices."""
        h, w = image.shape[:2]
        texture, path = self.textures.draw(rng)
        texture, (top, left) = _resize_cover_center_crop(texture, h, w)
        texture, chosen = apply_random_subset(texture, rng, self.augmenters, self.n_augmenters)
        texture = texture[top : top + h, left : left + w]
        mask, mode, tries = self.draw_mask((h, w), foreground.astype(bool), rng)
        beta = self.draw_beta(rng)
        out = blend_texture(image, texture, mask, beta)
        return GlassSample(out, mask, beta, mode, tries, path, chosen)

    def __call__(
        self, image: np.ndarray, foreground: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        s = self.synthesize(image, foreground, rng)
        return s.image, s.mask
