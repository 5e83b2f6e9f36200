"""Parallel sweeps: Hydra launchers for one node with several GPUs (joblib) and for SLURM (submitit).

The configs are conf/hydra/launcher/{local,slurm}.yaml (targets in hydra_plugins/cai_launcher, where Hydra
wants launcher plugins); ``make table1 LAUNCHER=local GPUS=0,1`` or ``LAUNCHER=slurm`` selects them. Both
keep the one road of a run: every job is ``scripts/run.py``'s task in its deterministic run dir
(cai/runid.py), so a finished run is skipped and an unfinished one resumes from its pseudo-anomaly cache and
``checkpoints/last.pt``, whichever launcher ran it before.

* :class:`JoblibLauncher` (``hydra/launcher=local``): joblib's loky workers are processes; each one claims a
  *slot* the first time it runs a job and keeps it for its life: a GPU (``CUDA_VISIBLE_DEVICES`` set before
  torch touches CUDA) and an even share of the CPU cores as its torch threads and synthesis processes (not
  pinned: on a shared machine a pinned worker starves whenever another program sits on its cores). A slot
  is an ``flock`` on a lock file, so no two live processes hold the same one (the kernel frees it when a
  worker dies), and GPU slots are shared by every sweep of the user on the node: a second sweep waits for a
  free GPU rather than doubling up on one. Without GPUs the workers run on the CPU.
* :class:`SlurmLauncher` (``hydra/launcher=slurm``): one SLURM job array per sweep, one GPU per task; it
  submits and returns (``wait: false``). Runs already finished (``done``) or running now (their run dir's
  lock is held) are not submitted again, so re-running the command after jobs died resubmits only the rest.
  A task that times out or is preempted requeues itself (submitit's checkpointing, ``max_num_timeout``) and
  resumes like any other rerun. ``dry_run: true`` prints the sbatch script instead of submitting.

This module is imported by joblib workers before their GPU is chosen: it must not import torch at load.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as _HydraJoblibLauncher
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _HydraSlurmLauncher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cai.errors import CaiError, ConfigError

log = logging.getLogger(__name__)

GPU_ID = re.compile(r"^(\d+|(GPU|MIG)-[0-9A-Za-z-]+)$")  # an index or a UUID, as CUDA_VISIBLE_DEVICES takes


# -- slots: which GPU and which CPU cores a worker process runs on ------------------------------------------
@dataclass(frozen=True)
class Slot:
    """One worker's place: ``index`` (0..n-1), the GPU it runs on (``None``: CPU) and the name of its lock
    file."""

    index: int
    gpu: str | None
    name: str

    def describe(self) -> str:
        return f"GPU {self.gpu}" if self.gpu is not None else "CPU"


def parse_gpus(value: Any) -> list[str]:
    """``hydra.launcher.gpus`` as a list of CUDA device ids: ``[0, 1]``, ``"0,1"``, ``3`` or empty (CPU)."""
    if value is None:
        return []
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if isinstance(value, int | str):
        value = [v for v in str(value).replace(" ", "").split(",") if v]
    gpus = [str(v).strip() for v in value]
    bad = [g for g in gpus if not GPU_ID.match(g)]
    if bad:
        raise ConfigError(f"hydra.launcher.gpus has entries that are not GPU ids: {bad}.",
                          fix="Give device indices as CUDA_VISIBLE_DEVICES takes them, e.g. GPUS=0,1,2,3 "
                              "('hydra.launcher.gpus=[0,1,2,3]'), or GPU-/MIG- UUIDs.")
    if len(set(gpus)) != len(gpus):
        raise ConfigError(f"hydra.launcher.gpus lists a GPU twice: {gpus}.",
                          fix="List each GPU once; to run several jobs on one GPU on purpose, set "
                              "hydra.launcher.jobs_per_gpu.")
    return gpus


def plan_slots(gpus: Sequence[str], jobs_per_gpu: int, n_workers: int) -> list[Slot]:
    """The slots of a sweep, in the order workers claim them: each GPU once before any GPU twice (with
    ``jobs_per_gpu`` > 1), or ``n_workers`` CPU slots without GPUs."""
    if gpus:
        pairs = [(g, j) for j in range(jobs_per_gpu) for g in gpus]
        return [Slot(i, g, f"gpu-{g}-{j}") for i, (g, j) in enumerate(pairs)]
    return [Slot(i, None, f"cpu-{i}") for i in range(n_workers)]


def cpu_share(n_slots: int, n_cores: int) -> int:
    """Cores per worker when ``n_slots`` workers share ``n_cores``: the torch threads and synthesis processes
    of each, so that the workers together do not oversubscribe the CPU (at least 1)."""
    return max(1, n_cores // max(1, n_slots))


def physical_gpu(gpu: str, visible: str | None) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` value for GPU ``gpu`` of ``hydra.launcher.gpus``: an index counts among
    the GPUs this process already sees (``visible``, e.g. the ones a SLURM allocation grants), as torch's
    ``cuda:<index>`` does; a UUID is taken as it is."""
    if visible is None or not gpu.isdigit():
        return gpu
    seen = [v.strip() for v in visible.split(",") if v.strip()]
    if int(gpu) >= len(seen):
        raise ConfigError(f"GPU {gpu} is not among the {len(seen)} GPU(s) this process sees "
                          f"(CUDA_VISIBLE_DEVICES={visible!r}).",
                          fix=f"Use indices 0..{len(seen) - 1} (they count among the visible GPUs) in GPUS / "
                              f"hydra.launcher.gpus.")
    return seen[int(gpu)]


def default_lock_dir() -> Path:
    """Where GPU slot locks live: one folder per user and node, so that every sweep on the node sees them."""
    return Path(tempfile.gettempdir()) / f"cai-slots-{os.getuid()}"


_HELD: dict[str, Any] = {}  # this process's slot: {"key": ..., "slot": Slot, "fd": int}


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive ``flock`` on ``path``, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def claim_slot(slots: Sequence[Slot], lock_dir: Path, poll_s: float = 1.0) -> Slot:
    """This process's slot among ``slots``: the first whose lock file is free, held until the process
    exits (a worker that dies frees it). A process asks once; later calls return the same slot. Waits,
    logging once, while every slot is held by other processes."""
    key = f"{lock_dir}|{','.join(s.name for s in slots)}"
    if _HELD.get("key") == key:
        return _HELD["slot"]
    if _HELD:
        raise CaiError("This process already holds a launcher slot of another sweep.", where=_HELD["key"])
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    warned = False
    while True:
        for slot in slots:
            fd = _try_lock(lock_dir / f"{slot.name}.lock")
            if fd is not None:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                _HELD.update(key=key, slot=slot, fd=fd)
                return slot
        if not warned:
            log.warning("All %d slots in %s are held by other processes (another sweep on this node?); "
                        "waiting for one to be free.", len(slots), lock_dir)
            warned = True
        time.sleep(poll_s)


def use_slot(slot: Slot, n_slots: int) -> int:
    """Point this process at its slot: only its GPU visible (none for a CPU slot) and its share of the
    cores as torch threads; returns that share. Must run before torch initialises CUDA in this process."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise CaiError("CUDA was initialised in this worker before its GPU was chosen, so the GPU "
                       "assignment cannot be applied.", fix="Report this as a bug (cai/launch.py).")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = physical_gpu(slot.gpu, visible) if slot.gpu is not None else ""
    share = cpu_share(n_slots, len(os.sched_getaffinity(0)))
    import torch  # after CUDA_VISIBLE_DEVICES

    torch.set_num_threads(share)
    return share


class SlotTask:
    """The Hydra task function as a joblib worker runs it: claim this process's slot first, then run the
    task. The task is kept pickled until then, so nothing it imports can touch CUDA before the GPU is set."""

    def __init__(self, task_function: Callable[[DictConfig], Any], slots: Sequence[Slot], lock_dir: Path) -> None:
        import cloudpickle

        self.payload = cloudpickle.dumps(task_function)
        self.slots, self.lock_dir = list(slots), Path(lock_dir)

    def __call__(self, cfg: DictConfig) -> Any:
        import cloudpickle

        first = not _HELD
        slot = claim_slot(self.slots, self.lock_dir)
        if first:
            _HELD["cores"] = use_slot(slot, len(self.slots))
            log.info("Worker %d: slot %d of %d, %s, %d core(s)", os.getpid(), slot.index, len(self.slots),
                     slot.describe(), _HELD["cores"])
        synthesis = cfg.get("synthesis")
        if synthesis is not None and synthesis.get("workers") == "auto":  # not a process per core per worker
            with read_write(cfg), open_dict(cfg):
                cfg.synthesis.workers = _HELD["cores"]
        if slot.gpu is not None:
            device = str(cfg.get("device", "auto"))
            if device not in ("auto", "cuda", "cuda:0"):
                raise ConfigError(f"device={device} does not fit a launcher that gives each worker one GPU "
                                  f"(GPU {slot.gpu} is this worker's only visible device, cuda:0).",
                                  fix="Leave device=auto with hydra/launcher=local (or drop GPUS for CPU workers).")
            with read_write(cfg), open_dict(cfg):
                cfg.device = "cuda"  # a GPU id that does not exist must fail, not fall back to the CPU
        task = cloudpickle.loads(self.payload)
        return task(cfg)


class JoblibLauncher(_HydraJoblibLauncher):
    """hydra-joblib-launcher with one slot per worker (conf/hydra/launcher/local.yaml).

    ``gpus``: CUDA device ids (empty: CPU workers); ``jobs_per_gpu``: jobs sharing a GPU on purpose;
    ``n_jobs``: workers (null: one per slot, or one per CPU core without GPUs; more than the GPU slots is
    refused, as it would put two jobs on one GPU); ``lock_dir``: where the GPU slot locks live (null: one
    folder per user in the temp dir, shared by every sweep on the node)."""

    def __init__(self, gpus: Any = None, jobs_per_gpu: int = 1, n_jobs: int | None = None,
                 lock_dir: str | None = None, **joblib: Any) -> None:
        self.gpus = parse_gpus(gpus)
        self.jobs_per_gpu = int(jobs_per_gpu)
        if self.jobs_per_gpu < 1:
            raise ConfigError(f"hydra.launcher.jobs_per_gpu must be at least 1, got {jobs_per_gpu}.")
        n_slots = len(self.gpus) * self.jobs_per_gpu
        if n_jobs is None or int(n_jobs) < 1:
            n_jobs = n_slots or len(os.sched_getaffinity(0))
        n_jobs = int(n_jobs)
        if self.gpus and n_jobs > n_slots:
            raise ConfigError(
                f"{n_jobs} workers on {len(self.gpus)} GPU(s) x {self.jobs_per_gpu} job(s) per GPU would put two "
                f"jobs on one GPU.",
                fix=f"Use at most {n_slots} workers (WORKERS / hydra.launcher.n_jobs), or share GPUs on purpose "
                    f"with hydra.launcher.jobs_per_gpu={-(-n_jobs // len(self.gpus))}.")
        self.lock_dir = Path(lock_dir) if lock_dir else None
        super().__init__(n_jobs=n_jobs, **joblib)

    def slots(self) -> tuple[list[Slot], Path]:
        """The slots of this launch and their lock folder. CPU slots are private to the launch (a folder
        named after this process); GPU slots are shared by every sweep on the node."""
        n_jobs = int(self.joblib["n_jobs"])
        slots = plan_slots(self.gpus, self.jobs_per_gpu, n_jobs)
        root = self.lock_dir or default_lock_dir()
        return slots, (root if self.gpus else root / f"cpu-{os.getpid()}")

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        slots, lock_dir = self.slots()
        log.info("Running %d jobs on %d workers: %s", len(job_overrides), self.joblib["n_jobs"],
                 ", ".join(sorted({s.describe() for s in slots})))
        task = self.task_function
        assert task is not None
        self.task_function = SlotTask(task, slots, lock_dir)
        try:
            return super().launch(job_overrides, initial_job_idx)
        finally:
            self.task_function = task


# -- SLURM ---------------------------------------------------------------------------------------------------
def run_state(run_dir: Path) -> str:
    """``finished`` (``done``), ``running`` (a process holds its lock, cai.runid.RunDirLock) or ``todo``."""
    run_dir = Path(run_dir)
    if (run_dir / "done").is_file():
        return "finished"
    lock = run_dir / ".lock"
    if lock.is_file():
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            return "todo"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES):
                return "running"
            raise
        finally:
            os.close(fd)
    return "todo"


class SlurmLauncher(_HydraSlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher that submits only unfinished runs, as one job array, and
    returns without waiting (conf/hydra/launcher/slurm.yaml).

    ``wait``: block until the array ends (the stock behaviour); ``dry_run``: print the sbatch script and the
    runs instead of submitting; ``skip_finished``: leave out runs whose run dir is finished or running."""

    def __init__(self, wait: bool = False, dry_run: bool = False, skip_finished: bool = True, **params: Any) -> None:
        self.wait, self.dry_run, self.skip_finished = bool(wait), bool(dry_run), bool(skip_finished)
        super().__init__(**params)

    def run_dir(self, overrides: Sequence[str]) -> Path:
        """The run dir a job of this sweep will use (hydra.sweep.dir / hydra.sweep.subdir, as Hydra's
        run_job computes it)."""
        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)

    def plan(self, job_overrides: Sequence[Sequence[str]],
             initial_job_idx: int) -> list[tuple[int, list[str], Path, str]]:
        """(job number, overrides, run dir, state) of every job of the batch."""
        out = []
        for i, overrides in enumerate(job_overrides):
            run_dir = self.run_dir(overrides)
            state = run_state(run_dir) if self.skip_finished else "todo"
            out.append((initial_job_idx + i, list(overrides), run_dir, state))
        return out

    def executor(self) -> Any:
        """The submitit executor with this launcher's parameters (as the stock launcher builds it)."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                                         **{f"{self._EXECUTOR}_max_num_timeout": self.params["max_num_timeout"]})
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                      for k, v in self.params.items() if k not in init_keys})
        return executor

    def sbatch_script(self, n_tasks: int) -> str:
        """The sbatch script of an array of ``n_tasks`` tasks, as submitit writes it (``%j``: the job id).
        Needs no SLURM: submitit's check for ``srun`` is bypassed, as nothing is submitted."""
        from unittest import mock

        from submitit.slurm.slurm import SlurmExecutor

        with mock.patch.object(SlurmExecutor, "affinity", classmethod(lambda cls: 2)):
            slurm = self.executor()._executor
        slurm.parameters["map_count"] = n_tasks
        return slurm._make_submission_file_text(slurm._submitit_command_str, "dry-run")

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra.core.singleton import Singleton

        assert self.config is not None
        plan = self.plan(job_overrides, initial_job_idx)
        todo = [p for p in plan if p[3] == "todo"]
        counts = {s: sum(p[3] == s for p in plan) for s in ("finished", "running")}
        log.info("%d runs in this sweep: %d finished, %d running now, %d to submit", len(plan),
                 counts["finished"], counts["running"], len(todo))
        returns = {p[0]: JobReturn(overrides=p[1], working_dir=str(p[2]), status=JobStatus.COMPLETED,
                                   _return_value=p[3]) for p in plan}
        if self.dry_run:
            lines = [f"# dry run: would submit a SLURM job array of {len(todo)} task(s) "
                     f"({counts['finished']} finished and {counts['running']} running runs left out)"]
            lines += [f"#   task {k}: {p[2]}" for k, p in enumerate(todo)]
            print("\n".join(lines) + "\n" + (self.sbatch_script(len(todo)) if todo else ""), flush=True)
            return [returns[p[0]] for p in plan]
        if not todo:
            log.info("Nothing to submit: every run of this sweep is finished or running.")
            return [returns[p[0]] for p in plan]
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        state = Singleton.get_state()
        args = [(p[1], "hydra.sweep.dir", p[0], f"job_id_for_{p[0]}", state) for p in todo]
        jobs = self.executor().map_array(self, *zip(*args, strict=True))
        array = jobs[0].job_id.split("_")[0]
        logs = Path(str(self.params["submitit_folder"]).replace("%j", f"{array}_<task>"))
        log.info("Submitted SLURM job array %s (%d tasks); logs in %s", array, len(jobs), logs)
        if self.wait:
            for p, job in zip(todo, jobs, strict=True):
                returns[p[0]] = job.results()[0]
        else:
            for p, job in zip(todo, jobs, strict=True):
                returns[p[0]].return_value = f"submitted {job.job_id}"
            print(f"Submitted {len(jobs)} run(s) as SLURM job array {array} (logs: {logs}). Run the same "
                  f"command again after the array ends: finished runs are skipped and unfinished ones resubmitted.",
                  flush=True)
        return [returns[p[0]] for p in plan]
