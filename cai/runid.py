"""Run identity and run-dir ownership: what a run *is* (its resolved config), where it goes, who holds it.

* :func:`identity_config` is the resolved config that decides a run's results: everything but locations
  (``paths``), logging, device, resume and worker counts. Run dirs are named by it
  (``seed<seed>-${run_hash:}``, see conf/hydra/default.yaml), a run dir records it in
  ``resolved_config.yaml``, and re-running into a dir that finished (or started training) with another
  one stops with a :class:`ConfigError` that lists what differs.
* :class:`RunDirLock` makes one process at a time own a run dir (or a cache entry): ``fcntl.flock`` on a
  ``.lock`` file, released by the kernel when the holder exits or crashes; a second process waits for it
  and then sees the finished (or partial) result.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cai.errors import ConfigError
from cai.io import write_text

log = logging.getLogger(__name__)

# Keys (dotted) that do not change a run's results: where files live, how it is logged, which device,
# whether it resumes, how many synthesis processes, how many panel images.
# The dataset's category list only says which categories a sweep covers (`make table3
# ARGS="dataset.categories=[bottle,grid]"` and the full sweep must share their runs of bottle and grid).
NON_IDENTITY_KEYS = ("hydra", "paths", "logger", "device", "resume", "synthesis.workers", "n_panels",
                     "dataset.categories", "dataset.reader.categories")
# Keys already spelled out in the run dir's path (<task>/<dataset>/<category>/<synthesizer>/seed<seed>-<hash>).
PATH_KEYS = ("task_name", "dataset.name", "dataset.category", "synthesizer.name", "seed")
RESOLVED_CONFIG = "resolved_config.yaml"
HASH_LENGTH = 8


class RunConfigConflict(ConfigError):
    """A run dir holds (or finished) a run of another resolved config: nothing in it may be touched."""


def _drop(container: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node: Any = container
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(leaf, None)


def _unexpanded_env(node: Any) -> Any:
    """Values read from the environment (``${oc.env:HOME}/.u2net``) are machine-specific locations too:
    keep their spelling, not their value (the ``$`` dropped so nothing resolves them)."""
    if isinstance(node, dict):
        return {k: _unexpanded_env(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_unexpanded_env(v) for v in node]
    if isinstance(node, str) and "${oc.env:" in node:
        return "<env>" + node.replace("$", "")
    return node


def identity_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config minus :data:`NON_IDENTITY_KEYS`, as plain data.

    ``paths`` (and any ``${oc.env:...}`` value) is replaced by placeholders before resolving, so values
    built from a location (``dataset.reader.root: ${paths.cache_dir}/demo_data``) are the same on every
    machine, and the
    ``hydra`` node is left out (it names the run dir, which is computed from this: no recursion).
    """
    raw = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(raw, dict)
    raw.pop("hydra", None)
    if isinstance(raw.get("paths"), dict):
        raw["paths"] = {k: f"<paths.{k}>" for k in raw["paths"]}
    raw = _unexpanded_env(raw)
    resolved = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    assert isinstance(resolved, dict)
    for key in NON_IDENTITY_KEYS:
        _drop(resolved, key)
    return resolved


def config_digest(payload: Any, length: int = HASH_LENGTH) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def run_hash(*, _root_: DictConfig) -> str:
    """``${run_hash:}``: short hash of the identity config without the parts the run dir's path names."""
    ident = identity_config(_root_)
    for key in PATH_KEYS:
        _drop(ident, key)
    return config_digest(ident)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out else {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs (``<absent>`` when missing)."""
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a.get(k, '<absent>')} -> {b.get(k, '<absent>')}"
            for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]


def check_run_config(run_dir: Path, cfg: DictConfig) -> dict[str, Any]:
    """Compare ``cfg`` with the config the run dir was started with (if any); return ``cfg``'s identity.

    A dir that started training (or finished) with another resolved config is never reused: the stored
    config, the checkpoints and the metrics must describe the same run. :func:`record_run_config` stores it.
    """
    ident = identity_config(cfg)
    path = Path(run_dir) / RESOLVED_CONFIG
    if path.is_file():
        stored = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        assert isinstance(stored, dict)
        # Round-trip through YAML so the comparison sees the same types the file holds.
        current = OmegaConf.to_container(OmegaConf.create(ident), resolve=False)
        diff = config_diff(stored, current)  # type: ignore[arg-type]
        if diff:
            state = "finished" if (Path(run_dir) / "done").is_file() else "was started"
            shown = "\n    ".join(diff[:20]) + (f"\n    ... {len(diff) - 20} more" if len(diff) > 20 else "")
            raise RunConfigConflict(
                f"This run dir {state} with a different config (old -> new):\n    {shown}",
                where=run_dir,
                fix="Drop the explicit hydra.run.dir / hydra.sweep.subdir so the new config gets its own dir, "
                    f"or delete {run_dir} to rerun there from scratch.",
            )
    return ident


def record_run_config(run_dir: Path, ident: dict[str, Any]) -> None:
    """Store the identity config in ``resolved_config.yaml`` (run_job: before the first checkpoint, so a
    run that failed earlier, e.g. on a missing dataset, may be re-run there with a corrected config)."""
    write_text(Path(run_dir) / RESOLVED_CONFIG, OmegaConf.to_yaml(OmegaConf.create(ident)))


def write_hydra_files(run_dir: Path, cfg: DictConfig) -> None:
    """``.hydra/{config,hydra,overrides}.yaml`` as Hydra writes them (hydra.output_subdir is null so that
    Hydra never rewrites them in a dir whose metrics belong to another config; run_job calls this after
    :func:`check_run_config`)."""
    from hydra.core.hydra_config import HydraConfig

    out = Path(run_dir) / ".hydra"
    write_text(out / "config.yaml", OmegaConf.to_yaml(cfg))
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        write_text(out / "hydra.yaml", OmegaConf.to_yaml({"hydra": hc}))
        write_text(out / "overrides.yaml", OmegaConf.to_yaml(list(hc.overrides.task)))


class RunDirLock:
    """Exclusive ownership of ``directory`` via ``flock`` on ``directory/.lock`` (holds the owner's PID).

    A second owner waits (logging the holder's PID once) until the first exits; the kernel drops the
    lock when a process dies, so a crash never leaves the dir locked.
    """

    def __init__(self, directory: Path, what: str = "run dir", poll_s: float = 0.5) -> None:
        self.directory, self.what, self.poll_s = Path(directory), what, poll_s
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.directory / ".lock"

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def acquire(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        warned = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if not warned:
                    log.warning("Waiting for the %s %s: it is in use by PID %s", self.what, self.directory,
                                self.holder())
                    warned = True
                time.sleep(self.poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class RunDataConflict(ConfigError):
    """A run dir trained (or finished) on other data than the dataset now holds: its results are stale."""


def check_run_data(run_dir: Path, digests: dict[str, str]) -> None:
    """Compare the dataset's train/test manifest digests (``cai.track.manifest_digest``: relative paths and
    sizes; ``test_content``: the test images' and masks' bytes, ``cai.track.content_digest``) with those
    ``run_info.json`` recorded when the run started training; ConfigError if they differ. Only the digests
    the run recorded are compared (a run from before ``test_content`` existed: names and sizes).

    The run dir's name covers the config only, so a rerun after the images were replaced (another folder
    of the same name, a re-exported dataset) would otherwise report the old run's metrics as "Already
    finished", or resume a checkpoint trained on other images."""
    path = Path(run_dir) / "run_info.json"
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text()).get("data", {})
    except (OSError, ValueError):
        return
    changed = [k for k, v in sorted(digests.items()) if k in recorded and recorded[k] != v]
    if "test_content" in changed and "test" in changed:  # one change, said once (masks count too)
        changed.remove("test")
    if changed:
        what = {"train": "train images", "test": "test images", "test_content": "test images or masks"}
        state = "finished" if (Path(run_dir) / "done").is_file() else "started training"
        raise RunDataConflict(
            f"This run dir {state} on other data: the {' and '.join(what.get(k, k) for k in changed)} differ "
            "from those recorded in run_info.json (file names, sizes or contents changed), so its results "
            "would be stale.",
            where=run_dir,
            fix=f"Delete {run_dir} to run it again on the current data (or restore the old images).")

