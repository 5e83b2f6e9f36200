"""Another dataset's annotated test images as a detector's training set: the zero-shot protocol of
AnomalyCLIP and HeadCLIP (``detector.train_on=auxiliary``).

AnomalyCLIP (train.sh / test.sh, followed by HeadCLIP) trains once on every test image of one dataset,
normal and anomalous with their masks (VisA's to test MVTec-AD, MVTec-AD's to test everything else),
and evaluates that one model on every category of the target dataset, which it never saw. Here the
auxiliary dataset is any dataset config (``conf/dataset/<name>.yaml``, read with the run's ``paths``);
``detector.auxiliary.overrides`` is merged into it (e.g. ``{reader: {root: /data/visa}}``);
training happens once per (auxiliary data, detector config, seed) in a shared directory under
``paths.cache_dir`` and every target category's run evaluates the same learned parameters.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cai.data.types import CategoryData
from cai.detect.trainer import TrainSet
from cai.errors import ConfigError
from cai.io import read_image, read_mask, resize_image, resize_mask
from cai.track import file_sha256, manifest_digest

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
TRAIN_ON = ("pseudo", "auxiliary")


def train_on(cfg: DictConfig) -> str:
    """What the detector trains on: ``pseudo`` (the category's pseudo anomalies; the UNet's only choice) or
    ``auxiliary`` (``detector.auxiliary``'s annotated test images)."""
    value = str(cfg.detector.get("train_on", "pseudo"))
    if value not in TRAIN_ON:
        raise ConfigError(f"detector.train_on must be one of {list(TRAIN_ON)}, got {value!r}.",
                          where="detector.train_on", fix="Pass detector.train_on=pseudo or auxiliary.")
    return value


def check_train_on(cfg: DictConfig) -> None:
    """``auxiliary`` goes with a detector that supports it, ``synthesizer=none`` (nothing is synthesized, and
    a table row must not claim a synthesizer) and ``selection=last`` (the target's test set must not pick
    the epoch); ``pseudo`` needs a real synthesizer."""
    mode = train_on(cfg)
    synthesizer = str(cfg.synthesizer.name)
    if mode == "pseudo":
        if synthesizer == "none":
            raise ConfigError("synthesizer=none makes no pseudo anomalies, so the detector would have nothing to "
                              "train on.", where="synthesizer=none",
                              fix="Choose a synthesizer (e.g. synthesizer=cai_n), or train on another dataset's "
                                  "annotated anomalies: detector=headclip detector.train_on=auxiliary.")
        return
    if "auxiliary" not in cfg.detector:
        raise ConfigError("detector.train_on=auxiliary is not supported by this detector (no detector.auxiliary).",
                          where="detector.train_on", fix="Use detector=headclip, or detector.train_on=pseudo.")
    if synthesizer != "none":
        raise ConfigError(f"detector.train_on=auxiliary trains on {cfg.detector.auxiliary.dataset}'s annotated "
                          f"anomalies, so synthesizer={synthesizer} would not be used, yet the run would be "
                          "recorded under it.", where=f"synthesizer={synthesizer}",
                          fix="Add synthesizer=none.")
    if str(cfg.detector.selection) != "last":
        raise ConfigError(f"detector.train_on=auxiliary is the zero-shot protocol: the target's test images must "
                          f"not choose the epoch, but detector.selection={cfg.detector.selection}.",
                          where="detector.selection", fix="Use detector.selection=last (AnomalyCLIP: epoch 15).")
    if str(cfg.detector.auxiliary.dataset) == str(cfg.dataset.name):
        raise ConfigError(f"The auxiliary dataset is the target dataset ({cfg.dataset.name}): that is not zero-shot.",
                          where="detector.auxiliary.dataset",
                          fix="Train on another dataset, e.g. detector.auxiliary.dataset=visa for dataset=mvtec.")


class AuxiliaryData:
    """The auxiliary dataset of ``cfg.detector.auxiliary``: its identity (cheap: file names and sizes) and,
    on demand, its test images and masks at ``detector.auxiliary.image_size`` as a :class:`TrainSet`
    (normal test images as normals, anomalous ones with their masks as the anomalies)."""

    def __init__(self, cfg: DictConfig) -> None:
        aux = cfg.detector.auxiliary
        self.name = str(aux.dataset)
        path = CONF_DIR / "dataset" / f"{self.name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
            raise ConfigError(f"No dataset config named {self.name!r} for detector.auxiliary.dataset.", where=path,
                              fix=f"Use one of {known}.")
        dataset = OmegaConf.merge(OmegaConf.load(path), aux.get("overrides") or {})
        root = OmegaConf.create({"paths": OmegaConf.to_container(cfg.paths, resolve=False),
                                 "dataset": OmegaConf.to_container(dataset, resolve=False)})
        self.reader = instantiate(root.dataset.reader)
        cats = aux.get("categories") or root.dataset.get("categories") or self.reader.categories()
        self.categories = [str(c) for c in cats]
        self.image_size = int(aux.image_size)
        self.cache_dir = Path(str(cfg.paths.cache_dir))
        self._data = [self.reader.load(c) for c in self.categories]

    def identity(self) -> dict[str, Any]:
        """What identifies the training data: dataset, categories, size and the test files (names, sizes and
        modification times: an image or mask rewritten in place with the same size is other training data)."""
        files = [t.image for d in self._data for t in d.test] + [t.mask for d in self._data for t in d.test if t.mask]
        roots = {str(d.root) for d in self._data}
        root = Path(roots.pop()) if len(roots) == 1 else Path("/")
        return {"dataset": self.name, "categories": self.categories, "image_size": self.image_size,
                "files": manifest_digest(files, root, mtime=True)}

    def check_disjoint(self, target: CategoryData) -> None:
        """Refuse a target category whose test images are auxiliary training images (the same file, or a
        copy of it: same size and content), e.g. ``dataset=folder`` pointed at the auxiliary dataset's folder:
        the detector would be tested on what it was trained on, and the zero-shot numbers would be leaked."""
        aux_files = [Path(t.image) for d in self._data for t in d.test]
        by_path = {p.resolve() for p in aux_files}
        by_size: dict[int, list[Path]] = {}
        for p in aux_files:
            by_size.setdefault(p.stat().st_size, []).append(p)
        shared = []
        for item in target.test:
            image = Path(item.image)
            same_size = by_size.get(image.stat().st_size, ())
            if image.resolve() in by_path or any(file_sha256(image) == file_sha256(p) for p in same_size):
                shared.append(image)
        if shared:
            raise ConfigError(
                f"{len(shared)} of the {len(target.test)} test images of {target.dataset}/{target.category} are "
                f"also training images of the auxiliary dataset {self.name} ({', '.join(self.categories)}), e.g. "
                f"{shared[0]}: the detector would be tested on what it was trained on, not zero-shot.",
                where="detector.auxiliary",
                fix="Train on another dataset, or leave this category out of detector.auxiliary.categories.")

    def load(self) -> TrainSet:
        """Every test image of the chosen categories, resized; an anomalous image without a pixel mask is
        left out (logged): its defect cannot be located."""
        normals, anomalies, masks, skipped = [], [], [], 0
        for data in self._data:
            for item in data.test:
                image = read_image(item.image)
                if not item.is_anomalous:
                    normals.append(resize_image(image, self.image_size))
                    continue
                mask = read_mask(item.mask, image.shape[:2]) if item.mask else None
                if mask is None or not mask.any():
                    skipped += 1
                    continue
                anomalies.append(resize_image(image, self.image_size))
                masks.append(resize_mask(mask, self.image_size))
        if skipped:
            log.warning("Auxiliary data %s: %d anomalous test images without a pixel mask left out", self.name, skipped)
        if not anomalies or not normals:
            raise ConfigError(f"The auxiliary dataset {self.name} ({', '.join(self.categories)}) has "
                              f"{len(normals)} normal and {len(anomalies)} annotated anomalous test images; "
                              "training needs both.", where="detector.auxiliary",
                              fix="Choose another auxiliary dataset or more categories.")
        log.info("Auxiliary data %s: %d normal + %d anomalous test images at %d px", self.name, len(normals),
                 len(anomalies), self.image_size)

        def chw(images: list[np.ndarray]) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)))

        return TrainSet(chw(normals), chw(anomalies), torch.from_numpy(np.stack(masks)),
                        source=f"auxiliary dataset {self.name}")

    def describe(self) -> dict[str, Any]:
        """What the detector was trained on, for metrics.json."""
        return {"dataset": self.name, "categories": self.categories, "image_size": self.image_size,
                "n_test_images": sum(len(d.test) for d in self._data),
                "n_anomalous": sum(len(d.anomalies) for d in self._data)}
