"""Up-front checks of a run's config and storage, so a bad setting stops with one clear message
before any synthesis or training time is spent (instead of a traceback, or an error an hour later).

``validate_job(cfg, run_dir)`` is called first thing by :func:`cai.pipeline.run_job`;
``check_test_set`` after the test set is read (a test set with nothing to measure stops there).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from cai.detect.auxiliary import check_train_on
from cai.errors import ConfigError, DatasetError
from cai.io import check_writable
from cai.synth.cai import check_quota_sum

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
SELECTIONS = ("best", "val", "last")  # detector.selection (cai/detect/trainer.py)


def validate_job(cfg: DictConfig, run_dir: str | Path) -> None:
    """Every check that needs no data: overrides, detector settings, image size, device, storage."""
    check_overrides(cfg)
    check_required(cfg)
    check_detector(cfg)
    check_train_on(cfg)
    check_synthesis(cfg)
    check_image_size(cfg)
    from cai.detect.trainer import resolve_device

    resolve_device(str(cfg.device))
    check_writable(run_dir, "run dir")
    check_writable(Path(str(cfg.paths.cache_dir)), "cache dir (paths.cache_dir)")


def check_required(cfg: DictConfig) -> None:
    """Settings marked ``???`` in conf/ (e.g. ``dataset.reader.root`` of ``dataset=folder``) must be given."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra"))
    if missing:
        raise ConfigError(f"Required setting(s) not given: {', '.join(missing)}.", where=missing[0],
                          fix=" ".join(f"{k}=..." for k in missing) + " on the command line.")


def _positive_int(cfg: DictConfig, key: str, minimum: int = 1) -> int:
    value = OmegaConf.select(cfg, key)
    try:
        number = int(value)
        ok = number == float(value) and number >= minimum
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{key} must be a whole number >= {minimum}, got {value!r}.",
                          where=key, fix=f"Pass e.g. {key}={max(minimum, 1)} or leave it at its default.")
    return number


def check_detector(cfg: DictConfig) -> None:
    """Epochs, batch sizes, samples per epoch and eval_every are positive whole numbers (samples per epoch
    may be null: one pass over the training set); lr is positive; the detector family's own checks
    (``DetectorTrainer.check_config``); the selection is known (and val_fraction in (0, 1) for selection=val)."""
    for key in ("detector.epochs", "detector.batch_size", "detector.eval_batch_size", "detector.samples_per_epoch",
                "detector.eval_every"):  # eval_every 0 would make selection=best silently the last epoch
        if key == "detector.samples_per_epoch" and OmegaConf.select(cfg, key) is None:
            continue
        _positive_int(cfg, key)
    fraction = OmegaConf.select(cfg, "detector.anomaly_fraction")
    if not isinstance(fraction, (int, float)) or not 0.0 <= float(fraction) <= 1.0:
        raise ConfigError(f"detector.anomaly_fraction must be in [0, 1], got {fraction!r}.",
                          where="detector.anomaly_fraction", fix="Pass e.g. detector.anomaly_fraction=0.5.")
    lr = OmegaConf.select(cfg, "detector.lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not float(lr) > 0.0:
        raise ConfigError(f"detector.lr must be a positive number, got {lr!r}.", where="detector.lr",
                          fix="Pass e.g. detector.lr=1e-4 (the paper's) or leave it at its default.")
    from cai.detect.trainer import trainer_class

    trainer_class(cfg.detector).check_config(cfg.detector)  # e.g. HeadCLIP's values, weights file, CLIP shape
    selection = OmegaConf.select(cfg, "detector.selection")
    if selection not in SELECTIONS:
        raise ConfigError(f"detector.selection must be one of {list(SELECTIONS)}, got {selection!r}.",
                          where="detector.selection",
                          fix="Pass detector.selection=best (paper), val (held-out pseudo anomalies) or last.")
    if selection == "val":
        val_fraction = OmegaConf.select(cfg, "detector.val_fraction")
        if (isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float))
                or not 0.0 < float(val_fraction) < 1.0):
            raise ConfigError(f"detector.val_fraction must be in (0, 1) with detector.selection=val, got "
                              f"{val_fraction!r}.", where="detector.val_fraction",
                              fix="Pass e.g. detector.val_fraction=0.1.")


def check_synthesis(cfg: DictConfig) -> None:
    """Outputs per normal image and the seed are whole numbers (n_per_image >= 1, seed >= 0), and a
    synthesizer that reads the ``scale`` group (CAI) gets quotas adding up to n_per_image: checked here
    from the config alone, not after every training image and foreground was read (CAISynthesizer.prepare
    checks it again, with the quotas' types)."""
    n = _positive_int(cfg, "synthesizer.n_per_image")
    _positive_int(cfg, "seed", minimum=0)
    reads = OmegaConf.select(cfg, "synthesizer.reads_groups") or []
    scale = OmegaConf.select(cfg, "scale")
    if "scale" not in reads or not isinstance(scale, DictConfig):
        return
    quotas = OmegaConf.to_container(scale, resolve=True)
    assert isinstance(quotas, dict)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in quotas.values()):
        check_quota_sum(quotas, n)


def min_image_size(cfg: DictConfig) -> int:
    """The detector's size quantum: its input is halved ``levels - 1`` times (DiscriminativeUNet: 32)."""
    from hydra.utils import get_class

    target = OmegaConf.select(cfg, "detector.model._target_")
    levels = getattr(get_class(target), "levels", 1) if target else 1
    return 2 ** (int(levels) - 1)


def check_image_size(cfg: DictConfig) -> None:
    """``dataset.image_size`` is a positive multiple of what the detector's down-sampling needs."""
    size = _positive_int(cfg, "dataset.image_size")
    quantum = min_image_size(cfg)
    if size % quantum:
        lower, upper = max(quantum, size // quantum * quantum), (size // quantum + 1) * quantum
        raise ConfigError(
            f"dataset.image_size={size} cannot go through the detector: it halves the image "
            f"{quantum.bit_length() - 1} times, so the size must be a multiple of {quantum}.",
            where="dataset.image_size",
            fix=f"Use dataset.image_size={lower} or {upper} (the paper uses 256).")


def available_memory() -> int | None:
    """Bytes the kernel says a new allocation can get (``MemAvailable``), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def estimate_job_memory(n_train: int, n_test: int, n_per_image: int, image_size: int) -> int:
    """Bytes of images a run holds in host memory at once (cai/pipeline.py::_run_job).

    Normal and pseudo images are uint8 HxWx3, each held twice (the prepared numpy array and the CHW tensor
    copy), pseudo masks one byte per pixel; test images likewise twice plus their masks and the float32
    anomaly maps. The model, the optimizer and per-batch tensors are small beside this at the sizes where
    the estimate matters.
    """
    pixels = image_size * image_size
    n_pseudo = n_train * n_per_image
    train = (n_train + n_pseudo) * 3 * pixels * 2 + n_pseudo * pixels
    test = n_test * (3 * pixels * 2 + pixels + 4 * pixels)
    return train + test


def check_memory(cfg: DictConfig, n_train: int, n_test: int, available: int | None = None) -> None:
    """Stop before reading images when the run cannot fit in memory (else the OS kills it with no message)."""
    available = available_memory() if available is None else available
    if available is None:
        return
    size = int(cfg.dataset.image_size)
    per_image = int(cfg.synthesizer.n_per_image)
    need = estimate_job_memory(n_train, n_test, per_image, size)
    if need > available:
        gib = 1024 ** 3
        quantum = min_image_size(cfg)  # suggest a size check_image_size accepts: the largest multiple that fits
        fitting = max(quantum, (size - 1) // quantum * quantum)
        while fitting > quantum and estimate_job_memory(n_train, n_test, per_image, fitting) > available:
            fitting -= quantum
        raise ConfigError(
            f"This run would hold ~{need / gib:.1f} GiB of images in memory ({n_train} training images x "
            f"(1 + {per_image} pseudo anomalies) and {n_test} test images at {size}x{size} px), but only "
            f"{available / gib:.1f} GiB is available: the operating system would kill it without a message.",
            where="dataset.image_size",
            fix=f"Use a smaller dataset.image_size (e.g. {fitting}; the paper uses 256) or fewer pseudo "
                f"anomalies per image (synthesizer.n_per_image), or free memory.")


# -- overrides --------------------------------------------------------------------------------------------
def _task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def _groups() -> list[str]:
    """Config groups of conf/ (folders), e.g. synthesizer, dataset, detector."""
    return sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")


def _is_group(key: str) -> bool:
    return (CONF_DIR / key.replace(".", "/")).is_dir()


def _suggest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return close[0] if close else ""


def _compose(overrides: list[str]) -> DictConfig:
    """The primary config composed with ``overrides`` (inside the running Hydra app or standalone)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    name = HydraConfig.get().job.config_name if HydraConfig.initialized() else "config"
    if GlobalHydra.instance().is_initialized():
        return compose(name, overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=overrides)


def check_overrides(cfg: DictConfig) -> None:
    """A scalar given where the config holds a group or mapping (``synthesis=cai_n`` for
    ``synthesizer=cai_n``), and keys added with ``+`` that the config does not have (``+detector.epoch=5``),
    are refused: nothing would read them, so the run would silently use other settings."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    raw = _task_overrides()
    if not raw:
        return
    parsed = OverridesParser.create().parse_overrides(raw)
    for o in parsed:
        key = o.key_or_group
        if o.is_delete() or key.startswith("hydra") or o.package is not None:
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if o.is_add() or o.is_force_add() or _is_group(key) or isinstance(value, DictConfig):
            continue
        if not isinstance(o.value(), (dict, list)) and _expects_mapping(key):
            guess = _suggest(key, _groups())
            fix = f"Did you mean {guess}={o.value()}?" if guess else f"Set a key inside it, e.g. {key}.<name>=..."
            raise ConfigError(f"{key} is a group of settings, not a single value ({o.input_line!r}).",
                              where=o.input_line, fix=fix)
    added = [o for o in parsed if (o.is_add() or o.is_force_add()) and not o.key_or_group.startswith("hydra")
             and not _is_group(o.key_or_group)]
    if not added:
        return
    base = _compose([s for s, o in zip(raw, parsed, strict=True) if not any(o is a for a in added)])
    for o in added:
        key = o.key_or_group
        if OmegaConf.select(base, key, default=_MISSING) is not _MISSING:
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        siblings = list(node.keys()) if isinstance(node, DictConfig) else []
        guess = _suggest(leaf, [str(s) for s in siblings])
        fix = (f"Did you mean {(parent + '.' if parent else '')}{guess}={o.value()} (without '+')?" if guess
               else "Remove it, or check the key's spelling with `python scripts/run.py --cfg job`.")
        raise ConfigError(f"Unknown setting {key} (added with '+'): nothing reads it.", where=o.input_line,
                          fix=fix)


_MISSING: Any = object()


@functools.cache
def _defaults() -> DictConfig:
    return _compose([])


def _expects_mapping(key: str) -> bool:
    """Whether ``key`` is a mapping in the primary config composed without any override."""
    return isinstance(OmegaConf.select(_defaults(), key, default=None), DictConfig)


# -- test set -----------------------------------------------------------------------------------------------
def check_test_set(labels: np.ndarray, where: str | Path) -> None:
    """A test set must hold anomalous images (a non-empty ground-truth mask): otherwise every metric is NaN."""
    labels = np.asarray(labels, bool)
    if len(labels) == 0:
        raise DatasetError("The test set is empty: there is nothing to evaluate.", where=where,
                           fix="Add test images (anomalous ones with masks, and normal ones).")
    if not labels.any():
        raise DatasetError(
            f"The test set has no anomalous image with a non-empty mask ({len(labels)} images, all normal "
            "or with empty masks): pixel AUROC / AP / PRO and image AUROC cannot be measured.",
            where=where,
            fix="Add anomalous test images with their ground-truth masks (non-zero pixels mark the defect).")
