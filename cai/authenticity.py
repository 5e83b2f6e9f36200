"""Table 2 per run: FID/KID of a finished run's cached pseudo anomalies vs its dataset's real test anomalies.

For every finished run dir (``metrics.json`` + ``done``) under a runs dir this reads

* the pseudo anomalies from the cache recorded in ``run_info.json["data"]["pseudo_cache"]``
  (``manifest.jsonl`` rows whose mask is non-empty), and
* the real anomalous test images of the same category through the dataset reader of the run's own
  saved config (``.hydra/config.yaml``: ``dataset.reader`` is instantiated with *this* machine's
  ``paths``), resized to the pseudo anomalies' size,

and writes ``fid.json`` (atomically) beside ``metrics.json``, with the same identity keys so
:mod:`cai.report` renders Table 2 from it. A run that already has ``fid.json`` is skipped. The protocol
(per category, image counts, features) is documented in :mod:`cai.metrics.fid`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import cai.config  # noqa: F401 - resolvers a saved config may use
from cai.errors import CaiError, ConfigError, MissingFileError
from cai.io import read_image, resize_image, write_json
from cai.metrics.fid import authenticity, extract_features, extractor_name, subsample
from cai.report import finished_run_dirs
from cai.synth.cache import read_manifest

log = logging.getLogger(__name__)

FID_FILE = "fid.json"


@dataclass
class FidOptions:
    """How the distances are computed (mirrors ``conf/fid.yaml``'s ``fid`` block)."""

    max_images: int | None = None   # cap per side (seeded random subset); None = all images
    seed: int = 0
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    batch_size: int = 50
    device: str = "auto"
    overwrite: bool = False


def build(node: Any) -> Any:
    """``hydra.utils.instantiate``, but a :class:`CaiError` raised by the target comes out as itself
    (Hydra wraps it in an InstantiationException, which would hide the what/where/fix message)."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, CaiError):
            raise err.__cause__ from None
        raise


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when visible, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"fid.device={name} was asked for but no CUDA GPU is visible.", fix="Use auto or cpu.")
    return torch.device(name)


def load_run_config(run_dir: Path, paths: dict[str, Any]) -> DictConfig:
    """The run's saved config with ``paths`` replaced by this machine's (resolved) paths."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        raise MissingFileError("The run dir has no saved config.", where=path,
                               fix="Run dirs are written by scripts/run.py (Hydra saves .hydra/config.yaml).")
    cfg = OmegaConf.load(path)
    cfg.paths = OmegaConf.create(dict(paths))
    return cfg


def pseudo_cache_dir(run_dir: Path) -> Path:
    """The pseudo-anomaly cache a run trained on (``run_info.json["data"]["pseudo_cache"]``)."""
    info_path = Path(run_dir) / "run_info.json"
    if not info_path.is_file():
        raise MissingFileError("The run dir has no run_info.json.", where=info_path)
    cache = json.loads(info_path.read_text()).get("data", {}).get("pseudo_cache")
    if not cache or not (Path(cache) / "manifest.jsonl").is_file():
        raise MissingFileError("The run's pseudo-anomaly cache is gone (no manifest.jsonl).", where=cache or info_path,
                               fix="Re-run the run's synthesis (scripts/run.py with the same config refills it).")
    return Path(cache)


def read_pseudo_anomalies(cache: Path) -> list[Path]:
    """Image paths of the cached pseudo anomalies whose mask is non-empty, in manifest order."""
    return [cache / r.image for r in read_manifest(cache) if r.anomalous]


def read_real_anomalies(run_cfg: DictConfig, size: tuple[int, int]) -> tuple[list[Path], np.ndarray]:
    """The category's anomalous test images (paths, and uint8 (N, H, W, 3) at ``size``)."""
    reader = build(run_cfg.dataset.reader)
    data = reader.load(str(run_cfg.dataset.category))
    paths = [t.image for t in data.anomalies]
    if not paths:
        return paths, np.zeros((0, *size, 3), np.uint8)
    return paths, np.stack([resize_image(read_image(p), size) for p in paths])


def _load(paths: list[Path], idx: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    images = [read_image(paths[i]) for i in idx]
    if size is not None:
        images = [resize_image(im, size) for im in images]
    return np.stack(images)


def evaluate_run(run_dir: Path, extractor: Callable[[torch.Tensor], torch.Tensor], paths: dict[str, Any],
                 opts: FidOptions, memo: dict | None = None) -> dict[str, Any]:
    """Compute and write ``fid.json`` for one finished run; returns its content."""
    run_dir = Path(run_dir)
    memo = {} if memo is None else memo
    meta = json.loads((run_dir / "metrics.json").read_text())
    run_cfg = load_run_config(run_dir, paths)
    cache = pseudo_cache_dir(run_dir)
    pseudo_paths = read_pseudo_anomalies(cache)
    device = resolve_device(opts.device)
    record: dict[str, Any] = {k: meta.get(k) for k in ("dataset", "category", "synthesizer", "display_name")}
    record.update(pseudo_cache=str(cache), extractor=extractor_name(extractor), n_pseudo_anomalous=len(pseudo_paths),
                  max_images=opts.max_images, sampling_seed=opts.seed, kid_subsets=opts.kid_subsets,
                  kid_subset_size=opts.kid_subset_size, protocol="per category: all anomalous pseudo vs all real "
                  "anomalous test images (capped at max_images), resized to the pseudo size")
    if len(pseudo_paths) < 2:
        record.update(metrics={"fid": None, "kid": None, "kid_std": None}, n_pseudo=len(pseudo_paths), n_real=None,
                      error="fewer than 2 pseudo anomalies with a non-empty mask")
        write_json(run_dir / FID_FILE, record)
        return record
    pseudo_idx = subsample(len(pseudo_paths), opts.max_images, opts.seed)
    pseudo = _load(pseudo_paths, pseudo_idx)
    size = pseudo.shape[1:3]
    key = (str(run_cfg.dataset.name), str(run_cfg.dataset.category), str(run_cfg.dataset.reader.get("root")),
           tuple(size), opts.max_images, opts.seed)
    if key not in memo:  # the real side is shared by every synthesizer of a category
        real_paths, real = read_real_anomalies(run_cfg, size)
        real_idx = subsample(len(real), opts.max_images, opts.seed + 1)
        feats = extract_features(extractor, real[real_idx], opts.batch_size, device) if len(real_idx) else None
        memo[key] = (len(real_paths), len(real_idx), feats)
    n_real_total, n_real, real_feats = memo[key]
    record.update(n_pseudo=len(pseudo_idx), n_real=n_real, n_real_anomalous=n_real_total, image_size=list(size))
    if n_real < 2:
        record.update(metrics={"fid": None, "kid": None, "kid_std": None},
                      error="fewer than 2 anomalous test images in the category")
    else:
        pseudo_feats = extract_features(extractor, pseudo, opts.batch_size, device)
        record["metrics"] = authenticity(pseudo_feats, real_feats, opts.kid_subsets, opts.kid_subset_size, opts.seed)
    write_json(run_dir / FID_FILE, record)
    return record


def evaluate_runs(runs_dir: Path, extractor: Callable[[torch.Tensor], torch.Tensor], paths: dict[str, Any],
                  opts: FidOptions) -> dict[str, list[Path]]:
    """``fid.json`` for every finished run under ``runs_dir``; returns the dirs written, skipped, failed.

    A run whose cache or config is missing is reported and skipped (one broken run must not cost the
    others); the table shows "X" for it.
    """
    out: dict[str, list[Path]] = {"written": [], "skipped": [], "failed": []}
    memo: dict = {}
    for run_dir in finished_run_dirs(runs_dir):
        if (run_dir / FID_FILE).is_file() and not opts.overwrite:
            out["skipped"].append(run_dir)
            continue
        try:
            rec = evaluate_run(run_dir, extractor, paths, opts, memo)
        except CaiError as err:
            log.error("FID of %s failed:\n%s", run_dir, err.message)
            out["failed"].append(run_dir)
            continue
        log.info("%s/%s %s: %s", rec["dataset"], rec["category"], rec["display_name"], rec["metrics"])
        out["written"].append(run_dir)
    return out
