"""Anomaly maps, overlays and image scores for a folder of new images from a finished run.

    python scripts/predict.py run=logs/run/mvtec/bottle/cai_n/seed0-1a2b3c4d images=/path/to/new/images
    python scripts/predict.py run=<run dir> images=<folder> out=/tmp/preds threshold=0.4
    python scripts/predict.py run=<run dir> images=<folder> recompute_thresholds=true   (runs from before thresholds)
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cai.config  # noqa: E402,F401  (config resolvers, PROJECT_ROOT)
from cai.cli import run_tool  # noqa: E402
from cai.predict import run_predict  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    run_tool(run_predict, cfg)


if __name__ == "__main__":
    main()
