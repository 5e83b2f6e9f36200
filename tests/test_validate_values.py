"""Values that used to fail only after synthesis (or with a traceback) are refused by ``validate_job``,
before any data is read: a bad checkpoint selection or validation share, n_per_image, seed or lr."""

from __future__ import annotations

import pytest

from cai.errors import ConfigError
from cai.validate import validate_job
from tests.conftest import compose_config

BASE = ["logger=none", "foreground=otsu", "dataset=demo", "dataset.image_size=64"]


@pytest.mark.parametrize("override, needle", [
    ("detector.selection=bogus", "detector.selection"),
    ("detector.val_fraction=0", "detector.val_fraction"),
    ("detector.val_fraction=1", "detector.val_fraction"),
    ("synthesizer.n_per_image=0", "synthesizer.n_per_image"),
    ("seed=-1", "seed"),
    ("detector.lr=-1", "detector.lr"),
    ("detector.lr=0", "detector.lr"),
    ("detector.eval_every=0", "detector.eval_every"),
])
def test_bad_values_stop_before_any_work(override, needle, tmp_path):
    extra = ["detector.selection=val"] if "val_fraction" in override else []
    cfg = compose_config("config", [*BASE, *extra, override, f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path)
    with pytest.raises(ConfigError) as err:
        validate_job(cfg, tmp_path / "run")
    assert needle in err.value.message
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("overrides", [
    [], ["detector.selection=val", "detector.val_fraction=0.99"], ["detector.selection=last"], ["seed=0"],
    ["detector.val_fraction=0"],  # not read unless selection=val
])
def test_good_values_pass(overrides, tmp_path):
    cfg = compose_config("config", [*BASE, *overrides, f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path)
    validate_job(cfg, tmp_path / "run")


@pytest.mark.parametrize("overrides", [
    ["synthesizer=cai_n", "synthesizer.n_per_image=2"],
    ["synthesizer=cai_m", "scale.large=5"],
    ["synthesizer=cai_n", "debug=smoke"],  # the profile's documented CAI use
])
def test_cai_quotas_must_add_up_before_any_data_is_read(overrides, tmp_path):
    cfg = compose_config("config", [*BASE, *overrides, f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path)
    if "debug=smoke" in overrides:
        validate_job(cfg, tmp_path / "run")  # the profile keeps the quotas and n_per_image consistent
        return
    with pytest.raises(ConfigError) as err:
        validate_job(cfg, tmp_path / "run")
    assert "add up to" in err.value.message


def test_a_run_too_big_for_memory_stops_with_a_size_that_fits(tmp_path):
    """image_size=4096 used to be OOM-killed with no message; now it stops before any image is read."""
    from cai.validate import check_memory, estimate_job_memory

    cfg = compose_config("config", [*BASE, "dataset.image_size=4096"], tmp_path)
    per_image = int(cfg.synthesizer.n_per_image)
    need = estimate_job_memory(200, 100, per_image, 4096)
    assert need > 100 * 1024 ** 3  # 200 x 11 uint8 images of 4096^2 x 3, twice: ~220 GiB
    with pytest.raises(ConfigError) as err:
        check_memory(cfg, 200, 100, available=24 * 1024 ** 3)
    assert "dataset.image_size" in err.value.message and "GiB" in err.value.message
    fits = int(err.value.fix.split("e.g. ")[1].split(";")[0])
    assert fits < 4096 and estimate_job_memory(200, 100, per_image, fits) <= 24 * 1024 ** 3
    check_memory(cfg, 200, 100, available=need)  # exactly enough: no error
    cfg256 = compose_config("config", [*BASE, "dataset.image_size=256"], tmp_path)
    check_memory(cfg256, 200, 100, available=24 * 1024 ** 3)


@pytest.mark.parametrize("size, available_at", [(800, 400), (96, 40), (224, 100), (4096, 1000)])
def test_the_size_suggested_for_memory_is_one_the_detector_takes(size, available_at, tmp_path):
    """The suggestion used to halve the size (800 -> 400, 96 -> 48), which check_image_size then refused: it is
    the largest multiple of the detector's quantum (32) that fits."""
    from cai.validate import check_image_size, check_memory, estimate_job_memory, min_image_size

    cfg = compose_config("config", [*BASE, f"dataset.image_size={size}"], tmp_path)
    per_image, quantum = int(cfg.synthesizer.n_per_image), min_image_size(cfg)
    available = estimate_job_memory(200, 100, per_image, available_at)
    with pytest.raises(ConfigError) as err:
        check_memory(cfg, 200, 100, available=available)
    fits = int(err.value.fix.split("e.g. ")[1].split(";")[0])
    assert fits % quantum == 0 and estimate_job_memory(200, 100, per_image, fits) <= available
    assert estimate_job_memory(200, 100, per_image, fits + quantum) > available  # the largest that fits
    cfg.dataset.image_size = fits
    check_image_size(cfg)
