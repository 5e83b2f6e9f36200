"""The detector protocol through the cache writer: DRAEM and RealNet (whose authors leave half their
draws normal, and whose Perlin masks can come out empty) deliver ``n_per_image`` non-empty pseudo
anomalies per image, with the redraws recorded and the bytes independent of the worker count."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

from cai.io import read_mask
from cai.synth.base import SynthesisContext
from cai.synth.cache import SynthesisJob, read_manifest, read_stats, run_synthesis
from tests.baselines import test_realnet as trn
from tests.baselines.conftest import build, natural_image

N_PER_IMAGE = 6


def _normals(n: int = 3, size: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [natural_image(rng, size, size) for _ in range(n)]


def _half_foregrounds(normals: list[np.ndarray]) -> list[np.ndarray]:
    """Foreground = the left quarter: Perlin ∧ foreground is often empty (RealNet)."""
    fgs = []
    for img in normals:
        fg = np.zeros(img.shape[:2], bool)
        fg[:, : img.shape[1] // 4] = True
        fgs.append(fg)
    return fgs


def _digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name != "config.json":
            h.update(p.relative_to(d).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def _run(directory: Path, synth, normals, fgs, workers: int) -> list:
    synth.prepare(SynthesisContext("toy", "widget", False, normals[0].shape[0], normals=normals, foregrounds=fgs,
                                   mixes_normals=True, n_per_image=N_PER_IMAGE))
    job = SynthesisJob(directory, synth, normals, fgs, N_PER_IMAGE, 0, {"k": 1}, mixes_normals=True,
                       max_redraws=100)
    return run_synthesis(job, workers=workers, progress=False)


def _check_protocol(tmp_path: Path, make, fgs=None) -> dict:
    normals = _normals()
    fgs = fgs if fgs is not None else [np.ones(n.shape[:2], bool) for n in normals]
    records = _run(tmp_path / "a", make(), normals, fgs, workers=1)
    assert len(records) == len(normals) * N_PER_IMAGE
    for i in range(len(normals)):
        mine = [r for r in records if r.normal_index == i]
        assert len(mine) == N_PER_IMAGE
        assert all(r.anomalous and read_mask(tmp_path / "a" / r.mask).any() for r in mine)
    stats = read_stats(tmp_path / "a")
    assert stats["n"] == len(records) and stats["empty"] == 0
    assert stats["redrawn"] == sum(r.redrawn for r in read_manifest(tmp_path / "a"))
    _run(tmp_path / "b", make(), normals, fgs, workers=2)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    return stats


def test_draem_delivers_only_pseudo_anomalies(texture_dir, tmp_path):
    _check_protocol(tmp_path, lambda: build("draem", texture_dir=str(texture_dir)))
    # told the consumer mixes normals, DRAEM never draws its authors' "leave it normal" coin
    told = build("draem", texture_dir=str(texture_dir))
    normals = _normals(1)
    told.prepare(SynthesisContext("toy", "widget", False, 32, normals=normals, mixes_normals=True))
    rng = np.random.default_rng(0)
    assert not any(told.synthesize(normals[0], np.ones((32, 32), bool), rng).left_normal for _ in range(40))
    # on its own (no detector protocol) DRAEM keeps its authors' normal draws
    alone = build("draem", texture_dir=str(texture_dir))
    img = _normals(1)[0]
    masks = [m for _, m in alone.generate(img, np.ones((32, 32), bool), np.random.default_rng(0), 40)]
    assert sum(not m.any() for m in masks) >= 10


def test_realnet_delivers_only_pseudo_anomalies(tmp_path):
    folder = tmp_path / "sdas" / "widget"  # a ready SDAS pool in RealNet's layout: no DDPM sampling needed
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(folder / f"rank0_{i}.jpg"), natural_image(rng, 24, 24))
    stats = _check_protocol(tmp_path, lambda: trn.build(tmp_path, sdas_dir=str(tmp_path / "sdas")),
                            fgs=_half_foregrounds(_normals()))
    assert stats["redrawn"] > 0  # a quarter-image foreground leaves many Perlin masks empty: redrawn
    # told the consumer mixes normals, RealNet never draws its authors' "leave it normal" coin
    told = trn.build(tmp_path, sdas_dir=str(tmp_path / "sdas"))
    normals = _normals(1)
    told.prepare(SynthesisContext("toy", "widget", False, 32, normals=normals, mixes_normals=True))
    rng = np.random.default_rng(0)
    assert not any(told.synthesize(normals[0], np.ones((32, 32), bool), rng).left_normal for _ in range(40))
