"""Grids (cai/synth/grid.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cai.io import read_image
from cai.synth.grid import outline, save_grid, tile


def test_tile_and_save_grid(tmp_path: Path) -> None:
    img = np.full((20, 20, 3), 50, np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True
    grid = tile([[img, img], [mask, outline(img, mask)]], pad=2)
    assert grid.shape == (2 * 22 + 2, 2 * 22 + 2, 3) and grid.dtype == np.uint8
    assert (grid[2 + 22 + 7, 2 + 7] == 255).all()  # the mask cell is white inside the mask
    out = save_grid(tmp_path / "g.png", [[img], [mask]], labels=["normal", "mask"], cell=40)
    assert np.array_equal(read_image(tmp_path / "g.png"), out) and out.shape[0] == 2 * 42 + 2


def test_cai_grid_script(tmp_path: Path) -> None:
    import importlib.util

    from hydra import compose, initialize_config_dir

    from cai.io import write_png

    from .conftest import CONF, REPO, target_image, write_bank

    manifest = write_bank(tmp_path / "bank")
    for i in range(2):
        write_png(tmp_path / "imgs" / f"{i}.png", target_image(i))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "cai_grid",
            overrides=[
                f"images_dir={tmp_path / 'imgs'}",
                f"daad.manifest={manifest}",
                "++daad.source_group_of.dagm=existing_datasets",
                "++daad.source_group_of.btad=online_search",
                "leakage_sources=[btad]",
                "image_size=128",
                "n_images=2",
                f"out={tmp_path / 'grid.png'}",
            ],
        )
    assert cfg.modes.cai_n.params.clone_mode == "normal" and cfg.modes.cai_m.params.clone_mode == "mixed"
    assert cfg.modes.cai_m.params.label.threshold == 7  # inherited from cai_n through cai_m's defaults
    spec = importlib.util.spec_from_file_location("cai_grid", REPO / "scripts" / "cai_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.run(cfg)
    assert read_image(out).shape == (5 * 130 + 2, 110 + 2 * 130 + 2, 3)


def test_cai_region_stats_script_replays_the_same_draws(tmp_path: Path) -> None:
    import importlib.util
    import json

    from hydra import compose, initialize_config_dir

    from cai.io import write_png

    from .conftest import CONF, REPO, target_image, write_bank

    manifest = write_bank(tmp_path / "bank")
    for i in range(2):
        write_png(tmp_path / "imgs" / f"{i}.png", target_image(i))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("cai_region_stats", overrides=[
            f"images_dir={tmp_path / 'imgs'}", f"daad.manifest={manifest}",
            "++daad.source_group_of.dagm=existing_datasets", "++daad.source_group_of.btad=online_search",
            "leakage_sources=[]", "image_size=128", "n_images=2", "grid_images=2", "cell=64",
            f"out_dir={tmp_path / 'out'}",
        ])
    assert [m.params.clone.region for m in cfg.modes.values()] == ["official", "official", "context", "official"]
    spec = importlib.util.spec_from_file_location("cai_region_stats", REPO / "scripts" / "cai_region_stats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.run(cfg)
    stats = json.loads((out / "region_stats.json").read_text())
    modes = stats["modes"]
    assert sum(stats["draws_per_scale"].values()) == 20
    for scale in ("large", "medium"):
        assert modes["cai_n_context"][scale]["labelled"] == modes["cai_n_context"][scale]["n"] > 0  # its own draws
        assert modes["cai_n_context"][scale]["paired_ratio_to_cai_n"] > 1  # context labels are larger
        assert modes["cai_n_tight"][scale]["paired_ratio_to_cai_n"] < 1  # the tight label drops the halo
    assert read_image(out / "region_grid.png").shape == (5 * 66 + 2, 110 + 2 * 66 + 2, 3)
