"""The one road data takes: reader → normals + foregrounds → synthesizer → cache → detector → metrics.

``run_job(cfg)`` does it for one (dataset, category, synthesizer) and writes the run dir:
``resolved_config.yaml`` (the run's identity config, cai.runid), ``.hydra/config.yaml``, ``metrics.json``,
``checkpoints/{best,last}.pt``, ``samples.png``, ``history.jsonl``, ``run_info.json`` and a ``done`` marker;
a run dir with ``done`` is skipped, one without it is resumed.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cai.data.types import CategoryData
from cai.detect.auxiliary import AuxiliaryData, train_on
from cai.detect.trainer import DetectorTrainer, EvalSet, TrainSet, make_trainer, resolve_device
from cai.detect.validation import holdout_indices, split_train_val
from cai.errors import CaiError, ConfigError
from cai.io import read_image, read_mask, resize_image, resize_mask, write_json
from cai.metrics import PIXEL_METRICS, Evaluation
from cai.metrics.label_fidelity import run_summary as label_fidelity_summary
from cai.runid import RunDirLock, check_run_config, check_run_data, record_run_config, write_hydra_files
from cai.seeding import seed_everything
from cai.synth.base import SynthesisContext
from cai.synth.cache import SynthesisJob, config_hash, default_workers, load_pseudo, read_stats, run_synthesis
from cai.synth.groups import check_synthesizer_groups, recorded_choices
from cai.track import Tracker, content_digest, manifest_digest, write_run_info
from cai.validate import check_memory, check_test_set, validate_job
from cai.viz import prediction_panel, synthesis_panel

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The detector trainer mixes normal images in itself (``detector.anomaly_fraction``), so the pipeline asks
#: synthesizers for pseudo anomalies only: no "left normal" draws, empty masks redrawn (cai/synth/cache.py).
DETECTOR_MIXES_NORMALS = True


@dataclass
class PreparedCategory:
    """A category's images at the working size, ready for synthesis and evaluation."""

    data: CategoryData
    normals: list[np.ndarray]
    foregrounds: list[np.ndarray]
    test_images: np.ndarray
    test_masks: np.ndarray
    test_names: list[str]
    test_labels: np.ndarray | None = None  # image labels from the original-size masks (bool, T)
    test_has_mask: np.ndarray | None = None  # False: an anomalous image without pixel ground truth (bool, T)


def load_category(cfg: DictConfig) -> CategoryData:
    reader = instantiate(cfg.dataset.reader)
    category = cfg.dataset.category
    if category is None:
        raise ConfigError("No dataset.category given.",
                          fix=f"Pass dataset.category=<one of {list(reader.categories())}>")
    return reader.load(str(category))


def prepare_category(cfg: DictConfig, data: CategoryData) -> PreparedCategory:
    """Read and resize train normals (+ their foreground masks) and the test set."""
    size = int(cfg.dataset.image_size)
    foreground = instantiate(cfg.foreground)
    normals, fgs = [], []
    for path in _progress(data.train, "read train images"):
        img = resize_image(read_image(path), size)
        normals.append(img)
        fgs.append(foreground(img, data.is_texture))
    return PreparedCategory(data, normals, fgs, *read_test_set(data, size))


def read_test_set(data: CategoryData, size: int) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
    """The test images (T, size, size, 3) and masks at the working size, names, image labels, has-mask flags.

    Labels come from the original-size masks (resizing must not relabel an image); an anomalous item
    without a mask (``dataset.masks=optional``) is anomalous with an all-False placeholder mask and
    has-mask False, so the pixel metrics are skipped rather than computed against a wrong ground truth."""
    images, masks, names, labels, has_mask = [], [], [], [], []
    for item in _progress(data.test, "read test images"):
        img = read_image(item.image)
        mask = read_mask(item.mask, img.shape[:2]) if item.mask else np.zeros(img.shape[:2], bool)
        images.append(resize_image(img, size))
        masks.append(resize_mask(mask, size))
        no_truth = item.is_anomalous and item.mask is None
        labels.append(bool(mask.any()) or no_truth)
        has_mask.append(not no_truth)
        names.append(f"{item.defect}/{Path(item.image).name}")
    return np.stack(images), np.stack(masks), names, np.array(labels, bool), np.array(has_mask, bool)


def _progress(items: Any, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, disable=None)


def synthesis_key(cfg: DictConfig, data: CategoryData) -> dict[str, Any]:
    """What identifies a cache entry: resolved synthesizer, foreground, size, seed, dataset identity.

    The training images are identified by their manifest (paths relative to the dataset root, sizes and
    modification times), so another folder with as many images, or an image changed in place, never
    reuses pseudo anomalies made from other images."""
    return {
        "synthesizer": OmegaConf.to_container(cfg.synthesizer, resolve=True),
        "foreground": OmegaConf.to_container(cfg.foreground, resolve=True),
        "image_size": int(cfg.dataset.image_size),
        "seed": int(cfg.seed),
        "dataset": data.dataset,
        "category": data.category,
        "n_train": len(data.train),
        "train_manifest": manifest_digest(data.train, data.root, mtime=True),
    }


def synthesize(cfg: DictConfig, prep: PreparedCategory) -> tuple[Path, np.ndarray, np.ndarray, list[int]]:
    """Fill (or reuse) the category's pseudo-anomaly cache and load it."""
    data = prep.data
    key = synthesis_key(cfg, data)
    synthesizer = instantiate(cfg.synthesizer.params)
    synthesizer.prepare(SynthesisContext(
        dataset=data.dataset, category=data.category, is_texture=data.is_texture,
        image_size=int(cfg.dataset.image_size), leakage_sources=tuple(cfg.dataset.get("leakage_sources") or ()),
        normals=prep.normals, foregrounds=prep.foregrounds,
        mixes_normals=DETECTOR_MIXES_NORMALS, n_per_image=int(cfg.synthesizer.n_per_image),
    ))
    key["synthesizer_state"] = synthesizer.cache_key()  # e.g. the trained checkpoint it loaded
    key["mixes_normals"] = DETECTOR_MIXES_NORMALS
    directory = (Path(cfg.paths.cache_dir) / "pseudo" / data.dataset / data.category
                 / f"{cfg.synthesizer.name}-{config_hash(key)}")
    job = SynthesisJob(directory, synthesizer, prep.normals, prep.foregrounds,
                       int(cfg.synthesizer.n_per_image), int(cfg.seed), key,
                       stream=zlib.crc32(f"{data.dataset}/{data.category}".encode()),
                       mixes_normals=DETECTOR_MIXES_NORMALS, max_redraws=int(cfg.synthesis.max_redraws))
    start = time.perf_counter()
    records = run_synthesis(job, workers=default_workers(cfg.synthesis.workers))
    log.info("Synthesis: %d pseudo anomalies in %s (%.1fs)", len(records), directory, time.perf_counter() - start)
    images, masks = load_pseudo(directory, records)
    return directory, images, masks, [r.normal_index for r in records]


def _load_for_check(cfg: DictConfig, run_dir: Path, finished: bool) -> CategoryData | None:
    """The category's data when the run dir recorded what it trained on (run_info.json), else None. A
    finished run whose dataset cannot be read now is still reported as finished (with a warning)."""
    if not (run_dir / "run_info.json").is_file():
        return None
    try:
        return load_category(cfg)
    except CaiError as err:
        if not finished:
            raise
        log.warning("Could not re-read the dataset to check that %s is not stale: %s", run_dir,
                    err.message.splitlines()[0])
        return None


def _data_digests(data: CategoryData) -> dict[str, str]:
    """The train / test file manifests recorded in run_info.json: relative paths and sizes (``train``,
    ``test``) and the test set's content (``test_content``, see :func:`test_digests`)."""
    return {"train": manifest_digest(data.train, data.root), **test_digests(data)}


def test_digests(data: CategoryData) -> dict[str, str]:
    """What identifies the test set a run is evaluated on: ``test`` (the images' relative paths and sizes,
    as runs recorded it before contents were) and ``test_content`` (every test image and mask, byte for
    byte: an image edited in place with the same size, or a replaced mask, changes it)."""
    files = [p for t in data.test for p in (t.image, t.mask) if p is not None]
    return {"test": manifest_digest([t.image for t in data.test], data.root),
            "test_content": content_digest(files, data.root)}


def _chw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def hydra_choices() -> dict[str, str]:
    """The config-group choices of the running Hydra job (ablation, scale, ...), for table rows."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra")}


def hydra_overrides() -> list[str] | None:
    """The running Hydra job's command-line overrides (None outside a Hydra job)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return [str(o) for o in HydraConfig.get().overrides.task]


#: metrics.json["metrics"]: the paper's four, then pixel F1-max, image AP and image F1-max (cai/metrics/pixel.py).
REPORTED_METRICS = ("pixel_auroc", "pixel_ap", "pro", "image_auroc", "pixel_f1_max", "image_ap", "image_f1_max")


def reported_metrics(selected: dict[str, Any], evaluation: Evaluation) -> dict[str, float | None]:
    """metrics.json["metrics"]: the selected epoch's record (a record from before a metric existed takes it
    from the selected model's final evaluation); skipped pixel metrics are null, not NaN."""
    out = {k: selected.get(k, evaluation.metrics[k]) for k in REPORTED_METRICS}
    if evaluation.pixel_skipped:
        out.update(dict.fromkeys(PIXEL_METRICS))
    return out


def skipped_metrics(evaluation: Evaluation, selection: str) -> dict[str, str]:
    """metrics.json["skipped"]: metric family -> why it was not measured (empty when nothing was skipped)."""
    out = dict(evaluation.skipped)
    if "pixel" in out:
        log.warning("Pixel metrics skipped: %s.", out["pixel"])
        if selection == "best":
            out["pixel"] += " (the epoch was chosen on image AUROC + image AP)"
    return out


def run_job(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Synthesize → train → evaluate one (dataset, category, synthesizer); return metrics.json's content.

    One process at a time owns the run dir (a second identical run waits, then finds it finished), and a
    dir started with another resolved config (``resolved_config.yaml``) stops with a ConfigError."""
    run_dir = Path(run_dir)
    check_synthesizer_groups(cfg, hydra_choices(), REPO_ROOT / "conf",  # config-only checks first ...
                             overrides=hydra_overrides())
    validate_job(cfg, run_dir)  # ... then values, device and writable dirs: all before any work
    with RunDirLock(run_dir):
        return _run_job(cfg, run_dir)


def _run_job(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    finished = (run_dir / "done").is_file()
    identity = check_run_config(run_dir, cfg)  # another config in this dir: ConfigError saying what differs
    data = _load_for_check(cfg, run_dir, finished)
    if data is not None:  # the data it trained on must still be the dataset's: else its results are stale
        check_run_data(run_dir, _data_digests(data))
    if finished:
        log.info("Already finished: %s (delete the dir to run it again)", run_dir)
        return json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "failed.txt").unlink(missing_ok=True)  # a failure of a run that held the lock before us
    write_hydra_files(run_dir, cfg)
    seed_everything(int(cfg.seed))
    data = load_category(cfg) if data is None else data
    aux = AuxiliaryData(cfg) if train_on(cfg) == "auxiliary" else None
    if aux is not None:
        aux.check_disjoint(data)  # the target's test images must not be auxiliary training images
    check_memory(cfg, len(data.train), len(data.test))  # before any image is read
    prep = prepare_category(cfg, data)
    check_test_set(prep.test_labels, Path(data.root) / data.category)
    if aux is not None:  # HeadCLIP's zero-shot protocol: another dataset's annotated anomalies
        return _run_auxiliary_job(cfg, run_dir, identity, data, prep, aux)
    cache_dir, pseudo, pseudo_masks, normal_index = synthesize(cfg, prep)
    record_run_config(run_dir, identity)
    write_run_info(run_dir, REPO_ROOT, {
        **_data_digests(data),
        "pseudo_manifest": manifest_digest([cache_dir / "manifest.jsonl"], cache_dir),
        "pseudo_cache": str(cache_dir),
    })
    train = TrainSet(_chw(np.stack(prep.normals)), _chw(pseudo), torch.from_numpy(pseudo_masks), source=cache_dir)
    val = None
    if cfg.detector.selection == "val":  # held-out normals + their pseudo anomalies choose the epoch
        held_out = holdout_indices(len(prep.normals), float(cfg.detector.val_fraction), int(cfg.seed))
        train, val = split_train_val(train, normal_index, held_out)
    test = _eval_set(prep)

    def fit(trainer: DetectorTrainer) -> dict[str, Any]:
        return trainer.fit(train, test, resume=bool(cfg.resume), val=val)["selected"]

    def log_synthesis(tracker: Tracker) -> None:
        tracker.log_image("synthesis", synthesis_panel(prep.normals, pseudo, pseudo_masks, normal_index,
                                                       n=int(cfg.n_panels)),
                          caption=f"{cfg.synthesizer.display_name}: normal | pseudo anomaly | mask")

    def extra(selected: dict[str, Any]) -> dict[str, Any]:
        stats = read_stats(cache_dir)
        out = {
            "n_train_normal": len(train.normals), "n_pseudo": len(train.pseudo), "n_test": len(prep.test_images),
            "label_fidelity": label_fidelity_summary(cfg.fidelity, prep.normals, pseudo, pseudo_masks,
                                                     normal_index, cache_dir),
            "synthesis": {k: stats[k] for k in ("n", "redrawn")},
            # DRAEM / GLASS anomaly-source textures ("dtd" / "dtd_mini"); null for synthesizers without
            "texture_source": cfg.synthesizer.get("texture_source"),
        }
        if val is not None:
            out["val"] = {"score": selected["val_selection_score"], "n_images": len(val.images),
                          "n_normal": sum(n.startswith("val_normal/") for n in val.names)}
        return out

    return _train_evaluate_record(cfg, run_dir, data, prep, test, fit, extra, after_fit=log_synthesis)


def _train_evaluate_record(cfg: DictConfig, run_dir: Path, data: CategoryData, prep: PreparedCategory,
                           test: EvalSet, fit: Callable[[DetectorTrainer], dict[str, Any]],
                           extra: Callable[[dict[str, Any]], dict[str, Any]],
                           after_fit: Callable[[Tracker], None] | None = None) -> dict[str, Any]:
    """The one road after the training data is ready (pseudo anomalies or an auxiliary dataset): build the
    detector, ``fit`` it (returns the selected epoch's record), evaluate the selected checkpoint on ``test``
    (maps, the detector's own image scores if it has them, F1-max thresholds), log the panels and write
    ``metrics.json`` (the shared keys plus ``extra(selected)``) and ``done``."""
    tracker = Tracker(run_dir, cfg, cfg.logger)
    exit_code = 1
    try:
        device = resolve_device(cfg.device)
        trainer = make_trainer(cfg.detector, run_dir, device, int(cfg.seed),
                               on_epoch=lambda e, r: tracker.log(r, step=e))
        selected = fit(trainer)
        if after_fit is not None:
            after_fit(tracker)
        maps, scores = trainer.predict_scored(trainer.load_selected(), test.images)  # scores: HeadCLIP's, else None
        evaluation = trainer.score(maps, test, scores)  # the selected model's F1-max thresholds, skipped metrics
        tracker.log_image("samples", prediction_panel(prep.test_images, prep.test_masks, maps.numpy(),
                                                      prep.test_names, n=int(cfg.n_panels),
                                                      labels=prep.test_labels, has_mask=prep.test_has_mask),
                          caption="test image | ground truth | anomaly map")
        choices = hydra_choices()
        metrics = {
            "dataset": data.dataset, "category": data.category,
            "synthesizer": cfg.synthesizer.name, "display_name": cfg.synthesizer.display_name,
            "selection": cfg.detector.selection, "selected_epoch": selected["epoch"],
            "metrics": reported_metrics(selected, evaluation),
            "thresholds": evaluation.thresholds,  # F1-max on the test set: scripts/predict.py's defaults
            "skipped": skipped_metrics(evaluation, cfg.detector.selection),
            **extra(selected),
            "device": str(device), "seed": int(cfg.seed), "choices": recorded_choices(cfg, choices),
            "budget": choices.get("budget", "paper"),
            "detector": detector_name(cfg, choices),
        }
        write_json(run_dir / "metrics.json", metrics)
        tracker.summary({k: v for k, v in metrics["metrics"].items() if v is not None})
        (run_dir / "done").write_text("ok\n")
        exit_code = 0
        return metrics
    finally:
        tracker.finish(exit_code)


def detector_name(cfg: DictConfig, choices: dict[str, str]) -> str:
    """The detector choice (``unet`` | ``headclip``): Hydra's, else the config's ``name`` (the UNet has none)."""
    return str(choices.get("detector") or cfg.detector.get("name") or "unet")


def _eval_set(prep: PreparedCategory) -> EvalSet:
    return EvalSet(_chw(prep.test_images), torch.from_numpy(prep.test_masks), prep.test_names,
                   torch.from_numpy(prep.test_labels), torch.from_numpy(prep.test_has_mask))


def _run_auxiliary_job(cfg: DictConfig, run_dir: Path, identity: dict[str, Any], data: CategoryData,
                       prep: PreparedCategory, aux: AuxiliaryData) -> dict[str, Any]:
    """``detector.train_on=auxiliary``: no synthesis; the detector is trained once on the auxiliary dataset's
    annotated test images (shared by every target category, cai/detect/auxiliary.py) and evaluated here."""
    record_run_config(run_dir, identity)
    write_run_info(run_dir, REPO_ROOT, {**_data_digests(data), "auxiliary": aux.identity()})
    test = _eval_set(prep)

    def fit(trainer: DetectorTrainer) -> dict[str, Any]:
        return trainer.fit_auxiliary(aux, test, resume=bool(cfg.resume))["selected"]

    def extra(selected: dict[str, Any]) -> dict[str, Any]:  # what it trained on: "auxiliary"
        return {"n_test": len(prep.test_images), "train_on": "auxiliary", "auxiliary": aux.describe()}

    return _train_evaluate_record(cfg, run_dir, data, prep, test, fit, extra)
