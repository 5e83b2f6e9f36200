"""Run tracking: plain files in the run dir always, Weights & Biases (offline by default) optionally.

Files written: ``history.jsonl`` (one JSON line per logged step), ``run_info.json`` (git commit,
package versions, data manifest hashes), and images as PNG. W&B runs in ``offline`` mode into the run
dir unless configured otherwise, so nothing needs an account; ``wandb sync <run_dir>/wandb/offline-*``
uploads later.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from cai.io import json_safe, write_json, write_png, write_text

log = logging.getLogger(__name__)

TRACKED_PACKAGES = ("torch", "torchvision", "numpy", "opencv-python-headless", "scikit-image", "hydra-core",
                    "omegaconf", "torchmetrics", "wandb", "scipy", "diffusers", "rembg")


def git_commit(repo: Path) -> str | None:
    """The checkout's commit (with ``-dirty`` if it has uncommitted changes), or None outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def manifest_digest(paths: Iterable[Path], root: Path, mtime: bool = False) -> str:
    """SHA-256 over the relative path and byte size of each file: identifies a dataset's file list
    cheaply, without reading the files (:func:`content_digest` covers their bytes). ``mtime`` adds each
    file's modification time (ns), so a file rewritten in place with the same size changes the digest too."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        st = p.stat()
        stamp = f":{st.st_mtime_ns}" if mtime else ""
        h.update(f"{p.relative_to(root) if p.is_relative_to(root) else p}:{st.st_size}{stamp}\n".encode())
    return h.hexdigest()


_FILE_HASHES: dict[tuple, str] = {}  # (path, device, inode, size, mtime, ctime) -> SHA-256 of the bytes


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, remembered for the process while its size, mtime and ctime stay the same
    (a run re-checks the test set its sweep's previous run just hashed). Never from an older state: ctime
    changes on every write, even when the mtime is set back."""
    st = Path(path).stat()
    key = (str(Path(path).absolute()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    found = _FILE_HASHES.get(key)
    if found is None:
        with open(path, "rb") as f:
            found = hashlib.file_digest(f, "sha256").hexdigest()
        _FILE_HASHES[key] = found
    return found


def content_digest(paths: Iterable[Path], root: Path, workers: int = 4) -> str:
    """SHA-256 over the relative path, byte size and SHA-256 of the bytes of each file, in the given order:
    a same-size edit in place (or a replaced mask) changes it, unlike :func:`manifest_digest`. Files are
    hashed by ``workers`` threads (hashlib releases the GIL) at about 1 GB/s from the disk cache: a fraction
    of a second for one MVTec-AD category's test images and masks."""
    from concurrent.futures import ThreadPoolExecutor

    files = [Path(p) for p in paths]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        hashes = list(pool.map(file_sha256, files))
    h = hashlib.sha256()
    for p, digest in zip(files, hashes, strict=True):
        rel = p.relative_to(root) if p.is_relative_to(root) else p
        h.update(f"{rel}:{p.stat().st_size}:{digest}\n".encode())
    return h.hexdigest()


class Tracker:
    """Logs to ``run_dir`` files and, when enabled, to a W&B run (offline by default)."""

    def __init__(self, run_dir: Path, cfg: DictConfig | None = None, logger_cfg: DictConfig | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._history = self.run_dir / "history.jsonl"
        self._trimmed = False  # records of earlier attempts at the steps now logged are dropped once
        self._wandb = None
        if logger_cfg is not None and logger_cfg.get("backend") == "wandb":
            self._wandb = self._start_wandb(cfg, logger_cfg)

    def _start_wandb(self, cfg: DictConfig | None, lc: DictConfig):  # noqa: ANN202
        import wandb

        config = OmegaConf.to_container(cfg, resolve=True) if cfg is not None else None
        return wandb.init(
            project=lc.project, entity=lc.get("entity"), mode=lc.mode, dir=str(self.run_dir),
            name=lc.get("name"), group=lc.get("group"), tags=list(lc.get("tags") or []),
            config=config, reinit="finish_previous",
        )

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        record = {"step": step, **metrics}
        if step is not None and not self._trimmed:
            self._drop_history_from(step)
        with self._history.open("a") as f:
            record = json_safe(record, default=float)  # strict JSON: NaN (a metric not measured) is null
            f.write(json.dumps(record, default=float, allow_nan=False) + "\n")
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def _drop_history_from(self, step: int) -> None:
        """Keep only records of steps before ``step``: a run restarted from scratch (``resume=false``) or
        resumed from an earlier checkpoint must not list those epochs twice in history.jsonl."""
        self._trimmed = True
        if not self._history.is_file():
            return
        lines = self._history.read_text().splitlines()
        keep = [line for line in lines if _keep(line, step)]
        if len(keep) != len(lines):
            write_text(self._history, "".join(line + "\n" for line in keep))

    def log_image(self, name: str, image: np.ndarray, caption: str | None = None) -> Path:
        path = self.run_dir / f"{name}.png"
        write_png(path, image)
        if self._wandb is not None:
            import wandb

            self._wandb.log({name: wandb.Image(image, caption=caption)})
        return path

    def summary(self, values: dict[str, Any]) -> None:
        if self._wandb is not None:
            self._wandb.summary.update(values)

    def finish(self, exit_code: int = 0) -> None:
        if self._wandb is not None:
            self._wandb.finish(exit_code=exit_code)
            self._wandb = None


def _keep(line: str, step: int) -> bool:
    """A history line to keep before logging ``step``: readable (not cut off by a kill), and either
    without a step or of an earlier one."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    earlier = record.get("step") if isinstance(record, dict) else None
    return isinstance(record, dict) and (earlier is None or (isinstance(earlier, (int, float)) and earlier < step))


def write_run_info(run_dir: Path, repo: Path, data_digests: dict[str, str]) -> None:
    write_json(Path(run_dir) / "run_info.json", {
        "git_commit": git_commit(repo),
        "packages": package_versions(),
        "data": data_digests,
    })
