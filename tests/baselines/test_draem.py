"""DRAEM (augment_image): normal probability, β range, blend and mask agreement, texture-dir errors."""

from __future__ import annotations

import numpy as np
import pytest

from baselines.augment import rotate_array
from baselines.textures import DTD_URL, blend_texture
from cai.errors import MissingFileError
from tests.baselines.conftest import build, natural_image, raises_cai


def _img(h=48, w=48, seed=0):
    return natural_image(np.random.default_rng(seed), h, w)


def test_left_normal_and_rotation_probabilities(texture_dir):
    d = build("draem", texture_dir=str(texture_dir))
    img, fg, rng, n = _img(32, 32), np.ones((32, 32), bool), np.random.default_rng(0), 400
    samples = [d.synthesize(img, fg, rng) for _ in range(n)]
    normal = np.mean([s.left_normal for s in samples])
    rotated = np.mean([s.rotation is not None for s in samples])
    assert abs(normal - 0.5) < 4 * np.sqrt(0.25 / n)
    assert abs(rotated - 0.3) < 4 * np.sqrt(0.21 / n)
    for s in samples:
        if s.left_normal:
            assert not s.mask.any()
        if s.rotation is not None:
            assert -90 <= s.rotation <= 90


def test_beta_range(texture_dir):
    d = build("draem", texture_dir=str(texture_dir))
    rng = np.random.default_rng(0)
    betas = np.array([d.draw_beta(rng) for _ in range(3000)])
    assert betas.min() >= 0 and betas.max() < 0.8
    assert betas.min() < 0.01 and betas.max() > 0.79 and abs(betas.mean() - 0.4) < 0.02


def test_blend_formula():
    img = np.full((2, 2, 3), 100, np.uint8)
    tex = np.full((2, 2, 3), 200, np.uint8)
    mask = np.array([[True, False], [False, True]])
    out = blend_texture(img, tex, mask, 0.25)
    assert out[0, 0, 0] == 175 and out[1, 1, 2] == 175  # 0.75*200 + 0.25*100
    assert out[0, 1, 0] == 100 and out[1, 0, 1] == 100


def test_pixels_outside_mask_unchanged(texture_dir):
    d = build("draem", texture_dir=str(texture_dir), rotate_probability=0.0, normal_probability=0.0)
    img, fg, rng = _img(), np.ones((48, 48), bool), np.random.default_rng(1)
    for _ in range(20):
        s = d.synthesize(img, fg, rng)
        assert 0 <= s.beta < 0.8 and len(set(s.augmenters)) == 3
        assert np.array_equal(s.image[~s.mask], img[~s.mask])
        if s.mask.any():
            assert np.any(s.image[s.mask] != img[s.mask])


def test_rotated_draw_returns_the_rotated_image(texture_dir):
    d = build("draem", texture_dir=str(texture_dir), rotate_probability=1.0, normal_probability=0.0)
    img, fg = _img(), np.ones((48, 48), bool)
    s = d.synthesize(img, fg, np.random.default_rng(2))
    base = rotate_array(img, s.rotation)
    assert np.array_equal(s.image[~s.mask], base[~s.mask])


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_texture_dir_error_names_dtd(tmp_path, kind):
    path = tmp_path / "dtd" / "images"
    if kind == "empty":
        (path / "banded").mkdir(parents=True)
    with raises_cai(MissingFileError) as err:
        build("draem", texture_dir=str(path))
    msg = str(err.value)
    assert DTD_URL in msg and str(path) in msg and "images/" in msg and "dtd_mini" in msg


def test_records_carry_the_rotation_and_the_same_draws_as_calls(texture_dir):
    """The cache stores each output's rotation, so label fidelity can leave rotated outputs out."""
    d = build("draem", texture_dir=str(texture_dir), rotate_probability=0.5, normal_probability=0.0)
    img, fg = _img(), np.ones((48, 48), bool)
    records = d.generate_records(img, fg, np.random.default_rng(3), 12)
    calls = [d(img, fg, rng) for rng in [np.random.default_rng(3)] for _ in range(12)]
    rotations = [info["rotation"] for *_, info in records]
    assert any(r is None for r in rotations) and any(r is not None for r in rotations)
    for (out, mask, info), (out2, mask2) in zip(records, calls, strict=True):
        assert np.array_equal(out, out2) and np.array_equal(mask, mask2)
        if info["rotation"] is None:
            assert np.array_equal(out[~mask], img[~mask])  # an unrotated output is aligned with its normal
