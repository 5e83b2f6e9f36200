"""The pseudo-anomaly cache: synthesize once per (dataset, category, synthesizer config), reuse after.

Layout (DESIGN.md)::

    <cache>/<dataset>/<category>/<synthesizer>-<hash>/
        config.json            what the hash was computed from (checked against the key on every reuse)
        .lock                  held (flock) by the one process filling the entry; others wait, then reuse
        parts/<i>.json         one record per normal image, written after its PNGs (resume points)
        images/<i>_<j>.png     pseudo anomalies (RGB)
        masks/<i>_<j>.png      their masks (0/255)
        stats.json             per-run summary: outputs, empty ones, redraws, mean mask area
        manifest.jsonl         written last: the cache is complete iff it exists

The key hashes the resolved synthesizer, foreground, size, seed and dataset identity (pipeline.synthesis_key:
the training images' manifest of relative paths, sizes and mtimes), so a changed config or changed
images never reuse stale output. Normal image ``i`` uses a generator seeded by (seed, stream, i) only, so the
result is byte-identical whatever the worker count or resume point.

With ``SynthesisJob.mixes_normals`` (the detector protocol, whose trainer mixes normal images in itself)
every output must be a pseudo anomaly: an output with an empty mask is drawn again, one at a time, from
the same per-image generator (so still byte-identical for any worker count), at most ``max_redraws``
times per output before a :class:`~cai.errors.CaiError` stops the run. Each record says how many draws
it took beyond the first (``redrawn``); ``stats.json`` sums them up for the run's metrics.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cai.errors import CaiError, StorageError
from cai.io import json_text, read_image, read_mask, write_json, write_png, write_text
from cai.runid import RunDirLock
from cai.seeding import item_rng
from cai.synth.base import Synthesizer, check_output

log = logging.getLogger(__name__)

CACHE_FORMAT = 4  # 3: no empty outputs under the detector protocol (redrawn), stats.json; 4: DRAEM records its rotation


def config_hash(payload: dict[str, Any], length: int = 12) -> str:
    """Stable short hash of a JSON-serialisable config."""
    text = json.dumps({"format": CACHE_FORMAT, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class PseudoRecord:
    """One cached pseudo anomaly: its normal image's index, file paths (relative to the cache), the
    synthesizer's provenance (``info``, e.g. CAI's anomaly class and scale), how many empty draws were
    redrawn before it (``redrawn``) and the fraction of its pixels the mask covers."""

    normal_index: int
    image: str
    mask: str
    anomalous: bool
    info: dict = field(default_factory=dict, hash=False, compare=False)
    redrawn: int = 0
    mask_fraction: float = 0.0

    @property
    def anomaly_class(self) -> str | None:
        """The injected anomaly's class when the synthesizer reported one (CAI: its bank item's class)."""
        return self.info.get("anomaly_class")


@dataclass
class SynthesisJob:
    """Everything needed to fill one cache directory."""

    directory: Path
    synthesizer: Synthesizer
    normals: Sequence[np.ndarray]
    foregrounds: Sequence[np.ndarray]
    n_per_image: int
    seed: int
    key_payload: dict[str, Any]
    stream: int = 0  # mixed into every image's seed: e.g. a hash of (dataset, category), so categories differ
    mixes_normals: bool = False  # the consumer mixes normals itself: every output needs a non-empty mask
    max_redraws: int = 0  # with mixes_normals: redraws allowed per output before the run stops


# The job is handed to forked workers through this module global (fork start method): the prepared
# synthesizer and the images are inherited, not pickled.
_ACTIVE_JOB: SynthesisJob | None = None


def generate_outputs(job: SynthesisJob, index: int) -> list[tuple[np.ndarray, np.ndarray, dict, int]]:
    """The ``n_per_image`` outputs of normal image ``index`` as (image, mask, info, redrawn).

    With ``job.mixes_normals`` an output with an empty mask is replaced by a fresh single draw from the
    same generator, in output order, until its mask is non-empty (at most ``job.max_redraws`` times).
    """
    image, fg = job.normals[index], job.foregrounds[index]
    rng = item_rng(job.seed, job.stream, index)
    outputs = []
    for j, (out, mask, info) in enumerate(job.synthesizer.generate_records(image, fg, rng, job.n_per_image)):
        check_output(image, out, mask)
        redrawn = 0
        while job.mixes_normals and not mask.any():
            if redrawn >= job.max_redraws:
                raise CaiError(
                    f"{type(job.synthesizer).__name__} returned an empty mask {redrawn + 1} times in a row for "
                    f"output {j} of normal image {index}; the detector needs every pseudo anomaly to have one.",
                    where=job.directory,
                    fix="Check that image's foreground mask (an empty or tiny foreground leaves no room for an "
                        "anomaly) or raise synthesis.max_redraws.",
                )
            out, mask, info = job.synthesizer.generate_records(image, fg, rng, 1)[0]
            check_output(image, out, mask)
            redrawn += 1
        outputs.append((out, mask, info, redrawn))
    return outputs


def _synthesize_one(index: int) -> dict[str, Any]:
    job = _ACTIVE_JOB
    assert job is not None
    records = []
    for j, (out, mask, info, redrawn) in enumerate(generate_outputs(job, index)):
        name = f"{index:05d}_{j:02d}.png"
        write_png(job.directory / "images" / name, out)
        write_png(job.directory / "masks" / name, mask)
        records.append({"normal_index": index, "image": f"images/{name}", "mask": f"masks/{name}",
                        "anomalous": bool(mask.any()), "info": info, "redrawn": redrawn,
                        "mask_fraction": round(float(mask.mean()), 6)})
    write_json(job.directory / "parts" / f"{index:05d}.json", records)
    return {"index": index, "records": records}


def _disk_full(err: StorageError, job: SynthesisJob, remaining: int) -> StorageError:
    """``err`` with the space the unfinished images still need (mean size of the PNGs written so far, else
    the raw pixel size), when it is a full disk; other storage errors pass unchanged."""
    if "disk is full" not in err.message and "quota" not in err.message:
        return err
    written = [p.stat().st_size for p in (job.directory / "images").glob("*.png")]
    written += [p.stat().st_size for p in (job.directory / "masks").glob("*.png")]
    h, w = job.normals[0].shape[:2] if len(job.normals) else (0, 0)
    per_pair = 2 * sum(written) / len(written) if written else h * w * 4
    need = remaining * job.n_per_image * per_pair
    lines = err.message.splitlines()
    file = next((line.split("where:", 1)[1].strip() for line in lines if line.strip().startswith("where:")), None)
    return StorageError(f"{lines[0]} The pseudo-anomaly cache needs about {_human(need)} more for its {remaining} "
                        f"unfinished images" + (f" (failed writing {file})." if file else "."),
                        where=job.directory, fix=err.fix or "Free disk space (or point paths.cache_dir elsewhere) "
                        "and rerun the same command; finished images are kept.")


def _human(n: float) -> str:
    from cai.io import _mb

    return _mb(n)


def _die_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when the main process dies (even by SIGKILL), so no orphaned
    worker holding a copy of the job's memory waits forever. Linux: ``prctl(PR_SET_PDEATHSIG)``; elsewhere a
    daemon thread that polls the parent's pid."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl failed")
    except (OSError, AttributeError):
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="die-with-parent").start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def read_manifest(directory: Path) -> list[PseudoRecord]:
    lines = (directory / "manifest.jsonl").read_text().splitlines()
    return [PseudoRecord(**json.loads(line)) for line in lines if line.strip()]


def synthesis_stats(records: Sequence[PseudoRecord], mixes_normals: bool) -> dict[str, Any]:
    """Summary of one synthesis run: outputs ``n``, empty outputs kept, draws ``redrawn`` (empty outputs
    replaced under the detector protocol), the most redraws one output needed, and the mean mask area."""
    n = len(records)
    return {
        "n": n,
        "empty": sum(not r.anomalous for r in records),
        "redrawn": sum(r.redrawn for r in records),
        "max_redrawn": max((r.redrawn for r in records), default=0),
        "mean_mask_fraction": round(sum(r.mask_fraction for r in records) / n, 6) if n else 0.0,
        "mixes_normals": bool(mixes_normals),
    }


def read_stats(directory: Path) -> dict[str, Any]:
    """The ``stats.json`` of a complete cache directory (see :func:`synthesis_stats`)."""
    return json.loads((Path(directory) / "stats.json").read_text())
def verify_key(directory: Path, key_payload: dict[str, Any]) -> None:
    """A cache entry's ``config.json`` must be the key it is reused for: never reuse silently on a mismatch."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return
    stored = json.loads(path.read_text())
    expected = json.loads(json_text(key_payload))  # as write_json stored it
    if stored != expected:
        differ = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
        raise CaiError(f"The pseudo-anomaly cache entry was made for another key (differs in: {', '.join(differ)}).",
                       where=path, fix=f"Delete {directory} to synthesize it again.")


def run_synthesis(job: SynthesisJob, workers: int = 1, progress: bool = True) -> list[PseudoRecord]:
    """Fill ``job.directory`` (resuming a partial one) and return the manifest's records.

    One process at a time fills an entry (a lock in the entry); a second one waits, then reuses the
    finished manifest. The entry's ``config.json`` is checked against the key first."""
    with RunDirLock(job.directory, what="pseudo-anomaly cache entry"):
        verify_key(job.directory, job.key_payload)
        return _run_synthesis_locked(job, workers, progress)


def _run_synthesis_locked(job: SynthesisJob, workers: int, progress: bool) -> list[PseudoRecord]:
    global _ACTIVE_JOB
    d = job.directory
    if (d / "manifest.jsonl").is_file():
        log.info("Reusing cached pseudo anomalies in %s", d)
        records = read_manifest(d)
        if not (d / "stats.json").is_file():  # lost, or an entry written before stats.json existed
            log.info("Rebuilding %s from the manifest", d / "stats.json")
            write_json(d / "stats.json", synthesis_stats(records, job.mixes_normals))
        return records
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / "config.json", job.key_payload)
    done = {int(p.stem) for p in (d / "parts").glob("[0-9]*.json")}
    todo = [i for i in range(len(job.normals)) if i not in done]
    if done:
        log.info("Resuming synthesis in %s: %d of %d images already done", d, len(done), len(job.normals))
    if job.synthesizer.max_workers is not None:  # e.g. CDM holds a GPU model: no forked workers
        workers = min(workers, int(job.synthesizer.max_workers))
    _ACTIVE_JOB = job
    try:
        bar = tqdm(total=len(todo), desc=f"synthesize {d.name}", disable=not progress or None, leave=False)
        if workers > 1 and len(todo) > 1:
            try:
                with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"),
                                         initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
                    for _ in pool.map(_synthesize_one, todo, chunksize=max(1, len(todo) // (8 * workers))):
                        bar.update()
            except StorageError as err:  # a full disk: say how much the rest of the cache needs
                raise _disk_full(err, job, len(todo) - bar.n) from err
            except BrokenProcessPool as err:
                raise CaiError(
                    f"A synthesis worker process died (killed from outside, e.g. by the out-of-memory killer) "
                    f"after {bar.n} of {len(todo)} images.",
                    where=d,
                    fix=f"Rerun the same command: the finished images are kept and synthesis resumes. If memory "
                        f"is short, use fewer processes (synthesis.workers={max(1, workers // 2)}).",
                ) from err
        else:
            for i in todo:
                try:
                    _synthesize_one(i)
                except StorageError as err:
                    raise _disk_full(err, job, len(todo) - bar.n) from err
                bar.update()
        bar.close()
    finally:
        _ACTIVE_JOB = None
    records: list[dict[str, Any]] = []
    for i in range(len(job.normals)):
        records.extend(json.loads((d / "parts" / f"{i:05d}.json").read_text()))
    pseudo = [PseudoRecord(**r) for r in records]
    stats = synthesis_stats(pseudo, job.mixes_normals)
    write_json(d / "stats.json", stats)
    if stats["redrawn"]:
        log.info("Synthesis in %s: %d of %d outputs had an empty mask and were drawn again (%d redraws)",
                 d, sum(r.redrawn > 0 for r in pseudo), len(pseudo), stats["redrawn"])
    write_text(d / "manifest.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return pseudo


def load_pseudo(directory: Path, records: Sequence[PseudoRecord]) -> tuple[np.ndarray, np.ndarray]:
    """All cached pseudo anomalies as uint8 (M, H, W, 3) and bool (M, H, W).

    A cache file that is missing or unreadable (deleted, truncated) spoils the entry: the error says to
    delete the entry, which the next run synthesizes again (removing the one file would not help)."""
    try:
        images = np.stack([read_image(directory / r.image) for r in records])
        masks = np.stack([read_mask(directory / r.mask) for r in records])
    except CaiError as err:
        raise CaiError(f"The pseudo-anomaly cache entry is damaged: {err.what}", where=err.where,
                       fix=f"Delete {directory} and rerun the same command: it is synthesized again.") from err
    return images, masks


def default_workers(requested: int | str) -> int:
    """``auto`` → every core this process may use; an int is taken as given (at least 1)."""
    if requested == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, int(requested))

