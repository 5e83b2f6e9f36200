"""Masks are resized so that thin defects survive, and image labels come from the original masks (#11)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cai.detect.trainer import DetectorTrainer, EvalSet
from cai.io import mask_coverage, resize_mask, write_png
from cai.metrics import AnomalyMetrics


def _lines(shape: tuple[int, int], n: int, seed: int):
    """1-px horizontal and vertical segments at random places (the KSDD2 case: 1-px-high scratches)."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        m = np.zeros(shape, bool)
        if k % 2:
            r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1] // 2)
            m[r, c : c + rng.integers(8, shape[1] // 2)] = True
        else:
            c, r = rng.integers(0, shape[1]), rng.integers(0, shape[0] // 2)
            m[r : r + rng.integers(8, shape[0] // 2), c] = True
        yield m


@pytest.mark.parametrize("shape", [(1024, 1024), (230, 630), (630, 230)])
def test_every_one_pixel_line_survives(shape):
    for mask in _lines(shape, 60, seed=shape[1]):
        out = resize_mask(mask, 256)
        assert out.shape == (256, 256) and out.any()
        # It stays a line, not a dot: its length in output pixels follows the scale.
        rows, cols = np.nonzero(mask)
        extent = max((np.ptp(rows) + 1) * 256 / shape[0], (np.ptp(cols) + 1) * 256 / shape[1])
        r2, c2 = np.nonzero(out)
        assert max(np.ptp(r2), np.ptp(c2)) + 1 >= extent - 2  # the majority rule may trim partial end pixels


def test_large_regions_follow_the_majority_rule():
    mask = np.zeros((1024, 1024), bool)
    mask[100:300, 101:301] = True  # 200 px = 50 output px; a 1-px offset does not grow it
    out = resize_mask(mask, 256)
    assert out.sum() == 50 * 50
    assert np.array_equal(resize_mask(mask[::4, ::4], 1024), np.kron(mask[::4, ::4], np.ones((4, 4), bool)))
    cov = mask_coverage(mask, (256, 256))
    assert cov.max() == pytest.approx(1.0) and cov.sum() == pytest.approx(mask.sum() / 16)


def test_empty_and_same_size_masks():
    assert not resize_mask(np.zeros((100, 300), bool), 256).any()
    m = np.eye(64, dtype=bool)
    assert resize_mask(m, 64) is m or np.array_equal(resize_mask(m, 64), m)


def test_image_label_comes_from_the_given_labels():
    """A defect lost to resizing must not turn its image into a normal one: labels may be given."""
    maps = torch.rand(4, 32, 32)
    masks = torch.zeros(4, 32, 32, dtype=torch.bool)
    masks[0, 3:6, 3:6] = True
    labels = torch.tensor([True, True, False, False])  # image 1's defect vanished from its small mask
    m = AnomalyMetrics()
    m.update(maps, masks, labels=labels)
    maps_scores = m.compute()
    default = AnomalyMetrics()
    default.update(maps, masks)
    assert np.array_equal(np.concatenate(m._labels), labels.numpy())
    assert np.array_equal(np.concatenate(default._labels), [True, False, False, False])
    assert maps_scores["pixel_auroc"] == default.compute()["pixel_auroc"]
    with pytest.raises(ValueError):
        AnomalyMetrics().update(maps, masks, labels=labels[:2])


def test_pipeline_labels_test_images_from_their_original_masks(tmp_path):
    """prepare_category: a 1-px defect in a 1024-px image keeps its image label and its resized mask."""
    from omegaconf import OmegaConf

    from cai.data.types import CategoryData, TestItem
    from cai.pipeline import prepare_category

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    mask = np.zeros((1024, 1024), bool)
    mask[501, 100:900] = True  # a 1-px scratch: nearest-neighbour sampling at 4x misses row 501
    write_png(tmp_path / "train.png", img)
    write_png(tmp_path / "bad.png", img)
    write_png(tmp_path / "bad_mask.png", mask)
    write_png(tmp_path / "good.png", img)
    data = CategoryData("d", "c", tmp_path, True, (tmp_path / "train.png",),
                        (TestItem(tmp_path / "good.png", "good"),
                         TestItem(tmp_path / "bad.png", "scratch", tmp_path / "bad_mask.png")))
    cfg = OmegaConf.create({"dataset": {"image_size": 256},
                            "foreground": {"_target_": "cai.foreground.FullForeground"}})
    prep = prepare_category(cfg, data)
    assert prep.test_labels.tolist() == [False, True]
    assert prep.test_masks[1].sum() >= 200 and not prep.test_masks[0].any()


def test_trainer_evaluates_with_the_eval_set_labels(tmp_path, monkeypatch):
    seen = {}

    from cai.metrics import Evaluation

    def spy(self, maps, masks, labels=None, has_mask=None, scores=None):
        seen["labels"], seen["has_mask"] = labels, has_mask

    monkeypatch.setattr(AnomalyMetrics, "update", spy)
    monkeypatch.setattr(AnomalyMetrics, "evaluate", lambda self, backend="auto": Evaluation({}))
    cfg = _detector_cfg()
    trainer = DetectorTrainer(cfg, lambda: torch.nn.Conv2d(3, 2, 1), tmp_path, torch.device("cpu"), 0)
    labels, has_mask = torch.tensor([True, False]), torch.tensor([False, True])
    trainer.evaluate(torch.nn.Conv2d(3, 2, 1), EvalSet(torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
                                                        torch.zeros(2, 8, 8, dtype=torch.bool), ["a", "b"], labels,
                                                        has_mask))
    assert seen["labels"] is labels and seen["has_mask"] is has_mask


def _detector_cfg():
    """A tiny detector config for the trainer's evaluate()."""
    from omegaconf import OmegaConf

    return OmegaConf.create({"loss": {"gamma": 2.0, "alpha": 1.0, "smooth": 1e-5}, "selection": "best",
                             "eval_batch_size": 2, "pro_fpr_limit": 0.3, "image_score_pool": 3, "amp": False,
                             "channels_last": False})


def test_a_thin_crack_attached_to_a_blob_keeps_its_length():
    """A 1-px crack running 400 px out of a 200-px blob: the blob alone used to survive the 4x shrink."""
    mask = np.zeros((1024, 1024), bool)
    mask[100:300, 100:300] = True
    mask[200, 300:700] = True  # the crack, joined to the blob
    out = resize_mask(mask, 256)
    crack = out[48:53, 75:175]  # output rows around 200/4, columns 300/4 .. 700/4
    assert crack.any(axis=0).sum() >= 99  # a continuous line of ~100 output pixels
    assert out[:, 75:].sum() <= 2 * 100  # a line, not a band
    blob = out[25:75, 25:75]
    assert blob.all() and out[:, :75].sum() == 50 * 50  # the blob keeps the majority rule exactly


@pytest.mark.parametrize("shape, size", [((512, 512), 128), ((512, 512), 64), ((208, 512), 256), ((600, 800), 256)])
def test_a_large_round_blob_follows_the_majority_rule_exactly(shape, size):
    """The thin-part rule also took the boundary crumbs of a round blob (the staircase corners an opening with an
    output-pixel box removes, 1-3 px) for thin defects and marked the output pixels their skeleton touches, so
    discs and ellipses grew by pixels that are 6-25 % anomalous (a disc of radius 100 at 4x: 2 pixels; the 167
    BSData pitting masks at 256 px: 152, of which 20 remain, from real thin parts). A blob without thin parts
    keeps exactly the majority rule."""
    h, w = shape
    yy, xx = np.ogrid[:h, :w]
    blob = ((yy - h / 2) / (0.4 * h)) ** 2 + ((xx - w / 2) / (0.3 * w)) ** 2 <= 1
    majority = mask_coverage(blob, (size, size)) >= 0.5 - 1e-6
    assert np.array_equal(resize_mask(blob, size), majority)
    disc = (yy - h / 2) ** 2 + (xx - w / 3) ** 2 <= (0.2 * min(h, w)) ** 2
    assert np.array_equal(resize_mask(disc, size), mask_coverage(disc, (size, size)) >= 0.5 - 1e-6)
