"""scripts/predict.py on a tiny finished demo run: maps equal the evaluation's, images of any size come back at
their own size, unreadable files are reported, thresholds from the run / overridden / recomputed, scores.csv."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cai.errors import ConfigError, MissingFileError
from tests.conftest import REPO_ROOT, compose_config

TINY = [
    "logger=none", "synthesizer=cutpaste", "foreground=otsu", "dataset=demo", "dataset.category=coin",
    "dataset.image_size=64", "dataset.reader.n_train=6", "dataset.reader.n_test_good=3",
    "dataset.reader.n_test_anomalous=3", "synthesizer.n_per_image=2", "detector.model.base_width=4",
    "detector.epochs=2", "detector.samples_per_epoch=16", "detector.batch_size=4", "detector.eval_batch_size=4",
    "synthesis.workers=1",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished tiny demo run (evaluation batches of 4 over 6 test images) and its cache dir."""
    from cai.pipeline import run_job

    tmp = tmp_path_factory.mktemp("demo_run")
    run_dir, cache = tmp / "run", tmp / "cache"
    cfg = compose_config("config", [*TINY, f"paths.cache_dir={cache}"], run_dir)
    run_job(cfg, run_dir)
    return run_dir, cache


def _predict(tmp_path: Path, run_dir: Path, images: Path, *extra: str, cache: Path | None = None) -> dict:
    from cai.predict import run_predict

    overrides = [f"run={run_dir}", f"images={images}", f"out={tmp_path / 'out'}", *extra]
    if cache is not None:
        overrides.append(f"paths.cache_dir={cache}")
    return run_predict(compose_config("predict", overrides, tmp_path))


def _scores(out: Path) -> list[dict[str, str]]:
    with (out / "scores.csv").open() as f:
        return list(csv.DictReader(f))


def _evaluation_maps(run_dir: Path, cache: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The run's evaluation maps of its test set, made as run_job makes them (prepare_category, the
    selected checkpoint, DetectorTrainer.predict), with the test masks and names."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from cai.detect.trainer import DetectorTrainer
    from cai.pipeline import _chw, load_category, prepare_category

    cfg = compose_config("config", [*TINY, f"paths.cache_dir={cache}"], run_dir)
    prep = prepare_category(cfg, load_category(cfg))
    trainer = DetectorTrainer(cfg.detector, lambda: instantiate(cfg.detector.model), run_dir, torch.device("cpu"), 0)
    maps = trainer.predict(trainer.load_selected(), _chw(prep.test_images)).numpy()
    assert OmegaConf.load(run_dir / "resolved_config.yaml").detector.eval_batch_size == 4
    return maps, prep.test_masks, prep.test_names


def test_predicted_maps_equal_the_evaluation_maps(demo_run, tmp_path):
    """Predicting the run's own test folder gives the evaluation's maps bit for bit, its image scores, and
    (with the test masks) exactly the metrics in metrics.json."""
    from cai.metrics import anomaly_metrics, image_scores

    run_dir, cache = demo_run
    test_dir = cache / "demo_data" / "coin" / "test"
    summary = _predict(tmp_path, run_dir, test_dir)
    maps, masks, names = _evaluation_maps(run_dir, cache)
    rows = _scores(tmp_path / "out")
    assert [r["image"] for r in rows] == names and summary["n_images"] == len(names) == 6
    predicted = np.stack([np.load(tmp_path / "out" / "maps" / (Path(n).with_suffix("").as_posix() + ".npy"))
                          for n in names])
    assert predicted.dtype == np.float32 and np.array_equal(predicted, maps)
    assert [float(r["image_score"]) for r in rows] == pytest.approx(image_scores(maps, 21).tolist(), rel=1e-8)
    reported = json.loads((run_dir / "metrics.json").read_text())
    assert set(reported["metrics"]) == {"pixel_auroc", "pixel_ap", "pro", "image_auroc", "pixel_f1_max", "image_ap",
                                        "image_f1_max"} and reported["skipped"] == {}
    metrics = anomaly_metrics(predicted, masks)
    assert {k: metrics[k] for k in reported["metrics"]} == pytest.approx(reported["metrics"], abs=1e-12)
    thresholds = reported["thresholds"]
    assert summary["thresholds"] == {"image": thresholds["image"], "pixel": thresholds["pixel"],
                                     "source": {"image": "metrics.json", "pixel": "metrics.json"}}
    for row, amap, score in zip(rows, maps, image_scores(maps, 21), strict=True):
        assert row["label"] == ("anomalous" if score >= thresholds["image"] else "normal")
        assert float(row["anomalous_area"]) == pytest.approx((amap >= thresholds["pixel"]).mean())
        stem = Path(row["image"]).with_suffix("").as_posix()
        overlay = cv2.imread(str(tmp_path / "out" / "overlays" / f"{stem}.png"))
        assert overlay is not None and overlay.shape[0] > 160  # 64 px images are enlarged to stay legible


def test_odd_size_image_comes_back_at_its_own_size_and_unreadable_files_are_reported(demo_run, tmp_path):
    from cai.io import read_image, resize_image
    from cai.predict import load_run

    run_dir, cache = demo_run
    folder = tmp_path / "new"
    (folder / "sub").mkdir(parents=True)
    source = read_image(next((cache / "demo_data" / "coin" / "test" / "crack").glob("*.png")))
    odd = cv2.resize(source, (90, 50), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / "sub" / "odd.png"), odd[:, :, ::-1])
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    summary = _predict(tmp_path, run_dir, folder)
    out = tmp_path / "out"
    rows = _scores(out)
    assert [(r["image"], r["width"], r["height"]) for r in rows] == [("sub/odd.png", "90", "50")]
    amap = np.load(out / "maps" / "sub" / "odd.npy")
    assert amap.shape == (50, 90) and amap.dtype == np.float32
    # the detector-size map (alone in its batch, as predict sent it) resized back bilinearly to 90 x 50
    run = load_run(run_dir)
    small = run.trainer.predict(run.model, torch.from_numpy(resize_image(odd, 64).transpose(2, 0, 1)[None].copy()))
    assert np.array_equal(amap, cv2.resize(small[0].numpy(), (90, 50), interpolation=cv2.INTER_LINEAR))
    assert cv2.imread(str(out / "overlays" / "sub" / "odd.png")) is not None
    assert sorted(u["image"] for u in summary["unreadable"]) == ["broken.png", "empty.jpg"]
    with (out / "unreadable.csv").open() as f:
        listed = list(csv.DictReader(f))
    assert sorted(r["image"] for r in listed) == ["broken.png", "empty.jpg"]
    assert all("cannot be decoded" in r["reason"] for r in listed)


def test_scores_csv_columns_and_threshold_overrides(demo_run, tmp_path):
    run_dir, cache = demo_run
    test_dir = cache / "demo_data" / "coin" / "test"
    _predict(tmp_path, run_dir, test_dir, "threshold=0.0")
    with (tmp_path / "out" / "scores.csv").open() as f:
        header = next(csv.reader(f))
    assert header == ["image", "image_score", "label", "anomalous_area", "width", "height"]
    rows = _scores(tmp_path / "out")
    assert {r["label"] for r in rows} == {"anomalous"} and {float(r["anomalous_area"]) for r in rows} == {1.0}
    summary = _predict(tmp_path, run_dir, test_dir, "threshold=1.01")
    rows = _scores(tmp_path / "out")
    assert {r["label"] for r in rows} == {"normal"} and {float(r["anomalous_area"]) for r in rows} == {0.0}
    assert summary["thresholds"]["source"] == {"image": "override", "pixel": "override"}
    # one of them overridden, the other from the run
    summary = _predict(tmp_path, run_dir, test_dir, "image_threshold=0.0")
    stored = json.loads((run_dir / "metrics.json").read_text())["thresholds"]
    assert summary["thresholds"] == {"image": 0.0, "pixel": stored["pixel"],
                                     "source": {"image": "override", "pixel": "metrics.json"}}
    assert {r["label"] for r in _scores(tmp_path / "out")} == {"anomalous"}


def test_run_from_before_thresholds_needs_a_recompute_that_finds_the_evaluation_thresholds(demo_run, tmp_path):
    """A run whose metrics.json has no thresholds stops with what to do; recompute_thresholds=true finds on the
    run's test set exactly the thresholds evaluation stored, and keeps them in <run>/thresholds.json."""
    run_dir, cache = demo_run
    old = tmp_path / "old_run"
    shutil.copytree(run_dir, old)
    metrics = json.loads((old / "metrics.json").read_text())
    stored = metrics.pop("thresholds")
    (old / "metrics.json").write_text(json.dumps(metrics))
    test_dir = cache / "demo_data" / "coin" / "test"
    with pytest.raises(ConfigError, match="recompute_thresholds=true"):
        _predict(tmp_path, old, test_dir)
    summary = _predict(tmp_path, old, test_dir, "recompute_thresholds=true", cache=cache)
    assert summary["thresholds"]["image"] == stored["image"] and summary["thresholds"]["pixel"] == stored["pixel"]
    saved = json.loads((old / "thresholds.json").read_text())
    assert (saved["image"], saved["pixel"], saved["matches_metrics_json"]) == (stored["image"], stored["pixel"], True)
    again = _predict(tmp_path, old, test_dir)  # later predictions reuse them
    assert again["thresholds"]["source"] == {"image": "thresholds.json", "pixel": "thresholds.json"}
    # another checkpoint than the one evaluated: its thresholds are not the run's
    with pytest.raises(ConfigError, match="not last.pt"):
        _predict(tmp_path, old, test_dir, "checkpoint=checkpoints/last.pt")


def test_not_a_run_dir_and_cli_errors_are_one_clear_message(demo_run, tmp_path):
    with pytest.raises(MissingFileError, match="resolved_config.yaml"):
        _predict(tmp_path, tmp_path, tmp_path)
    run_dir, _ = demo_run
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "predict.py"), f"run={run_dir}",
                           f"images={tmp_path / 'nowhere'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "images folder does not exist" in proc.stderr and str(tmp_path / "nowhere") in proc.stderr


# --------------------------------------------------------------------------------------------- untrained run
# Behaviour of the predictions folder and the thresholds does not need a trained model: a run dir holding the
# tiny config, an initialised UNet as best.pt and stored thresholds is enough (no training, seconds).


def _untrained_run(tmp_path: Path, thresholds: dict | None = None, overrides: list[str] | None = None,
                   stored: bool = True) -> Path:
    """``overrides`` replace TINY; ``stored=False``: a metrics.json from before thresholds were stored."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from cai.runid import identity_config

    run_dir = tmp_path / "untrained_run"
    base = overrides if overrides is not None else [*TINY, "dataset.image_size=32"]
    cfg = compose_config("config", [*base, f"paths.cache_dir={tmp_path / 'cache'}"], run_dir)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(identity_config(cfg)))  # as run_job writes it
    torch.manual_seed(0)
    torch.save({"model": instantiate(cfg.detector.model).state_dict()}, run_dir / "checkpoints" / "best.pt")
    metrics = {"thresholds": thresholds or {"image": 0.5, "pixel": 0.5}} if stored else {}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "done").write_text("ok\n")
    return run_dir


def _images(folder: Path, names: list[str], size: tuple[int, int] = (24, 40)) -> Path:
    rng = np.random.default_rng(0)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return folder


def test_a_second_prediction_into_the_same_folder_leaves_no_stale_outputs(tmp_path):
    """Predicting another folder (or at another threshold) into an ``out`` that holds an earlier prediction used
    to keep the earlier maps, overlays and unreadable.csv beside the new scores.csv: overlays outlined at the old
    threshold and files listed as unreadable that this prediction never saw."""
    run_dir = _untrained_run(tmp_path)
    first = _images(tmp_path / "first", ["a.png", "sub/b.png"])
    (first / "broken.png").write_bytes(b"not an image")
    second = _images(tmp_path / "second", ["c.png"])
    _predict(tmp_path, run_dir, first)
    out = tmp_path / "out"
    assert (out / "unreadable.csv").is_file() and (out / "maps" / "sub" / "b.npy").is_file()
    summary = _predict(tmp_path, run_dir, second, "threshold=0.9")
    assert [r["image"] for r in _scores(out)] == ["c.png"] and summary["unreadable"] == []
    assert not (out / "unreadable.csv").exists()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("[!.]*") if p.is_file()) == [
        "maps/c.npy", "overlays/c.png", "predict.json", "scores.csv"]


@pytest.mark.parametrize("override", ["threshold=nan", "image_threshold=nan", "pixel_threshold=.nan",
                                      "threshold=abc", "image_threshold=true"])
def test_a_threshold_that_is_not_a_number_is_refused(override, tmp_path):
    """threshold=nan used to label every image normal and outline nothing (every comparison with NaN is false),
    and threshold=abc ended in a traceback."""
    run_dir = _untrained_run(tmp_path)
    images = _images(tmp_path / "images", ["a.png"])
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        _predict(tmp_path, run_dir, images, override)
    assert not (tmp_path / "out").exists()


def test_clearing_an_earlier_prediction_removes_only_the_files_it_wrote(tmp_path):
    """A file the user keeps under out/overlays or out/maps (not written by a prediction) survives the next one."""
    run_dir = _untrained_run(tmp_path)
    out = tmp_path / "out"
    _predict(tmp_path, run_dir, _images(tmp_path / "first", ["a.png"]))
    mine = _images(out / "overlays", ["mine.png"]) / "mine.png"
    np.save(out / "maps" / "mine.npy", np.zeros(3))
    _predict(tmp_path, run_dir, _images(tmp_path / "second", ["c.png"]))
    assert mine.is_file() and (out / "maps" / "mine.npy").is_file()
    assert not (out / "maps" / "a.npy").exists() and not (out / "overlays" / "a.png").exists()
    assert json.loads((out / "predict.json").read_text())["outputs"] == ["maps/c.npy", "overlays/c.png"]


def test_an_output_folder_holding_the_images_folder_still_finds_the_images(tmp_path):
    """out=<a parent of images> (make predict IMAGES=data/new OUT=data) or out=images used to exclude every image
    ("No image files found"); only what a prediction wrote there is left out, so predicting again into the same
    folder does not predict its own overlays."""
    from cai.predict import Thresholds, load_run, predict_folder

    run = load_run(_untrained_run(tmp_path))
    parent = tmp_path / "data"
    photos = _images(parent / "photos", ["a.png", "b.png"])
    summary = predict_folder(run, photos, parent, Thresholds(0.5, 0.5))
    assert summary["n_images"] == 2 and (parent / "maps" / "a.npy").is_file()
    for _ in range(2):  # into the images folder itself, twice: its overlays are outputs, not inputs
        summary = predict_folder(run, photos, photos, Thresholds(0.5, 0.5))
        assert summary["n_images"] == 2 and [r["image"] for r in _scores(photos)] == ["a.png", "b.png"]
    written = sorted(p.name for p in photos.iterdir() if not p.name.startswith("."))
    assert written == ["a.png", "b.png", "maps", "overlays", "predict.json", "scores.csv"]


def test_two_predictions_into_one_folder_run_one_after_the_other(tmp_path, caplog):
    """Two predictions into the same out at once used to interleave their maps, overlays and scores.csv; the second
    now waits for the first (the folder's lock, as for run dirs) and then replaces its outputs."""
    import logging
    import threading
    import time

    from cai.predict import Thresholds, load_run, predict_folder
    from cai.runid import RunDirLock

    run = load_run(_untrained_run(tmp_path))
    out = tmp_path / "out"
    images = _images(tmp_path / "images", ["a.png"])
    holder = RunDirLock(out, "predictions folder", poll_s=0.05)
    holder.acquire()  # another prediction into out, still running
    worker = threading.Thread(target=predict_folder, args=(run, images, out, Thresholds(0.5, 0.5)))
    with caplog.at_level(logging.WARNING, logger="cai.runid"):
        worker.start()
        deadline = time.monotonic() + 120
        while worker.is_alive() and "Waiting for the predictions folder" not in caplog.text:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert worker.is_alive() and not (out / "scores.csv").exists() and not (out / "maps").exists()
        holder.release()
        worker.join(timeout=120)
    assert not worker.is_alive() and [r["image"] for r in _scores(out)] == ["a.png"]


def test_an_unfinished_run_is_not_said_to_be_from_before_thresholds(tmp_path):
    """A failed or still-running run (no done, no metrics.json) was said to be 'evaluated before thresholds were
    stored'; it has simply not been evaluated yet."""
    run_dir = _untrained_run(tmp_path)
    (run_dir / "done").unlink()
    (run_dir / "metrics.json").unlink()
    (run_dir / "failed.txt").write_text("Traceback ...\nRuntimeError: boom\n")
    with pytest.raises(ConfigError) as err:
        _predict(tmp_path, run_dir, _images(tmp_path / "images", ["a.png"]))
    assert "has not finished" in err.value.message and "failed.txt" in err.value.message
    assert "before thresholds were stored" not in err.value.message


def _dataset_run(tmp_path: Path, dataset: str, image_suffix: str = ".png") -> tuple[Path, Path, str]:
    """A tiny MPDD (``tubes``) or BTAD (``03``) tree under tmp_path/data, an untrained run of it whose metrics.json
    predates thresholds, its test folder and the paths.data_dir override."""
    category, normal, defect, suffix = ("tubes", "good", "anomalous", "_mask") if dataset == "mpdd" else (
        "03", "ok", "ko", "")
    cat = tmp_path / "data" / dataset / category
    _images(cat / "train" / normal, ["000.png", "001.png"], size=(32, 32))
    _images(cat / "test" / normal, [f"000{image_suffix}"], size=(32, 32))
    _images(cat / "test" / defect, [f"000{image_suffix}", f"001{image_suffix}"], size=(32, 32))
    for stem in ("000", "001"):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:16, 8:20] = 255
        (cat / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(cat / "ground_truth" / defect / f"{stem}{suffix}.png"), mask)
    data = f"paths.data_dir={tmp_path / 'data'}"
    run_dir = _untrained_run(tmp_path, stored=False, overrides=[
        "logger=none", "foreground=otsu", f"dataset={dataset}", f"dataset.category='{category}'",
        "dataset.image_size=32", "detector.model.base_width=4", "detector.eval_batch_size=4", data])
    return run_dir, cat / "test", data


@pytest.mark.parametrize("dataset", ["mpdd", "btad"])
def test_recompute_thresholds_reads_a_dataset_with_configured_categories(dataset, tmp_path):
    """resolved_config.yaml leaves out dataset.categories (a sweep's list, not the run's identity), so
    recompute_thresholds=true stopped with "Unknown mpdd category 'tubes' ... Choose one of: (none configured)"
    for every run of MVTec-AD, MPDD, BTAD, VisA or KSDD2 (the demo and folder readers find their categories)."""
    from cai.predict import run_predict

    run_dir, test_dir, data = _dataset_run(tmp_path, dataset)
    overrides = [f"run={run_dir}", f"images={test_dir}", f"out={tmp_path / 'out'}", "recompute_thresholds=true",
                 data]
    summary = run_predict(compose_config("predict", overrides, tmp_path))
    saved = json.loads((run_dir / "thresholds.json").read_text())
    assert summary["thresholds"]["source"] == {"image": "recomputed", "pixel": "recomputed"}
    assert saved["image"] is not None and saved["pixel"] is not None and summary["n_images"] == 3


def test_thresholds_recomputed_on_a_changed_test_set_are_not_reused_silently(tmp_path, caplog):
    """The test-set check covers file names and sizes only: images or masks rewritten in place (same size, e.g.
    BMP) pass it. Their recomputed metrics then differ from metrics.json; the warning blamed only the device, and
    later predictions reused the stored thresholds.json without a word."""
    import logging

    from cai.predict import run_predict

    run_dir, test_dir, data = _dataset_run(tmp_path, "mpdd")
    (run_dir / "metrics.json").write_text(json.dumps({"metrics": {"pixel_auroc": 0.123, "image_auroc": 0.5}}))
    overrides = [f"run={run_dir}", f"images={test_dir}", f"out={tmp_path / 'out'}", data]
    with caplog.at_level(logging.WARNING, logger="cai.predict"):
        run_predict(compose_config("predict", [*overrides, "recompute_thresholds=true"], tmp_path))
        assert "differ from metrics.json" in caplog.text and "changed" in caplog.text
        assert json.loads((run_dir / "thresholds.json").read_text())["matches_metrics_json"] is False
        caplog.clear()
        summary = run_predict(compose_config("predict", overrides, tmp_path))
    assert summary["thresholds"]["source"]["image"] == "thresholds.json"
    assert "differ from metrics.json" in caplog.text


def _record_test_set(run_dir: Path, data: str, old_format: bool = False) -> None:
    """run_info.json as run_job writes it for the tiny MPDD tree of :func:`_dataset_run` (``old_format``: as runs
    recorded it before test-set contents were: names and sizes only)."""
    from cai.pipeline import _data_digests, load_category

    cfg = compose_config("config", ["logger=none", "foreground=otsu", "dataset=mpdd", "dataset.category='tubes'",
                                    "dataset.image_size=32", data], run_dir)
    digests = _data_digests(load_category(cfg))
    if old_format:
        digests = {k: digests[k] for k in ("train", "test")}
    (run_dir / "run_info.json").write_text(json.dumps({"data": digests}))


def test_recompute_refuses_a_test_image_edited_in_place_or_a_changed_mask(tmp_path):
    """The test-set check covered file names and sizes only: a test image edited in place with the same byte size
    (an uncompressed BMP, even with its old modification time) or a replaced mask passed, and thresholds were
    recomputed on another test set than the run's, labelled as the run's own."""
    import os

    from cai.errors import CaiError
    from cai.predict import run_predict

    run_dir, test_dir, data = _dataset_run(tmp_path, "mpdd", image_suffix=".bmp")
    _record_test_set(run_dir, data)
    overrides = [f"run={run_dir}", f"images={test_dir}", f"out={tmp_path / 'out'}", "recompute_thresholds=true", data]
    edited = test_dir / "anomalous" / "001.bmp"
    before, stat = edited.read_bytes(), edited.stat()
    image = cv2.imread(str(edited))
    image[4:9, 4:9] = 255 - image[4:9, 4:9]  # a retouched defect
    assert cv2.imwrite(str(edited), image) and edited.stat().st_size == stat.st_size and edited.read_bytes() != before
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(CaiError, match="test set has changed") as err:
        run_predict(compose_config("predict", overrides, tmp_path))
    assert "contents" in err.value.message and not (run_dir / "thresholds.json").exists()
    edited.write_bytes(before)  # restored: accepted again
    run_predict(compose_config("predict", overrides, tmp_path))
    assert (run_dir / "thresholds.json").is_file()

    mask_path = test_dir.parent / "ground_truth" / "anomalous" / "000_mask.png"
    mask = np.zeros((32, 32), np.uint8)
    mask[20:30, 2:12] = 255  # the defect outlined elsewhere
    assert cv2.imwrite(str(mask_path), mask)
    with pytest.raises(CaiError, match="test set has changed"):
        run_predict(compose_config("predict", overrides, tmp_path))


def test_a_run_recorded_with_names_and_sizes_only_is_checked_on_those_and_says_so(tmp_path, caplog):
    """A run recorded before test-set contents were (run_info.json's ``test``: names and sizes) is not refused
    for lacking the content digest; the log says that only names and sizes could be checked. A changed name or
    size is still refused."""
    import logging

    from cai.errors import CaiError
    from cai.predict import run_predict

    run_dir, test_dir, data = _dataset_run(tmp_path, "mpdd", image_suffix=".bmp")
    _record_test_set(run_dir, data, old_format=True)
    overrides = [f"run={run_dir}", f"images={test_dir}", f"out={tmp_path / 'out'}", "recompute_thresholds=true", data]
    with caplog.at_level(logging.WARNING, logger="cai.predict"):
        summary = run_predict(compose_config("predict", overrides, tmp_path))
    assert summary["thresholds"]["source"]["image"] == "recomputed"
    assert "only the test images' names and sizes could be checked" in caplog.text
    _images(test_dir / "anomalous", ["001.bmp"], size=(40, 32))  # another size: refused, as before
    with pytest.raises(CaiError, match="test set has changed"):
        run_predict(compose_config("predict", overrides, tmp_path))


def test_images_in_a_symlinked_sub_folder_are_found_and_a_link_loop_ends(tmp_path):
    """Path.rglob does not enter symlinked folders: their images were silently left out of the prediction."""
    from cai.predict import find_images

    elsewhere = _images(tmp_path / "elsewhere", ["x.png", "deep/y.png"])
    folder = _images(tmp_path / "images", ["a.png"])
    (folder / "linked").symlink_to(elsewhere, target_is_directory=True)
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # a link back up must not recurse for ever
    images, _ = find_images(folder)
    assert [p.relative_to(folder).as_posix() for p in images] == ["a.png", "linked/deep/y.png", "linked/x.png"]


def test_output_names_never_collide():
    """x.png and x.jpg keep their suffixes; x.png.bmp's name without suffix was then x.png as well, so one map and
    one overlay overwrote the other without a word."""
    from cai.predict import output_names

    root = Path("/images")
    files = [root / n for n in ("x.png", "x.jpg", "x.png.bmp", "y.png", "sub/y.png")]
    names = output_names(files, root)
    assert len(set(names.values())) == len(files)
    assert names[root / "y.png"] == Path("y") and names[root / "sub/y.png"] == Path("sub/y")


def test_an_output_folder_that_cannot_be_written_is_one_clear_error(tmp_path, monkeypatch):
    """The predictions folder's lock is made after the writability check, so an unwritable out stays one
    StorageError (not a PermissionError traceback from the lock's mkdir)."""
    import errno
    import os

    from cai.errors import StorageError
    from cai.predict import Thresholds, load_run, predict_folder

    run = load_run(_untrained_run(tmp_path))
    images = _images(tmp_path / "images", ["a.png"])
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self.name == "out":
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(StorageError, match="not writable"):
        predict_folder(run, images, tmp_path / "out", Thresholds(0.5, 0.5))
