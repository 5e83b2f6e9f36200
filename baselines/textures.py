"""Anomaly-source textures (DTD) for DRAEM and GLASS, and their shared blend formula.

Both methods list ``<texture_dir>/*/*.jpg`` (DRAEM ``data_loader.py::MVTecDRAEMTrainDataset.__init__``,
GLASS ``datasets/mvtec.py::MVTecDataset.__init__``), i.e. the ``images/`` folder of the Describable
Textures Dataset with one sub-folder per texture category, and draw one file uniformly per sample.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cai.errors import ConfigError, MissingFileError
from cai.io import read_image

log = logging.getLogger(__name__)

DTD_URL = "https://www.robots.ox.ac.uk/~vgg/data/dtd/"


class MissingTexturesError(MissingFileError, ConfigError):
    """The configured texture folder holds no ``<category>/*.jpg`` (a missing download or a wrong path)."""


class TextureSource:
    """The sorted ``*/*.jpg`` files (``.JPG`` too) under ``texture_dir``; raises :class:`MissingTexturesError`
    when none.

    ``n_classes`` is the number of texture categories (sub-folders with images) found; below
    ``min_classes`` (the full DTD has 47; conf/textures) a warning says the source is incomplete.
    """

    def __init__(self, texture_dir: str | Path, method: str, min_classes: int | None = None) -> None:
        self.root = Path(texture_dir)
        found = self.root.glob("*/*") if self.root.is_dir() else []
        self.paths = sorted(p for p in found if p.suffix.lower() == ".jpg")
        if not self.paths:
            raise MissingTexturesError(
                f"{method} needs anomaly-source textures (the Describable Textures Dataset, DTD), "
                f"but no <category>/*.jpg files were found.",
                where=self.root,
                fix=(
                    f"download DTD from {DTD_URL} (dtd-r1.0.1.tar.gz, 5,640 images in 47 categories) and "
                    f"unpack it so that {self.root}/<category>/*.jpg exist: by default table runs read "
                    f"paths.dtd_dir = ${{paths.data_dir}}/dtd/images (set CAI_DATA or paths.dtd_dir; "
                    f"conf/textures/dtd.yaml). For tests and demos use textures=dtd_mini "
                    f"(${{paths.shared_data_dir}}/dtd_mini/images)."
                ),
            )
        self.n_classes = len({p.parent.name for p in self.paths})
        log.info("%s textures: %d images in %d classes from %s", method, len(self.paths), self.n_classes, self.root)
        if min_classes is not None and self.n_classes < int(min_classes):
            log.warning(
                "%s textures: only %d texture classes in %s (expected %d: the full DTD, %s); "
                "results are not comparable with the paper's", method, self.n_classes, self.root,
                int(min_classes), DTD_URL,
            )

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, Path]:
        """Read one texture chosen uniformly, as RGB uint8."""
        path = self.paths[int(rng.integers(len(self.paths)))]
        return read_image(path), path


def blend_texture(image: np.ndarray, texture: np.ndarray, mask: np.ndarray, beta: float) -> np.ndarray:
    """DRAEM/GLASS blend ``img·(1−M) + (1−β)·tex·M + β·img·M`` on uint8 images, rounded.

    DRAEM ``data_loader.py::augment_image`` (β = opacity of the normal image inside the mask); GLASS
    ``datasets/mvtec.py::__getitem__`` applies the same formula to normalised tensors, which equals this
    one because the per-channel normalisation is affine and the weights sum to 1. Pixels outside ``mask``
    are copied unchanged.
    """
    out = image.copy()
    m = mask.astype(bool)
    mixed = (1.0 - beta) * texture[m].astype(np.float64) + beta * image[m].astype(np.float64)
    out[m] = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
    return out
