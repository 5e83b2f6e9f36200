"""Bad settings and unusable storage stop with one clear message (exit 2, no traceback), before any
synthesis or training; a test set with nothing to measure stops before training too."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cai import io as cai_io
from cai.errors import CaiError, DatasetError, StorageError
from cai.io import check_writable, save_torch, write_json, write_png
from cai.validate import check_test_set
from tests.test_e2e import TINY

REPO = Path(__file__).resolve().parents[1]


DRIVER = """
import os, runpy, sys
cases = [line.split("\\t") for line in open(sys.argv[1]).read().splitlines()]
script = sys.argv[2]
for name, out, *args in cases:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    saved = os.dup(1), os.dup(2)
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(fd, 1); os.dup2(fd, 2)
    sys.argv = [script, *args]
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback; traceback.print_exc(); code = 1
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(saved[0], 1); os.dup2(saved[1], 2); os.close(fd)
    open(out + ".rc", "w").write(str(code))
"""


def run_cli_cases(cases: dict[str, list[str]], tmp_path: Path) -> dict[str, tuple[int, str]]:
    """Run ``scripts/run.py <args>`` for every case in ONE subprocess (the imports cost most of a run):
    each case gets Hydra's real entry point, its own captured stdout+stderr and exit code."""
    env = {"PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled", "CAI_CACHE": str(tmp_path / "cache"),
           "HOME": str(tmp_path)}
    (tmp_path / "driver.py").write_text(DRIVER)
    lines = ["\t".join([name, str(tmp_path / f"{name}.out"), *args]) for name, args in cases.items()]
    (tmp_path / "cases.tsv").write_text("\n".join(lines) + "\n")
    subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "cases.tsv"),
                    str(REPO / "scripts" / "run.py")], cwd=tmp_path, env=env, check=True, timeout=900)
    return {name: (int((tmp_path / f"{name}.out.rc").read_text()), (tmp_path / f"{name}.out").read_text())
            for name in cases}


def _assert_one_clear_error(rc: int, out: str, *needles: str) -> None:
    assert rc == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    first = out.split("error: ", 1)[-1].splitlines()[0]
    assert out.count(first) == 1, f"the message is shown {out.count(first)} times:\n{out}"
    for needle in needles:
        assert needle in out, out[-3000:]


CASES = {
    "epochs": (["detector.epochs=0"], ["detector.epochs", ">= 1"]),
    "batch_size": (["detector.batch_size=0"], ["detector.batch_size", ">= 1"]),
    "image_size": (["dataset.image_size=48"], ["dataset.image_size=48", "multiple of 32", "64"]),
    "group_typo": (["synthesis=cai_n"], ["synthesis is a group", "Did you mean synthesizer=cai_n"]),
    "plus_typo": (["+detector.epoch=5"], ["Unknown setting detector.epoch", "detector.epochs=5"]),
}
if not torch.cuda.is_available():  # with a GPU visible, device=cuda is valid
    CASES["cuda"] = (["device=cuda"], ["no CUDA GPU", "device=auto"])


@contextlib.contextmanager
def _read_only_dir(path: Path):
    """A folder that cannot be written: chmod for a normal user; as root (where chmod stops nothing) a
    read-only tmpfs mount; None when mounting is not permitted."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True).returncode:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def _folder_dataset(root: Path, empty_masks: bool) -> None:
    rng = np.random.default_rng(0)
    cat = root / "mine"
    for sub in ("train/good", "test/good", "test/scratch", "ground_truth/scratch"):
        (cat / sub).mkdir(parents=True)
    for i in range(4):
        write_png(cat / "train" / "good" / f"{i}.png", rng.integers(0, 255, (70, 90, 3), dtype=np.uint8))
        write_png(cat / "test" / "good" / f"{i}.png", rng.integers(0, 255, (70, 90, 3), dtype=np.uint8))
    if empty_masks:
        write_png(cat / "test" / "scratch" / "0.png", rng.integers(0, 255, (70, 90, 3), dtype=np.uint8))
        write_png(cat / "ground_truth" / "scratch" / "0_mask.png", np.zeros((70, 90), bool))


@pytest.mark.slow
def test_cli_user_errors_are_one_clear_message_before_synthesis(tmp_path):
    cases = {name: [*TINY, f"hydra.run.dir={tmp_path / name}", *extra] for name, (extra, _) in CASES.items()}
    folder_args = [a for a in TINY if not a.startswith(("dataset", "synthesizer.n"))]
    for empty in (False, True):
        _folder_dataset(tmp_path / f"data{empty}", empty)
        cases[f"nothing_to_measure_{empty}"] = [
            *folder_args, "dataset=folder", f"dataset.reader.root={tmp_path / f'data{empty}'}",
            "dataset.category=mine", "dataset.image_size=64", f"hydra.run.dir={tmp_path / f'nothing{empty}'}"]
    with _read_only_dir(tmp_path / "ro") as ro:
        if ro is not None:
            cases["ro_cache"] = [*TINY, f"hydra.run.dir={tmp_path / 'ro_cache'}", f"paths.cache_dir={ro / 'c'}"]
            cases["ro_run"] = [*TINY, f"hydra.run.dir={ro / 'run'}"]
        results = run_cli_cases(cases, tmp_path)
    assert not (tmp_path / "cache" / "pseudo").exists()  # every case stopped before any synthesis
    for name, (_extra, needles) in CASES.items():
        _assert_one_clear_error(*results[name], *needles)
        assert needles[0] in (tmp_path / name / "failed.txt").read_text()
    for empty in (False, True):
        _assert_one_clear_error(*results[f"nothing_to_measure_{empty}"], "no anomalous image with a non-empty mask",
                                str(tmp_path / f"data{empty}" / "mine"))
        assert not (tmp_path / f"nothing{empty}" / "done").exists()
    if ro is None:
        pytest.skip("running as root, where chmod does not stop writes, and a read-only mount is not permitted: "
                    "the read-only cases were not run (the monkeypatched tests below cover the writers)")
    _assert_one_clear_error(*results["ro_cache"], "not writable", str(ro / "c"))
    _assert_one_clear_error(*results["ro_run"], "not writable", str(ro))


# -- storage failures inside the atomic writers (monkeypatched: work as root and without a mount) ----------
@pytest.mark.parametrize("code, text", [(errno.EROFS, "read-only"), (errno.EACCES, "permission denied")])
def test_unwritable_folder_is_a_storage_error(code, text, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(cai_io.tempfile, "mkstemp", refuse)
    with pytest.raises(StorageError) as info:
        check_writable(tmp_path / "cache", "cache dir")
    assert text in info.value.message and str(tmp_path / "cache") in info.value.message
    with pytest.raises(StorageError) as info:
        write_json(tmp_path / "x" / "a.json", {"a": 1})
    assert str(tmp_path / "x" / "a.json") in info.value.message


def test_full_disk_leaves_nothing_partial(tmp_path, monkeypatch):
    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cai_io.os, "replace", full)
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(StorageError) as info:
        write_png(tmp_path / "a.png", image)
    assert "disk is full" in info.value.message and str(tmp_path / "a.png") in info.value.message
    assert "needs about" in info.value.message
    with pytest.raises(StorageError):
        save_torch(tmp_path / "ck.pt", {"w": torch.zeros(10)})
    assert list(tmp_path.iterdir()) == []  # no temporary or half-written file is left


def test_real_full_disk(tmp_path):
    """torch.save's own writer reports a full disk opaquely; it must still become the clear error."""
    disk = tmp_path / "small"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("needs root and permission to mount a small tmpfs")
    try:
        with pytest.raises(StorageError) as info:
            save_torch(disk / "ck.pt", {"w": torch.zeros(100_000)})
        assert "disk is full" in info.value.message and "391 KB" in info.value.message  # 100,000 float32
        with pytest.raises(StorageError):
            write_png(disk / "a.png", np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# -- test sets with nothing to measure ---------------------------------------------------------------------
def test_test_set_without_anomalies_is_refused():
    with pytest.raises(DatasetError, match="no anomalous image"):
        check_test_set(np.zeros(5, bool), "here")
    with pytest.raises(DatasetError, match="empty"):
        check_test_set(np.zeros(0, bool), "here")
    check_test_set(np.array([False, True]), "here")


def test_storage_error_is_a_cai_error():
    assert issubclass(StorageError, CaiError)
