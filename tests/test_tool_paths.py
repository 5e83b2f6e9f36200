"""Tools read the same locations as scripts/run.py: the bank build_daad.py writes is the one daad=built
reads, also with CAI_CACHE set and from another working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import compose_config


@pytest.mark.parametrize("env", [{}, {"CAI_CACHE": "/elsewhere/cache", "CAI_SHARED_DATA": "/elsewhere/shared"}])
def test_tools_and_run_agree_on_locations(env, tmp_path, monkeypatch):
    for key in ("CAI_CACHE", "CAI_CACHE_DIR", "CAI_SHARED_DATA"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # relative defaults would land here
    run = compose_config("config", ["daad=built"], tmp_path)
    manifest, shared = str(run.daad.manifest), str(run.paths.shared_data_dir)
    built = compose_config("build_daad", [], tmp_path)
    assert str(built.out) == manifest
    assert str(built.folders[0].root) == f"{shared}/daad_mini"
    grid = compose_config("cai_grid", [], tmp_path)
    assert str(grid.images_dir) == f"{shared}/bsdata_ad/ball_screw/train/good"
    assert Path(manifest).is_absolute()
