"""Label fidelity pinned on hand-made pseudo anomalies: exact masks, doubled masks, invisible changes,
change outside the mask, and the per-scale split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cai.errors import ConfigError
from cai.metrics.label_fidelity import (
    FidelityOptions,
    change_map,
    evaluate_pseudo,
    label_fidelity,
    summarize,
    summarize_groups,
)

CIEDE = FidelityOptions("ciede2000", 2.3)
GREY = FidelityOptions("grey", 7)


def _normal(size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(60, 200, (size, size, 3)).astype(np.uint8)


def _edit(image: np.ndarray, rows: slice, cols: slice, delta: int) -> np.ndarray:
    out = image.astype(np.int16)
    out[rows, cols] += delta
    return np.clip(out, 0, 255).astype(np.uint8)


def _mask(size: int, rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[rows, cols] = True
    return m


@pytest.mark.parametrize("options", [CIEDE, GREY])
def test_mask_equal_to_the_change_is_perfect(options):
    normal = _normal()
    pseudo = _edit(normal, slice(8, 16), slice(8, 24), 40)
    item, change = label_fidelity(normal, pseudo, _mask(32, slice(8, 16), slice(8, 24)), options)
    assert item.iou == 1.0 and item.over == 0.0 and item.under == 0.0 and not item.invisible
    assert item.label_area == item.visible_area == 8 * 16 / 32**2
    assert (change[8:16, 8:24] > options.visibility_threshold).all() and change[:8].max() == 0.0


@pytest.mark.parametrize("options", [CIEDE, GREY])
def test_mask_twice_the_change_is_half_over_labelled(options):
    normal = _normal()
    pseudo = _edit(normal, slice(8, 16), slice(8, 16), 40)
    item, _ = label_fidelity(normal, pseudo, _mask(32, slice(8, 16), slice(8, 24)), options)
    assert item.over == pytest.approx(0.5) and item.under == 0.0 and item.iou == pytest.approx(0.5)
    assert item.label_area == pytest.approx(2 * item.visible_area) and not item.invisible


@pytest.mark.parametrize("delta", [0, 1])
def test_invisible_change_is_flagged(delta):
    """A mask over an unchanged region, or over a change below the threshold (1 grey level ≈ ΔE00 < 1)."""
    normal = _normal()
    pseudo = _edit(normal, slice(8, 16), slice(8, 16), delta)
    mask = _mask(32, slice(8, 16), slice(8, 16))
    for options in (CIEDE, GREY):
        item, change = label_fidelity(normal, pseudo, mask, options)
        assert item.invisible and item.over == 1.0 and item.visible_area == 0.0 and item.iou == 0.0
        assert math.isnan(item.under)
        assert change.max() <= options.visibility_threshold
    assert (change_map(normal, pseudo, "ciede2000")[8:16, 8:16].min() > 0) == (delta > 0)  # changed, not visibly


def test_change_outside_the_mask_is_under_labelling():
    normal = _normal()
    pseudo = _edit(normal, slice(0, 8), slice(0, 32), 50)       # 256 pixels changed
    mask = _mask(32, slice(0, 8), slice(0, 8))                  # 64 of them labelled
    item, _ = label_fidelity(normal, pseudo, mask, CIEDE)
    assert item.under == pytest.approx(0.75) and item.over == 0.0 and item.iou == pytest.approx(0.25)
    # An empty mask on a visibly changed image: all of the change is missed; nothing is over-labelled.
    empty, _ = label_fidelity(normal, pseudo, np.zeros((32, 32), bool), CIEDE)
    assert empty.under == 1.0 and math.isnan(empty.over) and empty.iou == 0.0 and not empty.invisible


def test_a_globally_transformed_output_is_misaligned_and_left_out_of_the_means():
    """DRAEM rotates the whole image and records the angle: that output says nothing about its label. A local
    change outside the mask (a halo outside a tight label) is under-labelling, however large."""
    normal = _normal()
    rotated = np.ascontiguousarray(np.rot90(normal))
    mask = _mask(32, slice(8, 16), slice(8, 16))
    item, _ = label_fidelity(normal, rotated, mask, CIEDE, {"rotation": 90.0})
    assert item.misaligned and item.under > 0.5
    unrotated, _ = label_fidelity(normal, rotated, mask, CIEDE, {"rotation": None})
    assert not unrotated.misaligned
    edited = _edit(normal, slice(0, 24), slice(0, 32), 50)
    local, _ = label_fidelity(normal, edited, mask, CIEDE, {"scale": "large"})
    assert not local.misaligned and local.under > 0.5           # most of the outside changed: under-labelling
    s = summarize([item, local])
    assert s["n"] == 2 and s["n_misaligned"] == 1 and s["under"] == local.under and s["iou"] == local.iou


def test_threshold_decides_visibility():
    normal = _normal()
    pseudo = _edit(normal, slice(8, 16), slice(8, 16), 5)       # 5 grey levels
    mask = _mask(32, slice(8, 16), slice(8, 16))
    assert not label_fidelity(normal, pseudo, mask, FidelityOptions("grey", 4))[0].invisible
    assert label_fidelity(normal, pseudo, mask, FidelityOptions("grey", 5))[0].invisible


def test_ciede2000_matches_skimage_on_every_pixel():
    from skimage.color import deltaE_ciede2000, rgb2lab

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    b = a.copy()
    b[4:12] = rng.integers(0, 256, (8, 16, 3))
    full = deltaE_ciede2000(rgb2lab(a), rgb2lab(b))
    np.testing.assert_allclose(change_map(a, b), full, atol=1e-9)


def test_summary_means_and_split_by_scale():
    normal = _normal()
    exact = _edit(normal, slice(8, 16), slice(8, 16), 40)
    masks = np.stack([_mask(32, slice(8, 16), slice(8, 16)),   # exact
                      _mask(32, slice(8, 16), slice(8, 24)),   # 50 % over
                      _mask(32, slice(20, 28), slice(0, 8)),   # invisible (nothing changed there)
                      np.zeros((32, 32), bool)])                # normal output, nothing changed
    pseudo = np.stack([exact, exact, exact, normal])
    items = evaluate_pseudo([normal], pseudo, masks, [0, 0, 0, 0], CIEDE)
    s = summarize(items)
    assert s["n"] == 4 and s["n_labelled"] == 3 and s["n_invisible"] == 1 and s["n_misaligned"] == 0
    assert s["over"] == pytest.approx((0 + 0.5 + 1) / 3) and s["invisible"] == pytest.approx(1 / 3)
    # IoU: 1, 0.5 and 0 (the invisible one: its mask and the change do not meet); the normal output has none
    assert s["iou"] == pytest.approx(0.5)
    groups = summarize_groups(items, ["large", "small", "small", None])
    assert set(groups) == {"large", "small"}
    assert groups["large"]["iou"] == 1.0 and groups["small"]["over"] == pytest.approx(0.75)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="measure"):
        FidelityOptions("lpips", 1.0)
    with pytest.raises(ConfigError, match="visibility_threshold"):
        FidelityOptions("grey", -1)


def test_every_fidelity_option_and_listed_synthesizer_composes(tmp_path):
    from pathlib import Path

    from tests.conftest import compose_config

    conf = Path(__file__).resolve().parents[2] / "conf"
    options = sorted(p.stem for p in (conf / "fidelity").glob("*.yaml"))
    assert options == ["ciede2000", "grey"]
    for option in options:
        cfg = compose_config("config", [f"fidelity={option}"], tmp_path)
        assert FidelityOptions.from_config(cfg.fidelity).measure == option
    cfg = compose_config("label_fidelity", [], tmp_path)
    assert cfg.fidelity.visibility_threshold == 2.3 and cfg.dataset.name == "bsdata"
    for name in cfg.label_fidelity.synthesizers:
        assert compose_config("label_fidelity", [f"synthesizer={name}"], tmp_path).synthesizer.name == name
