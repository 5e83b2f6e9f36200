"""Texture source of DRAEM / GLASS (issue #11): table runs read the full DTD, the rest dtd_mini; clear errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from baselines.textures import DTD_URL, MissingTexturesError, TextureSource
from cai.errors import ConfigError, MissingFileError
from tests.baselines.conftest import build, raises_cai
from tests.conftest import compose_config

EXPERIMENTS = ["table1", "table3", "table4", "fig7a", "fig7c", "fig7d"]


@pytest.mark.parametrize("method", ["draem", "glass"])
def test_default_runs_read_dtd_mini(method, tmp_path):
    cfg = compose_config("config", [f"synthesizer={method}"], tmp_path)
    assert cfg.synthesizer.texture_source == "dtd_mini"
    assert cfg.synthesizer.params.texture_dir == f"{cfg.paths.shared_data_dir}/dtd_mini/images"
    assert cfg.synthesizer.params.min_texture_classes is None


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("method", ["draem", "glass"])
def test_table_runs_read_the_full_dtd_from_paths_dtd_dir(experiment, method, tmp_path):
    cfg = compose_config("config", [f"experiment={experiment}", f"synthesizer={method}",
                                    "paths.data_dir=/data/x"], tmp_path)
    assert cfg.textures.name == cfg.synthesizer.texture_source == "dtd"
    assert cfg.paths.dtd_dir == "/data/x/dtd/images" == cfg.synthesizer.params.texture_dir
    assert cfg.synthesizer.params.min_texture_classes == 47


def test_synthesizers_without_textures_record_none(tmp_path):
    for name in ("cutpaste", "nsa_n", "cai_n", "realnet"):
        assert compose_config("config", [f"synthesizer={name}"], tmp_path).synthesizer.get("texture_source") is None


@pytest.mark.parametrize("method", ["draem", "glass"])
def test_missing_full_dtd_is_a_config_error_naming_the_download_and_place(method, tmp_path):
    where = tmp_path / "data" / "dtd" / "images"
    with raises_cai(ConfigError) as err:
        build(method, texture_dir=str(where))
    assert isinstance(err.value, MissingFileError) and isinstance(err.value, MissingTexturesError)
    msg = str(err.value)
    assert DTD_URL in msg and str(where) in msg and "paths.dtd_dir" in msg and "textures=dtd_mini" in msg


def test_texture_class_count_is_recorded_and_checked(texture_dir: Path, caplog):
    with caplog.at_level(logging.INFO, logger="baselines.textures"):
        src = TextureSource(texture_dir, "DRAEM", min_classes=47)
    assert src.n_classes == 2 and len(src.paths) == 6
    assert "only 2 texture classes" in caplog.text and "expected 47" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="baselines.textures"):
        TextureSource(texture_dir, "DRAEM", min_classes=2)
    assert "only" not in caplog.text and "6 images in 2 classes" in caplog.text


def test_textures_with_an_upper_case_suffix_are_found(texture_dir: Path):
    """``*/*.jpg`` missed ``.JPG`` files: a texture folder written so was reported missing or incomplete."""
    for path in sorted(texture_dir.rglob("*.jpg"))[:3]:
        path.rename(path.with_suffix(".JPG"))
    src = TextureSource(texture_dir, "DRAEM")
    assert len(src.paths) == 6 and sum(p.suffix == ".JPG" for p in src.paths) == 3
