import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cai.errors import CaiError
from cai.io import read_image, read_mask
from cai.synth.base import Synthesizer
from cai.synth.cache import SynthesisJob, config_hash, read_manifest, read_stats, run_synthesis


class SquareSynth(Synthesizer):
    """Paints a random grey square: enough to test the cache without any real method."""

    def __call__(self, image, foreground, rng):
        out, mask = image.copy(), np.zeros(image.shape[:2], bool)
        y, x = rng.integers(0, image.shape[0] - 4), rng.integers(0, image.shape[1] - 4)
        mask[y : y + 4, x : x + 4] = True
        out[mask] = rng.integers(0, 256)
        return out, mask


def _normals(n=5, size=16):
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    return imgs, [np.ones((size, size), bool)] * n


def _tree_digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name != "config.json":
            h.update(p.relative_to(d).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def _job(d, seed=0, n_per_image=3):
    normals, fgs = _normals()
    return SynthesisJob(d, SquareSynth(), normals, fgs, n_per_image, seed, {"k": 1})


def test_cache_writes_manifest_and_files(tmp_path):
    records = run_synthesis(_job(tmp_path / "c"), progress=False)
    assert len(records) == 15
    assert read_manifest(tmp_path / "c") == records
    img = read_image(tmp_path / "c" / records[0].image)
    mask = read_mask(tmp_path / "c" / records[0].mask)
    assert img.shape == (16, 16, 3) and mask.sum() == 16


def test_cache_same_bytes_for_any_worker_count(tmp_path):
    run_synthesis(_job(tmp_path / "a"), workers=1, progress=False)
    run_synthesis(_job(tmp_path / "b"), workers=2, progress=False)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    run_synthesis(_job(tmp_path / "s", seed=1), progress=False)
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "s")


def test_cache_is_reused_and_resumes(tmp_path):
    d = tmp_path / "c"
    run_synthesis(_job(d), progress=False)
    full = _tree_digest(d)
    # Simulate an interruption after two images: manifest and later parts gone.
    (d / "manifest.jsonl").unlink()
    for part in sorted((d / "parts").glob("*.json"))[2:]:
        part.unlink()
    stale = d / "images" / "00000_00.png"
    before = stale.stat().st_mtime_ns
    run_synthesis(_job(d), progress=False)
    assert _tree_digest(d) == full
    assert stale.stat().st_mtime_ns == before  # finished images were not redone


def test_config_hash_changes_with_config():
    assert config_hash({"a": 1}) == config_hash({"a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_killed_synthesis_resumes_to_identical_result(tmp_path):
    """A synthesis process killed mid-way leaves no manifest; re-running completes it identically."""
    script = tmp_path / "synth.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from tests.synth.test_cache import SquareSynth, _normals
        from cai.synth.cache import SynthesisJob, run_synthesis
        class Slow(SquareSynth):
            def __call__(self, image, fg, rng):
                time.sleep(0.15)
                return super().__call__(image, fg, rng)
        normals, fgs = _normals()
        run_synthesis(SynthesisJob(__import__('pathlib').Path(sys.argv[1]), Slow(), normals, fgs, 3, 0, {{"k": 1}}),
                      progress=False)
    """))
    d = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(d)])
    deadline = 200
    while deadline and not (d / "parts").is_dir():
        deadline -= 1
        subprocess.run(["sleep", "0.05"])
    subprocess.run(["sleep", "0.6"])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (d / "manifest.jsonl").exists()
    run_synthesis(_job(d), progress=False)
    run_synthesis(_job(tmp_path / "clean"), progress=False)
    assert _tree_digest(d) == _tree_digest(tmp_path / "clean")
    assert not list(d.rglob("*.tmp*"))


class LabelledSynth(SquareSynth):
    def generate_records(self, image, foreground, rng, n):
        return [(*self(image, foreground, rng), {"anomaly_class": "crack", "k": j}) for j in range(n)]


def test_cache_keeps_provenance_in_manifest(tmp_path):
    normals, fgs = _normals()
    job = SynthesisJob(tmp_path / "p", LabelledSynth(), normals, fgs, 2, 0, {"k": 2})
    records = run_synthesis(job, progress=False)
    assert [r.info for r in records[:2]] == [{"anomaly_class": "crack", "k": 0}, {"anomaly_class": "crack", "k": 1}]
    assert read_manifest(tmp_path / "p")[3].info == {"anomaly_class": "crack", "k": 1}


class SometimesEmpty(SquareSynth):
    """Leaves the image normal (empty mask) with probability 0.6, like DRAEM's coin or an empty Perlin mask."""

    def __call__(self, image, foreground, rng):
        if rng.random() < 0.6:
            return image.copy(), np.zeros(image.shape[:2], bool)
        return super().__call__(image, foreground, rng)


def _protocol_job(d, synth=None, max_redraws=50):
    normals, fgs = _normals()
    return SynthesisJob(d, synth or SometimesEmpty(), normals, fgs, 4, 0, {"k": 3},
                        mixes_normals=True, max_redraws=max_redraws)


def test_detector_protocol_redraws_empty_outputs(tmp_path):
    """Under the detector protocol every image gets n_per_image non-empty masks; redraws are recorded per
    record and in stats.json, and the bytes do not depend on the worker count."""
    records = run_synthesis(_protocol_job(tmp_path / "a"), workers=1, progress=False)
    assert len(records) == 20 and all(r.anomalous for r in records)
    assert all(read_mask(tmp_path / "a" / r.mask).any() for r in records)
    assert sorted({r.normal_index for r in records}) == list(range(5))
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert stats["n"] == 20 and stats["empty"] == 0 and stats["mixes_normals"] is True
    assert stats["redrawn"] == sum(r.redrawn for r in records) > 0  # p = 0.6: some draws were empty
    assert read_stats(tmp_path / "a") == stats
    assert stats["mean_mask_fraction"] == pytest.approx(16 / 256)
    assert [r.redrawn for r in read_manifest(tmp_path / "a")] == [r.redrawn for r in records]
    run_synthesis(_protocol_job(tmp_path / "b"), workers=2, progress=False)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")


def test_synthesizer_on_its_own_keeps_empty_outputs(tmp_path):
    """Without the detector protocol the synthesizer's own normal outputs stay (and are counted)."""
    normals, fgs = _normals()
    records = run_synthesis(SynthesisJob(tmp_path / "o", SometimesEmpty(), normals, fgs, 4, 0, {"k": 3}),
                            progress=False)
    stats = read_stats(tmp_path / "o")
    assert stats["redrawn"] == 0 and stats["empty"] == sum(not r.anomalous for r in records) > 0


def test_target_without_any_mask_is_a_clear_error(tmp_path):
    class NeverAnomalous(SquareSynth):
        def __call__(self, image, foreground, rng):
            return image.copy(), np.zeros(image.shape[:2], bool)

    with pytest.raises(CaiError) as info:
        run_synthesis(_protocol_job(tmp_path / "n", NeverAnomalous(), max_redraws=3), progress=False)
    message = info.value.message
    assert "NeverAnomalous returned an empty mask 4 times in a row" in message
    assert "normal image 0" in message and "synthesis.max_redraws" in message
    assert not (tmp_path / "n" / "manifest.jsonl").exists()
def test_cache_entry_made_for_another_key_is_never_reused(tmp_path):
    d = tmp_path / "c"
    run_synthesis(_job(d), progress=False)
    normals, fgs = _normals()
    other = SynthesisJob(d, SquareSynth(), normals, fgs, 3, 0, {"k": 2})
    with pytest.raises(CaiError) as err:
        run_synthesis(other, progress=False)
    assert "k" in err.value.message and str(d) in err.value.message
    # Also for a partial entry (no manifest yet): resuming it under another key would mix two configs.
    (d / "manifest.jsonl").unlink()
    with pytest.raises(CaiError):
        run_synthesis(other, progress=False)


def test_concurrent_writers_synthesize_once_and_both_get_the_manifest(tmp_path):
    """Two processes filling the same entry: the second waits for the first, then reuses its manifest."""
    calls = tmp_path / "calls.log"
    script = tmp_path / "synth.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, pathlib, sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from tests.synth.test_cache import SquareSynth, _normals
        from cai.synth.cache import SynthesisJob, run_synthesis
        class Counted(SquareSynth):
            def __call__(self, image, fg, rng):
                with open({str(calls)!r}, "a") as f:
                    f.write(f"{{os.getpid()}}\\n")
                time.sleep(0.1)
                return super().__call__(image, fg, rng)
        normals, fgs = _normals()
        job = SynthesisJob(pathlib.Path(sys.argv[1]), Counted(), normals, fgs, 2, 0, {{"k": 1}})
        records = run_synthesis(job, progress=False)
        print(json.dumps([r.image for r in records]))
    """))
    d = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, str(script), str(d)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] and len(json.loads(outs[0])) == 10
    pids = calls.read_text().split()
    assert len(pids) == 10 and len(set(pids)) == 1   # 5 images x 2, all made by one of the two processes


def test_complete_entry_without_stats_gets_them_rebuilt_on_reuse(tmp_path):
    """A finished entry whose stats.json is gone (deleted, or written before stats.json existed) is reused
    with its stats rebuilt from the manifest, so run_job's metrics never crash after training on it."""
    d = tmp_path / "a"
    run_synthesis(_protocol_job(d), workers=1, progress=False)
    stats = read_stats(d)
    (d / "stats.json").unlink()
    records = run_synthesis(_protocol_job(d), workers=1, progress=False)
    assert len(records) == 20
    assert read_stats(d) == stats


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_cache_file_says_to_delete_the_entry(tmp_path, damage):
    """A truncated or deleted cache PNG is a clear error naming the file and the entry to delete (not
    "re-download or remove this file", which would only turn it into a missing-file error)."""
    from cai.synth.cache import load_pseudo

    d = tmp_path / "c"
    records = run_synthesis(_job(d), progress=False)
    png = d / records[4].image
    if damage == "truncate":
        png.write_bytes(png.read_bytes()[:40])
    else:
        png.unlink()
    with pytest.raises(CaiError) as err:
        load_pseudo(d, records)
    assert records[4].image.split("/")[-1] in err.value.message
    assert f"Delete {d}" in err.value.message
