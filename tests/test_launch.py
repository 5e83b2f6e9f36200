"""Parallel sweeps (cai/launch.py, conf/hydra/launcher/): GPU slots, the joblib and submitit launchers giving
the basic launcher's metrics, a preempted submitit job resuming, and what the SLURM launcher submits."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cai.errors import ConfigError
from cai.launch import (
    JoblibLauncher,
    Slot,
    claim_slot,
    cpu_share,
    parse_gpus,
    physical_gpu,
    plan_slots,
    run_state,
    use_slot,
)
from cai.runid import RunDirLock
from tests.test_e2e import REPO, TINY

# A 2-run demo sweep: two epoch counts of one category. The two runs share one pseudo-anomaly cache entry,
# so parallel launchers make them race on it.
SWEEP = [*(a for a in TINY if not a.startswith("detector.epochs=")), "detector.epochs=1,2"]


def _env(tmp_path: Path, extra_path: str = "") -> dict[str, str]:
    # One torch thread everywhere: CPU results are bit-identical only for the same thread count, and the
    # joblib launcher gives each of 2 workers one core of this 2-core budget.
    return {"PATH": f"{extra_path}/usr/bin:/bin", "WANDB_MODE": "disabled", "HOME": str(tmp_path),
            "CAI_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _run(args: list[str], tmp_path: Path, extra_path: str = "", timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "run.py"), *args], cwd=tmp_path,
                          env=_env(tmp_path, extra_path), capture_output=True, text=True, timeout=timeout)


def _metrics(log_dir: Path) -> dict[str, dict]:
    """{run dir relative to log_dir: metrics.json's metrics} of every finished run."""
    return {str(p.parent.relative_to(log_dir)): json.loads(p.read_text())["metrics"]
            for p in sorted(log_dir.rglob("metrics.json"))}


# -- GPU slots --------------------------------------------------------------------------------------------
def test_slots_give_each_gpu_once_before_any_twice():
    assert [(s.gpu, s.index) for s in plan_slots(["0", "1", "2"], 1, 99)] == [("0", 0), ("1", 1), ("2", 2)]
    shared = plan_slots(["3", "5"], 2, 99)
    assert [s.gpu for s in shared] == ["3", "5", "3", "5"] and len({s.name for s in shared}) == 4
    assert [s.gpu for s in plan_slots([], 1, 3)] == [None, None, None]


def test_workers_share_the_cores_without_oversubscribing():
    assert cpu_share(3, 7) == 2 and cpu_share(4, 64) == 16 and cpu_share(2, 2) == 1
    assert cpu_share(3, 2) == 1  # fewer cores than workers: one thread each


def test_gpu_lists_are_parsed_and_checked():
    assert parse_gpus("0,1, 2") == ["0", "1", "2"] and parse_gpus([0, 3]) == ["0", "3"] and parse_gpus(None) == []
    assert parse_gpus(7) == ["7"] and parse_gpus("") == []
    with pytest.raises(ConfigError, match="twice"):
        parse_gpus([0, 0])
    with pytest.raises(ConfigError, match="not GPU ids"):
        parse_gpus(["cuda:0"])


def test_gpu_indices_count_among_the_gpus_already_visible():
    """Inside an allocation that grants GPUs 4-7 (CUDA_VISIBLE_DEVICES=4,5,6,7), GPUS=0,1 are GPUs 4 and 5."""
    assert physical_gpu("1", "4,5,6,7") == "5" and physical_gpu("1", None) == "1"
    assert physical_gpu("GPU-8a1b", "4,5") == "GPU-8a1b"
    with pytest.raises(ConfigError, match="not among the 2 GPU"):
        physical_gpu("2", "4,5")


def test_launcher_refuses_more_workers_than_gpu_slots():
    with pytest.raises(ConfigError, match="two jobs on one GPU"):
        JoblibLauncher(gpus=[0, 1], n_jobs=3)
    assert JoblibLauncher(gpus=[0, 1]).joblib["n_jobs"] == 2
    assert JoblibLauncher(gpus=[0, 1], jobs_per_gpu=2, n_jobs=3).joblib["n_jobs"] == 3
    assert JoblibLauncher(gpus=[], n_jobs=None).joblib["n_jobs"] == len(os.sched_getaffinity(0))


def _worker(slots: list[Slot], lock_dir: str, out: Any, release: Any, hold_s: float) -> None:
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)  # GPU ids are physical here (see physical_gpu)
    slot = claim_slot(slots, Path(lock_dir), poll_s=0.05)
    use_slot(slot, len(slots))
    import torch

    out.put((os.getpid(), slot.gpu, os.environ["CUDA_VISIBLE_DEVICES"], torch.get_num_threads(), time.time()))
    assert claim_slot(slots, Path(lock_dir)) is slot  # a process keeps its slot for every later job
    release.wait(hold_s)


def test_worker_processes_never_share_a_gpu(tmp_path):
    """Five processes, three GPU slots: three run at once on three different GPUs; the other two wait and
    get the GPUs of processes that ended (a dead holder's lock is free again)."""
    ctx = mp.get_context("fork")
    slots = plan_slots(["0", "1", "2"], 1, 0)
    out, release = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(slots, str(tmp_path), out, release, 60)) for _ in range(5)]
    for p in procs:
        p.start()
    first = [out.get(timeout=60) for _ in range(3)]
    time.sleep(0.5)
    assert out.empty()  # every slot is held: the other two wait
    assert sorted(r[1] for r in first) == ["0", "1", "2"]
    assert all(r[1] == r[2] for r in first)  # CUDA_VISIBLE_DEVICES is the slot's GPU
    assert all(r[3] == 1 for r in first)  # 3 slots on fewer cores: one torch thread each
    release.set()  # the first three end; the last two take over their GPUs
    rest = [out.get(timeout=60) for _ in range(2)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len({r[1] for r in rest}) == 2 and {r[1] for r in rest} <= {"0", "1", "2"}


def test_cpu_workers_hide_the_gpus_and_split_the_cores(tmp_path):
    cores = len(os.sched_getaffinity(0))
    ctx = mp.get_context("fork")
    slots = plan_slots([], 1, 2)
    out, release = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(slots, str(tmp_path), out, release, 0)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in range(2)]
    for p in procs:
        p.join(timeout=60)
    assert all(r[1] is None and r[2] == "" for r in got)  # no GPU visible: device=auto runs on the CPU
    assert [r[3] for r in got] == [max(1, cores // 2)] * 2  # half the cores each, as torch threads


# -- the same metrics through every launcher ----------------------------------------------------------------
@pytest.mark.slow
def test_demo_sweep_gives_the_same_metrics_through_every_launcher(tmp_path):
    runs = {}
    for name, launcher in [("basic", []), ("joblib", ["hydra/launcher=local", "hydra.launcher.n_jobs=2",
                                                       f"hydra.launcher.lock_dir={tmp_path / 'locks'}"]),
                           ("submitit", ["hydra/launcher=submitit_local"])]:
        logs = tmp_path / name
        proc = _run(["-m", *SWEEP, f"paths.log_dir={logs}", f"paths.cache_dir={tmp_path / name / 'cache'}",
                     *launcher], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = _metrics(logs / "run")
        logs_of = [p.read_text() for p in (logs / "run").rglob("run.log")]
        if name == "joblib":  # worker processes with a slot each (two, unless one ran both runs)
            workers = {m for t in logs_of for m in re.findall(r"Worker (\d+): slot \d of 2, CPU", t)}
            assert 1 <= len(workers) <= 2
        # The two runs shared one cache entry: one synthesized it, the other waited and reused it.
        assert sum("Reusing cached pseudo anomalies" in t for t in logs_of) == 1
        assert len(list((tmp_path / name / "cache/pseudo/demo/coin").iterdir())) == 1
    assert len(runs["basic"]) == 2
    assert runs["joblib"] == runs["basic"]
    assert runs["submitit"] == runs["basic"]


@pytest.mark.slow
def test_failed_job_in_a_joblib_sweep_fails_the_multirun(tmp_path):
    """A job that fails in a worker process still makes the multirun exit 1 naming it (FailedJobsCallback)."""
    proc = _run(["-m", "logger=none", "dataset=mvtec", "dataset.category=bottle,cable",
                 f"paths.data_dir={tmp_path / 'nowhere'}", f"paths.log_dir={tmp_path / 'logs'}",
                 "hydra/launcher=local", "hydra.launcher.n_jobs=2", f"hydra.launcher.lock_dir={tmp_path / 'locks'}"],
                tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 job(s) of this multirun failed" in proc.stderr
    assert "mvtec/bottle" in proc.stderr and "mvtec/cable" in proc.stderr


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.is_file() else []


@pytest.mark.slow
def test_preempted_submitit_job_requeues_and_resumes_to_the_same_result(tmp_path):
    """submitit's preemption signal mid-training: the job checkpoints itself (the launcher resubmits the same
    job), the requeued job finds its run dir unfinished and continues from checkpoints/last.pt, and ends
    with the metrics of an uninterrupted run. SLURM requeues the same way (scontrol requeue)."""
    args = [*(a for a in TINY if not a.startswith(("detector.epochs=", "detector.samples_per_epoch="))),
            "detector.epochs=6", "detector.samples_per_epoch=64"]
    reference = _run([*args, f"hydra.run.dir={tmp_path / 'reference'}"], tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]

    logs = tmp_path / "logs"
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "run.py"), "-m", *args,
                             f"paths.log_dir={logs}", "hydra/launcher=submitit_local"],
                            cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 600
    last = None
    while time.time() < deadline and proc.poll() is None:
        found = list(logs.rglob("checkpoints/last.pt"))
        if found:
            last = found[0]
            break
        time.sleep(0.05)
    assert last is not None, proc.communicate()[1][-3000:]
    job_dirs = [d for d in (logs / "run" / ".submitit").iterdir() if d.name.isdigit()]
    assert len(job_dirs) == 1
    tasks = _children(int(job_dirs[0].name))  # the submitit controller's pid is the job id; its child runs it
    assert len(tasks) == 1
    os.kill(tasks[0], signal.SIGUSR2)  # submitit's preemption signal (SLURM sends it before killing a job)
    _out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    run_dir = last.parent.parent
    log = (run_dir / "run.log").read_text()
    submitit_log = "".join(p.read_text() for p in job_dirs[0].glob("*_log.*"))
    why = f"run.log:\n{log[-4000:]}\nsubmitit:\n{submitit_log[-2000:]}"
    assert "this job is preempted" in submitit_log, why
    assert log.count("Synthesis: ") == 2, why  # the job ran twice in this run dir: preempted, then requeued
    assert "Resumed from" in log, why
    epochs = [json.loads(line)["step"] for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6], why
    assert (json.loads((run_dir / "metrics.json").read_text())["metrics"]
            == json.loads((tmp_path / "reference" / "metrics.json").read_text())["metrics"])


# -- SLURM --------------------------------------------------------------------------------------------------
def test_run_state_reads_done_and_the_run_dir_lock(tmp_path):
    assert run_state(tmp_path / "absent") == "todo"
    (tmp_path / "a").mkdir()
    assert run_state(tmp_path / "a") == "todo"
    with RunDirLock(tmp_path / "a"):
        ctx = mp.get_context("fork")  # the lock belongs to this process: ask from another one
        with ctx.Pool(1) as pool:
            assert pool.apply(run_state, (tmp_path / "a",)) == "running"
    assert run_state(tmp_path / "a") == "todo"  # released (the .lock file stays)
    (tmp_path / "a" / "done").write_text("ok\n")
    assert run_state(tmp_path / "a") == "finished"


def test_slurm_launcher_config_shows_the_array_job(tmp_path):
    proc = _run(["experiment=table1", "dataset=ksdd2", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                 "--cfg", "hydra", "-p", "hydra.launcher"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in ("gpus_per_node: 1", "array_parallelism: 64", "timeout_min: 240", "partition: gpu",
                 "max_num_timeout: 3", "requeue: true", "wait: false", "skip_finished: true"):
        assert line in proc.stdout, line


def test_make_table1_slurm_passes_the_launcher_settings():
    proc = subprocess.run(["make", "-n", "table1", "LAUNCHER=slurm", "SLURM_PARTITION=gpu", "SLURM_ACCOUNT=proj",
                           "SLURM_TIME=90", "DRY_RUN=1", "TABLE1_DATASETS=ksdd2"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    run = next(line for line in proc.stdout.splitlines() if "scripts/run.py" in line)
    for arg in ("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=proj",
                "hydra.launcher.timeout_min=90", "hydra.launcher.dry_run=true"):
        assert arg in run.split(), arg
    assert "scripts/make_table.py table=table1" in proc.stdout and "no table yet" in proc.stdout  # not rendered
    local = subprocess.run(["make", "-n", "table1", "LAUNCHER=local", "GPUS=0,1,2,3"], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert "hydra/launcher=local 'hydra.launcher.gpus=[0,1,2,3]'" in local.stdout
    bad = subprocess.run(["make", "-n", "table1", "LAUNCHER=slrum"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and "use basic, local or slurm" in bad.stderr


def _fake_slurm(folder: Path) -> Path:
    """``sbatch`` that records the script it is given and answers like SLURM; ``srun`` so submitit starts."""
    folder.mkdir()
    (folder / "sbatch").write_text(f'#!/bin/sh\ncat "$1" >> {folder}/submitted.sh\necho "Submitted batch job 4242"\n')
    (folder / "srun").write_text("#!/bin/sh\nexit 1\n")
    for name in ("sbatch", "srun"):
        (folder / name).chmod((folder / name).stat().st_mode | stat.S_IEXEC)
    return folder


def test_slurm_launcher_submits_one_array_of_the_unfinished_runs_and_returns(tmp_path):
    sweep = ["-m", "logger=none", "dataset=demo", "dataset.category=brick,coin", "synthesizer=cutpaste,nsa_n",
             f"paths.log_dir={tmp_path / 'logs'}", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"]
    dry = _run([*sweep, "hydra.launcher.dry_run=true"], tmp_path)
    assert dry.returncode == 0, dry.stderr[-3000:]
    run_dirs = re.findall(r"#   task \d+: (\S+)", dry.stdout)
    assert len(run_dirs) == 4 and "#SBATCH --array=0-3%4" in dry.stdout
    for flag in ("--gpus-per-node=1", "--partition=gpu", "--requeue", "--time=240", "--signal=USR2@120"):
        assert f"#SBATCH {flag}" in dry.stdout, flag
    assert not (tmp_path / "logs/run/.submitit").exists()  # a dry run submits (and writes) nothing

    # One run finished, one running now (its run dir's lock is held): only the other two are submitted.
    finished, running = Path(run_dirs[0]), Path(run_dirs[1])
    finished.mkdir(parents=True)
    (finished / "done").write_text("ok\n")
    fake = _fake_slurm(tmp_path / "bin")
    with RunDirLock(running):
        start = time.time()
        proc = _run(sweep, tmp_path, extra_path=f"{fake}:")
        took = time.time() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Submitted 2 run(s) as SLURM job array 4242" in proc.stdout
    assert "1 finished, 1 running now, 2 to submit" in proc.stdout + proc.stderr
    script = (fake / "submitted.sh").read_text()
    assert script.count("#!/bin/bash") == 1 and "#SBATCH --array=0-1%2" in script  # one array of two tasks
    assert took < 120  # it returned without waiting for the (never started) tasks
    # The two submitted tasks are the two unfinished runs (their pickled overrides name them).
    import cloudpickle

    submitted = sorted((tmp_path / "logs/run/.submitit").glob("4242_*/*_submitted.pkl"))
    assert len(submitted) == 2
    jobs = [cloudpickle.loads(p.read_bytes()) for p in submitted]
    chosen = {tuple(o.split("=", 1)[1] for o in j.args[0] if o.startswith(("dataset.category=", "synthesizer=")))
              for j in jobs}
    assert chosen == {tuple(Path(d).parts[-3:-1]) for d in run_dirs[2:]}
    assert callable(getattr(jobs[0].function, "checkpoint", None))  # submitit requeues a timed-out/preempted task


def test_make_dry_run_line_of_the_docs_composes(tmp_path):
    """`make table1 LAUNCHER=slurm DRY_RUN=1` prints the sbatch array it would submit (no SLURM needed)."""
    proc = subprocess.run(["make", "-n", "table1", "LAUNCHER=slurm", "DRY_RUN=1", "TABLE1_DATASETS=ksdd2"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    line = next(x for x in proc.stdout.splitlines() if "scripts/run.py" in x)
    args = shlex.split(line.split("scripts/run.py", 1)[1].split("||")[0].replace("$ds", "ksdd2"))
    dry = _run([*args, f"paths.results_dir={tmp_path / 'results'}"], tmp_path)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "would submit a SLURM job array of 8 task(s)" in dry.stdout and "#SBATCH --array=0-7%8" in dry.stdout


# -- synthesis runs once ------------------------------------------------------------------------------------
def _synthesize(directory: str, calls: str, delay: float) -> None:
    """Fill one cache entry with a slow synthesizer that records which process drew which image."""
    import numpy as np

    from cai.synth.cache import SynthesisJob, run_synthesis
    from tests.synth.test_cache import SquareSynth, _normals

    class Recorded(SquareSynth):
        def __call__(self, image: np.ndarray, fg: np.ndarray, rng: np.random.Generator) -> tuple:
            with open(calls, "a") as f:
                f.write(f"{os.getpid()}\n")
            time.sleep(delay)
            return super().__call__(image, fg, rng)

    normals, fgs = _normals()
    run_synthesis(SynthesisJob(Path(directory), Recorded(), normals, fgs, 2, 0, {"k": 1}), progress=False)


def test_job_killed_mid_synthesis_leaves_an_entry_the_waiting_job_completes(tmp_path):
    """Two jobs race on one pseudo-anomaly cache entry (two seeds' detectors, or two ablations, sharing it):
    the second waits on the entry's lock; the first is killed mid-way (SIGKILL: its lock is left behind
    by a dead process); the second takes over, draws only the missing images and ends with one complete
    entry identical to one made in a single go. The half-written entry is never read as complete."""
    from cai.synth.cache import read_manifest
    from tests.synth.test_cache import _job, _tree_digest

    ctx = mp.get_context("fork")
    shared, calls = tmp_path / "shared", tmp_path / "calls.log"
    first = ctx.Process(target=_synthesize, args=(str(shared), str(calls), 0.4))
    first.start()
    deadline = time.time() + 60
    while time.time() < deadline and len(list((shared / "parts").glob("*.json"))) < 2:
        time.sleep(0.02)
    second = ctx.Process(target=_synthesize, args=(str(shared), str(calls), 0.0))
    second.start()
    time.sleep(0.5)
    assert not (shared / "manifest.jsonl").exists() and second.is_alive()  # waiting on the first's lock
    os.kill(first.pid, signal.SIGKILL)
    first.join()
    second.join(timeout=60)
    assert second.exitcode == 0
    pids = calls.read_text().split()
    by_second = sum(p == str(second.pid) for p in pids)
    # 5 images x 2 outputs: the first finished at least 2 images before it was killed, the second drew
    # only the images without a finished part (whole images: a part is written after its outputs).
    assert sum(p == str(first.pid) for p in pids) >= 4 and 2 <= by_second <= 6 and by_second % 2 == 0
    assert len(read_manifest(shared)) == 10
    clean = tmp_path / "clean"
    from cai.synth.cache import run_synthesis

    run_synthesis(_job(clean, n_per_image=2), progress=False)
    assert _tree_digest(shared) == _tree_digest(clean)
    assert not list(shared.rglob("*.tmp*"))
