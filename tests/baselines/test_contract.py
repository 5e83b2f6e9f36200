"""Every baseline config: yaml shape, instantiation, output contract, determinism."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from omegaconf import OmegaConf

from cai.synth.base import check_output
from tests.baselines.conftest import CONF_DIR, METHODS, build, compose, context, natural_image
from tests.conftest import REPO_ROOT

TEXTURED = {"draem", "glass"}


def _make(name, texture_dir, normals):
    kw = {"texture_dir": str(texture_dir)} if name in TEXTURED else {}
    synth = build(name, **kw)
    synth.prepare(context(normals))
    return synth


@pytest.mark.parametrize("name", METHODS)
def test_yaml_shape(name):
    raw = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    textures = ["texture_source"] if name in TEXTURED else []  # metrics.json "texture_source" (conf/textures)
    assert list(raw.keys()) == ["name", "display_name", "n_per_image", *textures, "params"]
    assert raw.name == name and raw.n_per_image == 10 and raw.params._target_.startswith("baselines.")
    with open(REPO_ROOT / "results" / "paper" / "table1_pixel_iad.csv") as f:
        assert raw.display_name in {row["synthesizer"] for row in csv.DictReader(f)}


def test_nsa_n_and_m_differ_only_in_clone_mode():
    n, m = (OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{x}.yaml")) for x in ("nsa_n", "nsa_m"))
    assert (n["params"].pop("clone_mode"), m["params"].pop("clone_mode")) == ("normal", "mixed")
    assert n["params"] == m["params"]


@pytest.mark.parametrize("name", METHODS)
def test_instantiates_with_the_default_texture_dir(name, shared_data):
    synth = build(name, shared_data)
    assert type(synth).__module__.startswith("baselines.")
    if name in TEXTURED:
        assert compose(name, shared_data).synthesizer.params.texture_dir == f"{shared_data}/dtd_mini/images"


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("kind", ["odd_size", "gray_rgb"])
def test_output_contract(name, kind, texture_dir):
    rng = np.random.default_rng(0)
    h, w = (200, 296) if kind == "odd_size" else (64, 64)
    normals = [natural_image(rng, h, w) for _ in range(3)]
    if kind == "gray_rgb":
        normals = [np.repeat(n.mean(axis=-1, keepdims=True).astype(np.uint8), 3, axis=2) for n in normals]
    synth = _make(name, texture_dir, normals)
    img, before = normals[0], normals[0].copy()
    fg = np.ones((h, w), bool)
    for out, mask in synth.generate(img, fg, np.random.default_rng(1), 3):
        check_output(img, out, mask)
    assert np.array_equal(img, before)  # input untouched


@pytest.mark.parametrize("name", METHODS)
def test_deterministic_under_a_seed(name, texture_dir):
    rng = np.random.default_rng(7)
    normals = [natural_image(rng, 64, 80) for _ in range(3)]
    fg = np.ones((64, 80), bool)
    runs = []
    for _ in range(2):
        synth = _make(name, texture_dir, normals)
        runs.append(synth.generate(normals[1], fg, np.random.default_rng(42), 4))
    for (a_img, a_mask), (b_img, b_mask) in zip(*runs, strict=True):
        assert a_img.tobytes() == b_img.tobytes() and a_mask.tobytes() == b_mask.tobytes()
    other = _make(name, texture_dir, normals).generate(normals[1], fg, np.random.default_rng(43), 4)
    assert any(a.tobytes() != b.tobytes() for (a, _), (b, _) in zip(runs[0], other, strict=True))
