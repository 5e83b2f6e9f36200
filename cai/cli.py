"""Wrapper for Hydra entry points: user errors print one clear message, not a stack trace.

In a single run a :class:`CaiError` exits with status 2. In a multirun the failing job writes
``failed.txt`` into its run dir and the sweep goes on (one bad category must not cost the others);
:class:`FailedJobsCallback` then ends the multirun with status 1 and the list of failed run dirs, so
``make table1`` stops, and the table marks the cell incomplete.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from cai.errors import CaiError
from cai.io import check_writable, write_text
from cai.report import failure_reason

log = logging.getLogger(__name__)


def find_user_error(err: BaseException) -> CaiError | None:
    """The CaiError behind ``err``: Hydra's ``instantiate`` wraps constructor errors, so follow causes."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, CaiError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def run_task(task: Callable[[DictConfig, Path], Any], cfg: DictConfig, record_failure: bool = True) -> Any:
    """Run ``task(cfg, run_dir)``; a user error prints its message (exit 2) or, in a multirun, is
    recorded in ``failed.txt`` (``record_failure``) and the sweep goes on."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if record_failure:
        (run_dir / "failed.txt").unlink(missing_ok=True)  # a re-run must not keep an old run's failure
    try:
        return task(cfg, run_dir)
    except Exception as exc:
        user_error = find_user_error(exc)
        if user_error is None:
            if record_failure:
                write_text(run_dir / "failed.txt", traceback.format_exc())
            if not multirun:
                raise
            log.exception("Job failed; the sweep continues. Details in %s", run_dir / "failed.txt")
            return None
        if record_failure:
            write_text(run_dir / "failed.txt", user_error.message + "\n")
        if not multirun:
            _log_to_files(user_error.message)  # the terminal gets it once, from the print below
            print(f"\nerror: {user_error.message}", file=sys.stderr)
            sys.exit(2)
        log.error("%s", user_error.message)
    return None


def _log_to_files(message: str) -> None:
    """Record an error in the run's log files (run.log) only, not on the console."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (message,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run_tool(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """``run_task`` for tools without a run dir of their own (tables, figures, bank building, bench)."""
    return run_task(lambda c, _run_dir: fn(c), cfg, record_failure=False)


class FailedJobsCallback(Callback):
    """Hydra callback (conf/hydra/default.yaml): a multirun with a failed job exits non-zero at the end.

    Every job still runs (``run_task`` records a failure in ``failed.txt`` and returns); after the last
    job the failed run dirs are listed on stderr and the process exits with ``exit_code``. Jobs that ran in
    other processes (hydra/launcher=local or a submitit launcher call ``on_job_end`` there, on their own
    copy of this callback) are found by the ``failed.txt`` they wrote under the sweep dir since the start.
    """

    def __init__(self, exit_code: int = 1) -> None:
        self.exit_code = exit_code
        self.failed: list[Path] = []
        self.started = 0.0
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.failed = []
        self.started = time.time()
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        run_dir = Path(config.hydra.runtime.output_dir)
        if job_return.status == JobStatus.FAILED or (run_dir / "failed.txt").is_file():
            self.failed.append(run_dir)

    def _failed_elsewhere(self) -> list[Path]:
        """Run dirs under the sweep dir whose ``failed.txt`` was written since the multirun started."""
        if self.sweep_dir is None or not self.sweep_dir.is_dir():
            return []
        found = []
        for marker in self.sweep_dir.rglob("failed.txt"):
            try:
                if marker.stat().st_mtime >= self.started:
                    found.append(marker.parent)
            except OSError:
                continue
        return found

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        seen = {p.absolute() for p in self.failed}
        self.failed += sorted(p for p in self._failed_elsewhere() if p.absolute() not in seen)
        if not self.failed:
            return
        lines = [f"{len(self.failed)} job(s) of this multirun failed (the other jobs ran to the end):"]
        for run_dir in self.failed:
            marker = run_dir / "failed.txt"
            lines.append(f"  {run_dir}" + (f": {failure_reason(marker)}" if marker.is_file() else ""))
        lines.append("  fix:   read failed.txt in each run dir, fix the cause, and re-run the same command "
                     "(finished runs are skipped)")
        message = "\n".join(lines)
        log.error("%s", message)
        print(f"\nerror: {message}", file=sys.stderr)
        sys.exit(self.exit_code)


class CheckWritableDirs(Callback):
    """Hydra callback (conf/config.yaml): a run or sweep dir that cannot be created or written stops with
    one message before Hydra itself tries (which fails with a stack trace)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_output_dir(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_output_dir(config, "hydra.sweep.dir")


def _check_output_dir(config: DictConfig, key: str) -> None:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        folder = Path(str(OmegaConf.select(config, key, throw_on_missing=True))).absolute()
    except OmegaConfBaseException:
        return  # resolved later by Hydra (e.g. needs the job's runtime): nothing to check yet
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise CaiError("The run dir's parent is a file, not a folder.", where=existing,
                           fix=f"Point {key} elsewhere.")
        check_writable(existing, f"run dir's folder ({key})")
    except CaiError as err:
        print(f"\nerror: {err.message}", file=sys.stderr)
        sys.exit(2)
