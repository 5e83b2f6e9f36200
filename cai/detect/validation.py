"""A held-out validation set for choosing the detector's epoch without the test set (``selection=val``).

A fraction of the normal training images is held out together with every pseudo anomaly made from them:
the detector never trains on a held-out normal or on an anomaly injected into one, and each evaluated
epoch is scored on them (normals with empty masks, pseudo anomalies with their masks) by the same
``selection_score`` the paper applies to the test set.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from cai.detect.trainer import EvalSet, TrainSet
from cai.errors import ConfigError

_STREAM = zlib.crc32(b"validation-holdout")


def holdout_indices(n_normals: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the held-out normals: ``round(fraction * n)``, at least 1 and leaving at least 1
    to train on; drawn by a generator seeded by ``seed`` only."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"detector.val_fraction must be in (0, 1), got {fraction}.",
                          fix="e.g. detector.val_fraction=0.1")
    if n_normals < 2:
        raise ConfigError(f"detector.selection=val needs at least 2 normal training images, got {n_normals}.",
                          fix="Use detector.selection=best or last for this category.")
    k = min(n_normals - 1, max(1, round(fraction * n_normals)))
    rng = np.random.default_rng([int(seed), _STREAM])
    return np.sort(rng.choice(n_normals, size=k, replace=False))


def split_train_val(train: TrainSet, normal_index: np.ndarray | list[int],
                    held_out: np.ndarray) -> tuple[TrainSet, EvalSet]:
    """Split ``train`` into what the detector trains on and the validation set.

    ``normal_index[j]`` is the normal image pseudo anomaly ``j`` was made from; pseudo anomalies of a
    held-out normal go to the validation set, all others stay in training."""
    normal_index = np.asarray(normal_index)
    if len(normal_index) != len(train.pseudo):
        raise ValueError(f"{len(normal_index)} normal indices for {len(train.pseudo)} pseudo anomalies")
    held = np.zeros(len(train.normals), bool)
    held[held_out] = True
    pseudo_held = held[normal_index] if len(normal_index) else np.zeros(0, bool)
    keep_n, keep_p = torch.from_numpy(~held), torch.from_numpy(~pseudo_held)
    val_n, val_p = torch.from_numpy(held), torch.from_numpy(pseudo_held)
    fit = TrainSet(train.normals[keep_n], train.pseudo[keep_p], train.pseudo_masks[keep_p], train.source)
    h, w = train.normals.shape[-2:]
    n_val = int(held.sum())
    images = torch.cat([train.normals[val_n], train.pseudo[val_p]])
    masks = torch.cat([torch.zeros((n_val, h, w), dtype=torch.bool), train.pseudo_masks[val_p].bool()])
    names = [f"val_normal/{i}" for i in np.flatnonzero(held)] + [f"val_pseudo/{j}" for j in np.flatnonzero(pseudo_held)]
    if not bool(masks.any()):
        raise ConfigError(f"The validation set ({n_val} held-out normals) has no pseudo anomaly with a non-empty "
                          "mask, so it cannot score an epoch.",
                          fix="Raise detector.val_fraction or synthesizer.n_per_image.")
    return fit, EvalSet(images, masks, names)
