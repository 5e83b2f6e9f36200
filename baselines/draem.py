"""DRAEM's pseudo anomalies: a DTD texture, augmented, pasted through a thresholded Perlin mask.

Zavrtanik, Kristan, Skočaj, "DRAEM – A discriminatively trained reconstruction embedding for surface
anomaly detection", ICCV 2021, §3.3; code VitjanZ/DRAEM ``data_loader.py::MVTecDRAEMTrainDataset``
(``transform_image``, ``augment_image``, ``randAugmenter``) and ``perlin.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from baselines.augment import apply_random_subset, build_augmenters, rotate_array
from baselines.perlin import perlin_threshold_mask
from baselines.textures import TextureSource, blend_texture
from cai.synth.base import SynthesisContext, Synthesizer


@dataclass
class DraemSample:
    """One DRAEM draw and the random choices behind it (for tests and inspection)."""

    image: np.ndarray
    mask: np.ndarray
    left_normal: bool  # the normal_probability coin said "no anomaly"
    rotation: float | None = None
    beta: float | None = None
    texture: Path | None = None
    augmenters: list[int] = field(default_factory=list)


class DRAEM(Synthesizer):
    """DRAEM anomaly synthesis (``data_loader.py::transform_image`` + ``augment_image``).

    Per call:

    1. with probability ``rotate_probability`` (DRAEM: ``torch.rand(1) > 0.7``) the normal image is rotated
       by U(``rotate_range``) degrees (imgaug ``Affine(rotate=(-90, 90))``, bilinear, black corners).
       DRAEM rotates the image *before* synthesis and trains on the rotated pair, so here the rotated
       image is the base of the result: the returned pseudo anomaly (and, when the draw stays normal, the
       returned "normal" sample) is the rotated image and the mask is in its coordinates. Set
       ``rotate_probability: 0`` for outputs aligned with the input.
    2. with probability ``normal_probability`` (DRAEM: ``no_anomaly > 0.5``) the sample is left normal
       (all-False mask). DRAEM draws this last; it is drawn here before the texture work it would discard,
       which changes nothing in distribution. Not drawn at all once :meth:`prepare` is told the consumer
       mixes normal images in itself (``SynthesisContext.mixes_normals``, the detector protocol).
    3. a texture from ``texture_dir/*/*.jpg`` is resized to the image (``cv2.resize``, bilinear) and passed
       through ``n_augmenters`` distinct augmenters of ``augmenters`` (3 of DRAEM's 10 imgaug ones, see
       :mod:`baselines.augment`). With ``augment_in_bgr`` they see the texture in BGR order, as DRAEM feeds
       ``cv2.imread`` arrays to imgaug colour ops that assume RGB.
    4. mask = Perlin noise at ``2**k`` cells per axis, ``k`` uniform in ``[perlin_scale_exp)``, rotated by
       U(``perlin_rotate``), ``> perlin_threshold`` (:func:`baselines.perlin.perlin_threshold_mask`); it
       may be empty (DRAEM then labels the sample normal, as here).
    5. β = U[0, 1)·``beta_max``; ``aug = img(1−M) + (1−β)·tex·M + β·img·M`` (:func:`blend_texture`).

    The foreground is not used: DRAEM places anomalies anywhere in the image.
    """

    def __init__(
        self,
        texture_dir: str | Path,
        augmenters: Sequence[Mapping],
        n_augmenters: int,
        augment_in_bgr: bool,
        perlin_scale_exp: Sequence[int],
        perlin_rotate: Sequence[float],
        perlin_threshold: float,
        beta_max: float,
        normal_probability: float,
        rotate_probability: float,
        rotate_range: Sequence[float],
        min_texture_classes: int | None = None,
    ) -> None:
        self.textures = TextureSource(texture_dir, "DRAEM", min_texture_classes)
        self.augmenters = build_augmenters(augmenters)
        self.n_augmenters = int(n_augmenters)
        self.augment_in_bgr = bool(augment_in_bgr)
        self.perlin_scale_exp = tuple(int(v) for v in perlin_scale_exp)
        self.perlin_rotate = tuple(float(v) for v in perlin_rotate)
        self.perlin_threshold = float(perlin_threshold)
        self.beta_max = float(beta_max)
        self.normal_probability = float(normal_probability)
        self.rotate_probability = float(rotate_probability)
        self.rotate_range = tuple(float(v) for v in rotate_range)
        self.mixes_normals = False  # set by prepare: the consumer mixes normals, never leave one normal

    def prepare(self, context: SynthesisContext) -> None:
        """Keep the authors' normal draws only when no consumer mixes normal images in itself."""
        self.mixes_normals = bool(context.mixes_normals)

    def draw_beta(self, rng: np.random.Generator) -> float:
        """Opacity of the normal image inside the mask: U[0, 1)·beta_max (DRAEM ``torch.rand(1)·0.8``)."""
        return float(rng.random()) * self.beta_max

    def synthesize(self, image: np.ndarray, foreground: np.ndarray, rng: np.random.Generator) -> DraemSample:
        """Run one draw and return it with its random choices."""
        h, w = image.shape[:2]
        base, angle = image, None
        if rng.random() < self.rotate_probability:
            angle = float(rng.uniform(*self.rotate_range))
            base = rotate_array(image, angle, bilinear=True)
        empty = np.zeros((h, w), dtype=bool)
        if not self.mixes_normals and rng.random() < self.normal_probability:
            return DraemSample(base.copy(), empty, left_normal=True, rotation=angle)

        texture, path = self.textures.draw(rng)
        texture = cv2.resize(texture, (w, h), interpolation=cv2.INTER_LINEAR)
        if self.augment_in_bgr:
            texture = np.ascontiguousarray(texture[..., ::-1])
        texture, chosen = apply_random_subset(texture, rng, self.augmenters, self.n_augmenters)
        if self.augment_in_bgr:
            texture = np.ascontiguousarray(texture[..., ::-1])

        mask = perlin_threshold_mask(
            (h, w), rng, self.perlin_scale_exp, self.perlin_rotate, self.perlin_threshold
        )
        beta = self.draw_beta(rng)
        out = blend_texture(base, texture, mask, beta)
        return DraemSample(out, mask, False, angle, beta, path, chosen)

    def __call__(
        self, image: np.ndarray, foreground: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        s = self.synthesize(image, foreground, rng)
        return s.image, s.mask

    def generate_records(
        self, image: np.ndarray, foreground: np.ndarray, rng: np.random.Generator, n: int
    ) -> list[tuple[np.ndarray, np.ndarray, dict]]:
        """Outputs with their whole-image rotation (``rotation``: degrees, None when not rotated), so a
        comparison with the stored normal image (label fidelity) knows which outputs are not aligned with it.
        The same draws as :meth:`__call__`."""
        samples = [self.synthesize(image, foreground, rng) for _ in range(n)]
        return [(s.image, s.mask, {"rotation": s.rotation}) for s in samples]
