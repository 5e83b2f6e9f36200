"""Synthesis worker processes: a killed worker is one clear, resumable error; a killed main process
leaves no orphaned worker behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cai.errors import CaiError
from cai.synth.cache import SynthesisJob, run_synthesis
from tests.synth.test_cache import SquareSynth, _normals

REPO = Path(__file__).resolve().parents[2]


class SuicidalSynth(SquareSynth):
    """Its worker kills itself with SIGKILL on image 2, as the out-of-memory killer would."""

    def __call__(self, image, foreground, rng):
        if int(image[0, 0, 0]) == self.victim:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(image, foreground, rng)


def test_killed_worker_is_one_resumable_error(tmp_path):
    normals, fgs = _normals()
    synth = SuicidalSynth()
    synth.victim = int(normals[2][0, 0, 0])
    job = SynthesisJob(tmp_path / "c", synth, normals, fgs, 2, 0, {"k": 1})
    with pytest.raises(CaiError) as info:
        run_synthesis(job, workers=2, progress=False)
    message = info.value.message
    assert "worker process died" in message and "Rerun the same command" in message
    assert str(tmp_path / "c") in message
    assert not (tmp_path / "c" / "manifest.jsonl").exists()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state  # a zombie has exited, only its exit status is left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_main_process_leaves_no_worker(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    script = tmp_path / "synth.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        from tests.synth.test_cache import SquareSynth, _normals
        from cai.synth.cache import SynthesisJob, run_synthesis
        class Blocking(SquareSynth):
            def __call__(self, image, fg, rng):
                (Path({str(pids)!r}) / str(os.getpid())).touch()
                time.sleep(600)
        normals, fgs = _normals()
        run_synthesis(SynthesisJob(Path(sys.argv[1]), Blocking(), normals, fgs, 1, 0, {{"k": 1}}),
                      workers=2, progress=False)
    """))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "c")])
    deadline = time.monotonic() + 60
    while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [int(p.name) for p in pids.iterdir()]
    assert len(workers) == 2 and proc.pid not in workers
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [w for w in workers if _alive(w)]
    for w in survivors:  # clean up before failing
        os.kill(w, signal.SIGKILL)
    assert not survivors, f"worker(s) {survivors} outlived the killed main process"


def test_full_disk_during_synthesis_names_the_space_needed(tmp_path, monkeypatch):
    import errno

    from cai import io as cai_io
    from cai.errors import StorageError

    real_replace, calls = cai_io.os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) > 7:  # the disk fills after a few files
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(cai_io.os, "replace", replace)
    normals, fgs = _normals()
    with pytest.raises(StorageError) as info:
        run_synthesis(SynthesisJob(tmp_path / "c", SquareSynth(), normals, fgs, 2, 0, {"k": 1}), progress=False)
    message = info.value.message
    assert "disk is full" in message and "pseudo-anomaly cache needs about" in message
    assert "unfinished images" in message and str(tmp_path / "c") in message and "rerun" in message
    assert not list((tmp_path / "c").rglob("*.tmp*"))  # nothing half-written
