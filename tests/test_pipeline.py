"""The pipeline's data preparation on awkward real-world input: mixed sizes, grey, 16-bit and RGBA files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from cai.pipeline import load_category, prepare_category


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def test_mixed_sizes_and_formats_become_one_uniform_set(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "factory"
    cat = root / "part"
    _write(cat / "train/good/a.png", rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))         # colour
    _write(cat / "train/good/b.png", rng.integers(0, 256, (64, 64), dtype=np.uint8))            # grey
    _write(cat / "train/good/c.png", rng.integers(0, 65535, (30, 20), dtype=np.uint16))         # 16-bit
    _write(cat / "train/good/d.png", rng.integers(0, 256, (48, 36, 4), dtype=np.uint8))         # RGBA
    _write(cat / "test/good/e.png", rng.integers(0, 256, (50, 40, 3), dtype=np.uint8))
    _write(cat / "test/scratch/f.png", rng.integers(0, 256, (60, 80), dtype=np.uint8))
    mask = np.zeros((60, 80), np.uint8)
    mask[10:30, 20:60] = 1                                                                      # a 0/1 mask
    _write(cat / "ground_truth/scratch/f_mask.png", mask)
    cfg = OmegaConf.create({
        "dataset": {"category": "part", "image_size": 32,
                    "reader": {"_target_": "cai.data.readers.FolderReader", "name": "factory", "root": str(root),
                               "categories": [], "textures": [], "download": "your own images"}},
        "foreground": {"_target_": "cai.foreground.FullForeground"},
    })
    prep = prepare_category(cfg, load_category(cfg))
    assert len(prep.normals) == 4 and all(n.shape == (32, 32, 3) and n.dtype == np.uint8 for n in prep.normals)
    assert prep.test_images.shape == (2, 32, 32, 3) and prep.test_masks.shape == (2, 32, 32)
    assert prep.test_masks.dtype == bool and not prep.test_masks[0].any()
    # The 0/1 mask covers rows 10-29, columns 20-59 of 60x80: about a sixth of the resized mask.
    assert abs(prep.test_masks[1].mean() - (20 * 40) / (60 * 80)) < 0.03


def _folder_cfg(tmp_path, root):
    from omegaconf import open_dict

    from tests.conftest import compose_config

    cfg = compose_config("config", ["logger=none", "foreground=full", "synthesizer=cutpaste", "synthesis.workers=1",
                                    "synthesizer.n_per_image=1", "dataset.image_size=32",
                                    f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path / "run")
    with open_dict(cfg):
        cfg.dataset.category = "part"
        cfg.dataset.reader = {"_target_": "cai.data.readers.FolderReader", "name": "factory", "root": str(root),
                              "categories": [], "textures": [], "download": "your own images"}
    return cfg


def _cache_for(cfg):
    from cai.pipeline import synthesize

    prep = prepare_category(cfg, load_category(cfg))
    directory, images, _, _ = synthesize(cfg, prep)
    return directory, images


def test_pseudo_anomaly_cache_follows_the_training_images_not_their_count(tmp_path):
    """Two folders with as many (same-named) images get different caches; a changed image is not reused."""
    import os

    for name, seed in (("a", 0), ("b", 1)):
        rng = np.random.default_rng(seed)
        for i in range(3):
            _write(tmp_path / name / "part" / f"train/good/{i}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        _write(tmp_path / name / "part" / "test/good/t.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    dir_a, pseudo_a = _cache_for(_folder_cfg(tmp_path, tmp_path / "a"))
    dir_b, pseudo_b = _cache_for(_folder_cfg(tmp_path, tmp_path / "b"))
    assert dir_a != dir_b and not np.array_equal(pseudo_a, pseudo_b)
    assert _cache_for(_folder_cfg(tmp_path, tmp_path / "a"))[0] == dir_a          # unchanged: reused
    # The same folder with one image rewritten (same name, same size) or just touched is a new entry.
    img = tmp_path / "a" / "part" / "train/good/0.png"
    _write(img, np.full((32, 32, 3), 7, np.uint8))
    dir_changed, pseudo_changed = _cache_for(_folder_cfg(tmp_path, tmp_path / "a"))
    assert dir_changed != dir_a and not np.array_equal(pseudo_changed, pseudo_a)
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert _cache_for(_folder_cfg(tmp_path, tmp_path / "a"))[0] not in (dir_a, dir_changed)


def test_finished_run_on_replaced_images_is_refused_not_reported(tmp_path):
    """A run dir is named by its config only: after the training images were replaced, a rerun must not
    print the old metrics as "Already finished" but say the data changed."""
    import json

    from cai.pipeline import _data_digests, run_job
    from cai.runid import RunDataConflict

    rng = np.random.default_rng(0)
    for i in range(3):
        _write(tmp_path / "d" / "part" / f"train/good/{i}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    _write(tmp_path / "d" / "part" / "test/good/t.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    cfg = _folder_cfg(tmp_path, tmp_path / "d")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"metrics": {"pixel_auroc": 0.5}}))
    (run_dir / "run_info.json").write_text(json.dumps({"data": _data_digests(load_category(cfg))}))
    (run_dir / "done").write_text("ok\n")
    assert run_job(cfg, run_dir)["metrics"] == {"pixel_auroc": 0.5}  # same data: finished, skipped
    _write(tmp_path / "d" / "part" / "train/good/1.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    with pytest.raises(RunDataConflict) as err:
        run_job(cfg, run_dir)
    assert "train images differ" in err.value.message and str(run_dir) in err.value.message


def test_finished_run_on_a_test_image_edited_in_place_is_refused_old_records_are_not(tmp_path):
    """run_info.json's test manifest covered names and sizes only: a test image edited in place with the same size
    (BMP) left a finished run "Already finished" with metrics of the old image. Now its content counts; a run
    recorded before (names and sizes only) is still found finished, not refused for lacking the content."""
    import json

    from cai.pipeline import _data_digests, run_job
    from cai.runid import RunDataConflict

    rng = np.random.default_rng(0)
    for i in range(3):
        _write(tmp_path / "d" / "part" / f"train/good/{i}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    test_image = tmp_path / "d" / "part" / "test" / "good" / "t.bmp"
    _write(test_image, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    cfg = _folder_cfg(tmp_path, tmp_path / "d")
    digests = _data_digests(load_category(cfg))
    assert set(digests) == {"train", "test", "test_content"}
    old, new = tmp_path / "old_run", tmp_path / "new_run"
    for run_dir, recorded in ((old, {k: digests[k] for k in ("train", "test")}), (new, digests)):
        run_dir.mkdir()
        (run_dir / "metrics.json").write_text(json.dumps({"metrics": {"pixel_auroc": 0.5}}))
        (run_dir / "run_info.json").write_text(json.dumps({"data": recorded}))
        (run_dir / "done").write_text("ok\n")
    size = test_image.stat().st_size
    _write(test_image, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))  # same size, other pixels
    assert test_image.stat().st_size == size
    with pytest.raises(RunDataConflict) as err:
        run_job(cfg, new)
    assert "test images or masks differ" in err.value.message and "contents" in err.value.message
    assert run_job(cfg, old)["metrics"] == {"pixel_auroc": 0.5}


def test_run_too_big_for_memory_stops_before_reading_images(tmp_path, monkeypatch):
    """The pipeline asks check_memory before prepare_category: no image is read, no cache is made."""
    from omegaconf import open_dict

    import cai.pipeline as pipeline
    from cai.errors import ConfigError

    root = tmp_path / "data"
    for i in range(3):
        _write(root / "part" / "train" / "good" / f"{i}.png", np.full((40, 40, 3), 100 + i, np.uint8))
    _write(root / "part" / "test" / "good" / "n.png", np.full((40, 40, 3), 100, np.uint8))
    _write(root / "part" / "test" / "dent" / "d.png", np.full((40, 40, 3), 200, np.uint8))
    _write(root / "part" / "ground_truth" / "dent" / "d_mask.png", np.full((40, 40), 255, np.uint8))
    cfg = _folder_cfg(tmp_path, root)
    with open_dict(cfg):
        cfg.dataset.image_size = 4096
    monkeypatch.setattr("cai.validate.available_memory", lambda: 256 * 1024 ** 2)  # 256 MiB free
    read = []
    monkeypatch.setattr(pipeline, "prepare_category", lambda *a: read.append(a))
    with pytest.raises(ConfigError, match="in memory"):
        pipeline.run_job(cfg, tmp_path / "run")
    assert read == [] and not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
