"""The one interface every synthesizer (CAI and the baselines) implements.

A synthesizer turns a normal image into a pseudo anomaly and its mask::

    image, mask = synthesizer(image, foreground, rng)

``image`` is RGB uint8 (H, W, 3), ``foreground`` is bool (H, W) (all True for textures), ``rng`` is a
seeded :class:`numpy.random.Generator`, the only source of randomness a synthesizer may use. The
result is a new uint8 (H, W, 3) image and a bool (H, W) mask; an all-False mask means the method left
the image normal (DRAEM and RealNet do this on purpose with their authors' ``normal_probability``, and a
Perlin or label mask can come out empty).

Under the detector protocol the consumer mixes normal images in itself, so every output must be a pseudo
anomaly: the context then says ``mixes_normals``, synthesizers skip their own "leave it normal" draws,
and the cache writer (:mod:`cai.synth.cache`) redraws any empty output.

Synthesizers that need more than one image (NSA borrows patches from other normal images, CAI draws
from an anomaly bank, RealNet needs a trained DDPM) receive a :class:`SynthesisContext` once through
``prepare`` before the first call.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SynthesisContext:
    """What a synthesizer may know about its target: the dataset, category and its normal images.

    ``normals``/``foregrounds`` are the category's training images at the synthesis size, in the
    same order as the pipeline visits them. ``leakage_sources`` names the source datasets that count
    as the target itself: an anomaly bank must drop every item from them (the paper's leakage rule).
    ``mixes_normals``: the consumer (the detector trainer) mixes normal images in itself, so a
    synthesizer must not leave outputs normal on purpose (its authors' ``normal_probability`` applies
    only when it is used on its own). ``n_per_image``: how many outputs each normal image gets (None:
    not known), e.g. for CAI to check its scale quotas add up to it.
    """

    dataset: str
    category: str
    is_texture: bool
    image_size: int
    leakage_sources: tuple[str, ...] = ()
    normals: Sequence[np.ndarray] = field(default_factory=list)
    foregrounds: Sequence[np.ndarray] = field(default_factory=list)
    mixes_normals: bool = False
    n_per_image: int | None = None


class Synthesizer(abc.ABC):
    """Base class: implement ``__call__``; override ``generate`` when outputs of one image interact."""

    #: Upper bound on the processes the cache writer may fork for this synthesizer (None: no bound);
    #: a synthesizer holding a GPU model sets 1.
    max_workers: int | None = None

    def cache_key(self) -> dict:
        """What, beyond the config, identifies this synthesizer's output once prepared (e.g. the trained
        checkpoint it loaded), so retraining a model invalidates cached pseudo anomalies. Default: nothing."""
        return {}

    def prepare(self, context: SynthesisContext) -> None:  # noqa: B027 - optional hook
        """Receive the target context once before synthesis (default: nothing to do)."""

    @abc.abstractmethod
    def __call__(
        self, image: np.ndarray, foreground: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return one pseudo-anomaly image (uint8 H×W×3) and its mask (bool H×W)."""

    def generate(
        self, image: np.ndarray, foreground: np.ndarray, rng: np.random.Generator, n: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Return ``n`` pseudo anomalies of one normal image (CAI overrides this for its scale quotas)."""
        return [self(image, foreground, rng) for _ in range(n)]

    def generate_records(
        self, image: np.ndarray, foreground: np.ndarray, rng: np.random.Generator, n: int
    ) -> list[tuple[np.ndarray, np.ndarray, dict]]:
        """``generate`` plus JSON-serialisable provenance per output (stored in the cache manifest;
        e.g. CAI's anomaly class, which CDM regroups its training data by). Default: no provenance."""
        return [(out, mask, {}) for out, mask in self.generate(image, foreground, rng, n)]


def check_output(image: np.ndarray, out: np.ndarray, mask: np.ndarray) -> None:
    """Assert a synthesizer's output honours the interface (used by the cache writer and tests)."""
    if out.shape != image.shape or out.dtype != np.uint8:
        raise TypeError(f"synthesizer returned image {out.shape} {out.dtype}, expected {image.shape} uint8")
    if mask.shape != image.shape[:2] or mask.dtype != bool:
        raise TypeError(f"synthesizer returned mask {mask.shape} {mask.dtype}, expected {image.shape[:2]} bool")
