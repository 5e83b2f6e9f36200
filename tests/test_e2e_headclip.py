"""``detector=headclip`` end to end on the demo data with a tiny random CLIP (an open_clip model config given
on the command line): the same road as the UNet (synthesis -> training -> metrics.json, samples.png -> a
table row that names the detector), and HeadCLIP's own protocol (``detector.train_on=auxiliary``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cai.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

TINY_CLIP = ("{embed_dim:32,vision_cfg:{image_size:32,layers:4,width:64,patch_size:8,head_width:16},"
             "text_cfg:{context_length:16,vocab_size:49408,width:32,heads:2,layers:2}}")
TINY_HEADCLIP = [
    "detector=headclip", "detector.clip.weights=null", "detector.clip.random_init=true",
    f"detector.clip.model_config={TINY_CLIP}", "detector.clip.image_size=32", "detector.dpam_layer=3",
    "detector.feature_layers=[4]", "detector.prompt.n_ctx=4", "detector.prompt.deep_depth=2",
    "detector.prompt.deep_length=2", "detector.sigma=1", "detector.epochs=2", "detector.batch_size=4",
]
TINY_DEMO = [
    "logger=none", "foreground=otsu", "dataset=demo", "dataset.category=coin", "dataset.image_size=64",
    "dataset.reader.n_train=6", "dataset.reader.n_test_good=3", "dataset.reader.n_test_anomalous=3",
    "synthesizer.n_per_image=2", "synthesis.workers=1",
]


def _env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled", "CAI_CACHE": str(tmp_path / "cache"),
            "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _script(script: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_headclip_demo_run_trains_evaluates_and_makes_a_table_row(tmp_path):
    runs = tmp_path / "runs"
    run_dir = runs / "demo" / "coin" / "cutpaste" / "seed0"
    proc = _script("run.py", [*TINY_DEMO, *TINY_HEADCLIP, "synthesizer=cutpaste", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["detector"] == "headclip" and metrics["choices"]["detector"] == "headclip"
    assert metrics["display_name"] == "CutPaste" and metrics["n_pseudo"] == 12 and metrics["n_test"] == 6
    assert metrics["selection"] == "last" and metrics["selected_epoch"] == 2  # the paper's last epoch
    for key in ("pixel_auroc", "pixel_ap", "pro", "image_auroc"):
        assert 0.0 <= metrics["metrics"][key] <= 1.0
    for name in ("done", "samples.png", "synthesis.png", "history.jsonl", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run_dir / name).exists(), name
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)
    # the frozen CLIP is not kept, only which weights file it was (none: random)
    assert set(best["model"]) == {"prompts.ctx", "prompts.deep", "head_weights.weight", "clip_weights"}
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history if "loss" in h] == [1, 2]

    from cai.figures import heatmaps_from_run  # Fig. 6 heat maps come from HeadCLIP's own trainer

    paths = {"cache_dir": str(tmp_path / "cache"), "model_dir": str(tmp_path / "models")}
    items = heatmaps_from_run(run_dir, paths, n=2, device="cpu")
    assert len(items) == 2 and items[0].anomaly_map.shape == (64, 64) and items[0].anomaly_map.min() >= 0.0

    # make predict on a HeadCLIP run: its image score is the joint score (no pooled map), with the run's
    # thresholds; predicting the run's own test images gives back their evaluation labels' AUROC
    test_dir = tmp_path / "cache" / "demo_data" / "coin" / "test"
    pred = _script("predict.py", [f"run={run_dir}", f"images={test_dir}", f"out={tmp_path / 'pred'}",
                                  f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path)
    assert pred.returncode == 0, pred.stderr[-3000:]
    summary = json.loads((tmp_path / "pred" / "predict.json").read_text())
    assert summary["status"] == "finished" and summary["n_images"] == 6 and summary["image_score_pool"] is None
    assert summary["thresholds"]["image"] == metrics["thresholds"]["image"]
    rows = (tmp_path / "pred" / "scores.csv").read_text().splitlines()[1:]
    scores = {row.split(",")[0]: float(row.split(",")[1]) for row in rows}
    labels = [not name.startswith("good/") for name in scores]
    from torchmetrics.functional.classification import binary_auroc

    auroc = float(binary_auroc(torch.tensor(list(scores.values()), dtype=torch.float64), torch.tensor(labels)))
    assert auroc == pytest.approx(metrics["metrics"]["image_auroc"], abs=1e-6)

    table = _script("make_table.py", ["table=demo", f"table.runs_dir={runs}", f"table.output={tmp_path / 't.md'}",
                                      "table.expected=null"], tmp_path)
    assert table.returncode == 0, table.stderr[-3000:]
    text = (tmp_path / "t.md").read_text()
    assert "(selection: last; budget: paper; detector: headclip)" in text.splitlines()[0]
    auc = f"{100 * metrics['metrics']['pixel_auroc']:.1f}"
    assert f"| CutPaste | {auc} | " in text and "| CAI-N | X | X | X |" in text


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _factory(root: Path, categories: tuple[str, ...]) -> None:
    """A tiny MVTec-layout dataset: noise images, test anomalies are bright squares with their masks."""
    rng = np.random.default_rng(0)
    for cat in categories:
        for i in range(3):
            _write(root / cat / f"train/good/{i}.png", rng.integers(60, 120, (40, 40, 3), dtype=np.uint8))
        for i in range(2):
            _write(root / cat / f"test/good/{i}.png", rng.integers(60, 120, (40, 40, 3), dtype=np.uint8))
            img = rng.integers(60, 120, (40, 40, 3), dtype=np.uint8)
            img[10:20, 12:24] = 250
            mask = np.zeros((40, 40), np.uint8)
            mask[10:20, 12:24] = 255
            _write(root / cat / f"test/square/{i}.png", img)
            _write(root / cat / f"ground_truth/square/{i}_mask.png", mask)


def _aux_cfg(tmp_path: Path, category: str, *extra: str):
    from tests.conftest import compose_config

    return compose_config("config", [
        "logger=none", "foreground=full", "dataset=folder", f"dataset.reader.root={tmp_path / 'factory'}",
        f"dataset.category={category}", "dataset.image_size=32", "synthesizer=none", *TINY_HEADCLIP,
        "detector.train_on=auxiliary", "detector.auxiliary.dataset=demo", "detector.auxiliary.categories=[coin]",
        "detector.auxiliary.overrides={reader:{n_train:1,n_test_good:3,n_test_anomalous:3,image_size:64}}",
        f"paths.cache_dir={tmp_path / 'cache'}", *extra], tmp_path / "runs" / category)


def test_auxiliary_protocol_trains_once_on_another_dataset_and_tests_each_category(tmp_path):
    from cai.pipeline import run_job

    _factory(tmp_path / "factory", ("part", "other"))
    first = run_job(_aux_cfg(tmp_path, "part"), tmp_path / "runs" / "part")
    assert first["train_on"] == "auxiliary" and first["detector"] == "headclip" and first["selection"] == "last"
    assert first["auxiliary"] == {"dataset": "demo", "categories": ["coin"], "image_size": 32, "n_test_images": 6,
                                  "n_anomalous": 3}
    assert first["display_name"] == "none (auxiliary data)" and "n_pseudo" not in first
    assert (tmp_path / "runs" / "part" / "samples.png").is_file() and not (tmp_path / "cache" / "pseudo").exists()
    trained = list((tmp_path / "cache" / "headclip_auxiliary").glob("demo-*/trained.pt"))
    assert len(trained) == 1
    stamp = trained[0].stat().st_mtime_ns

    second = run_job(_aux_cfg(tmp_path, "other"), tmp_path / "runs" / "other")  # another target category
    assert trained[0].stat().st_mtime_ns == stamp  # the auxiliary training is reused, not redone
    assert len(list((tmp_path / "cache" / "headclip_auxiliary").iterdir())) == 1
    best = [torch.load(tmp_path / "runs" / c / "checkpoints" / "best.pt", weights_only=False)["model"]
            for c in ("part", "other")]
    assert best[0].keys() == best[1].keys()  # one model for every target category
    assert all(torch.equal(best[0][k], best[1][k]) if torch.is_tensor(best[0][k]) else best[0][k] == best[1][k]
               for k in best[0])
    assert second["selected_epoch"] == 2 and 0.0 <= second["metrics"]["pixel_auroc"] <= 1.0


@pytest.mark.parametrize(("extra", "message"), [
    (["synthesizer=cutpaste"], "Add synthesizer=none"),
    (["detector.selection=best"], "detector.selection=last"),
    (["detector.auxiliary.dataset=folder"], "not zero-shot"),
    (["detector.train_on=pseudo"], "synthesizer=none makes no pseudo anomalies"),
    (None, "not supported by this detector"),  # a detector config without `auxiliary` (the UNet's)
])
def test_auxiliary_protocol_misconfigurations_stop_before_any_work(tmp_path, extra, message):
    from omegaconf import open_dict

    from cai.pipeline import run_job

    _factory(tmp_path / "factory", ("part",))
    cfg = _aux_cfg(tmp_path, "part", *(extra or []))
    if extra is None:
        with open_dict(cfg):
            del cfg.detector["auxiliary"]
    with pytest.raises(ConfigError, match=message):
        run_job(cfg, tmp_path / "runs" / "part")
    assert not (tmp_path / "cache" / "headclip_auxiliary").exists()
