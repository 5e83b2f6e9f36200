"""selection=val: held-out normals + their pseudo anomalies choose the epoch; the test set never does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cai.detect.trainer import DetectorTrainer, EvalSet, TrainSet
from cai.detect.unet import DiscriminativeUNet
from cai.detect.validation import holdout_indices, split_train_val
from cai.errors import ConfigError
from tests.detect.test_trainer import CFG, _toy


def _tagged_train(n_normal=10, per_image=3, size=8):
    """Every image carries its identity in pixel (0, 0): normal i -> i, pseudo j -> 100 + j."""
    normals = torch.zeros((n_normal, 3, size, size), dtype=torch.uint8)
    normals[:, 0, 0, 0] = torch.arange(n_normal, dtype=torch.uint8)
    n_pseudo = n_normal * per_image
    pseudo = torch.zeros((n_pseudo, 3, size, size), dtype=torch.uint8)
    pseudo[:, 0, 0, 0] = 100 + torch.arange(n_pseudo, dtype=torch.uint8)
    masks = torch.zeros((n_pseudo, size, size), dtype=torch.bool)
    masks[:, 2:4, 2:4] = True
    normal_index = np.repeat(np.arange(n_normal), per_image)
    return TrainSet(normals, pseudo, masks), normal_index


def test_holdout_is_seeded_sized_and_leaves_training_images():
    a = holdout_indices(40, 0.1, seed=0)
    assert len(a) == 4 and np.array_equal(a, holdout_indices(40, 0.1, seed=0))
    assert not np.array_equal(a, holdout_indices(40, 0.1, seed=1))
    assert len(holdout_indices(5, 0.1, seed=0)) == 1                    # at least one
    assert len(holdout_indices(2, 0.9, seed=0)) == 1                    # at least one left to train on
    with pytest.raises(ConfigError):
        holdout_indices(1, 0.1, seed=0)
    with pytest.raises(ConfigError):
        holdout_indices(10, 0.0, seed=0)


def test_no_held_out_normal_or_its_pseudo_anomaly_is_trained_on():
    train, normal_index = _tagged_train()
    held = holdout_indices(10, 0.2, seed=3)
    fit, val = split_train_val(train, normal_index, held)
    held_pseudo = {100 + j for j in np.flatnonzero(np.isin(normal_index, held))}
    fit_ids = set(fit.normals[:, 0, 0, 0].tolist()) | set(fit.pseudo[:, 0, 0, 0].tolist())
    val_ids = set(val.images[:, 0, 0, 0].tolist())
    assert val_ids == set(held.tolist()) | held_pseudo
    assert not fit_ids & val_ids
    assert len(fit.normals) == 8 and len(fit.pseudo) == 24 and len(fit.pseudo_masks) == 24
    # Held-out normals are scored with empty masks, their pseudo anomalies with their own masks.
    assert not val.masks[:2].any() and val.masks[2:].any(dim=(1, 2)).all()
    # The trainer only ever draws from what it is given.
    t = DetectorTrainer(OmegaConf.create({**CFG, "samples_per_epoch": 200}), lambda: None, ".",
                        torch.device("cpu"), seed=0)
    kind, idx = t.epoch_plan(0, len(fit.normals), len(fit.pseudo))
    images, _ = t._batch(fit, kind, idx)
    assert not set(images[:, 0, 0, 0].tolist()) & val_ids


def test_chosen_epoch_follows_the_validation_score_not_the_test_score(tmp_path):
    """Test-set scores rise every epoch, validation scores peak at epoch 2: val picks 2, best picks 4."""
    test_scores = {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.8}
    val_scores = {1: 0.3, 2: 0.9, 3: 0.4, 4: 0.2}

    class Scripted(DetectorTrainer):
        epoch = 0

        def train_epoch(self, model, forward, opt, train, epoch):
            self.epoch = epoch + 1
            return 0.0

        def evaluate(self, model, data):
            v = (val_scores if data.names[0].startswith("val") else test_scores)[self.epoch]
            return {"pixel_auroc": v, "pixel_ap": v, "pro": v, "image_auroc": v}, None

    train, test = _toy(n=4, size=16)
    val = EvalSet(test.images, test.masks, [f"val_{n}" for n in test.names])

    def fit(selection, out):
        cfg = OmegaConf.create({**CFG, "epochs": 4, "selection": selection})
        trainer = Scripted(cfg, lambda: DiscriminativeUNet(base_width=4), tmp_path / out, torch.device("cpu"), 0)
        return trainer.fit(train, test, val=val)

    chosen = fit("val", "val")["selected"]
    assert chosen["epoch"] == 2 and chosen["val_selection_score"] == pytest.approx(3.6)
    assert chosen["pixel_auroc"] == 0.6 and chosen["selection_score"] == pytest.approx(2.4)   # its test metrics
    history = fit("val", "val2")["history"]
    assert [h["pixel_auroc"] for h in history] == [0.5, 0.6, 0.7, 0.8]        # test still evaluated each epoch
    ckpt = torch.load(tmp_path / "val" / "checkpoints" / "best.pt", weights_only=False)
    assert ckpt["record"]["epoch"] == 2
    assert fit("best", "best")["selected"]["epoch"] == 4
    with pytest.raises(ConfigError):
        Scripted(OmegaConf.create({**CFG, "selection": "val"}), lambda: DiscriminativeUNet(base_width=4),
                 tmp_path / "x", torch.device("cpu"), 0).fit(train, test)
