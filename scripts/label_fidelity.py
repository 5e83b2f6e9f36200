"""``make labels``: per synthesizer, how well pseudo-anomaly masks match what visibly changed.

    python scripts/label_fidelity.py                                  # conf/label_fidelity.yaml's list
    python scripts/label_fidelity.py dataset=demo dataset.category=coin 'label_fidelity.synthesizers=[cai_n]'
    python scripts/label_fidelity.py label_fidelity.cache_dir=<cache dir>

Writes results/label_fidelity.{md,json} and results/figures/label_fidelity/<synthesizer>.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cai.config  # noqa: E402,F401  (registers the config resolvers)
from cai.cli import run_tool  # noqa: E402
from cai.labels import run  # noqa: E402

CONFIG = "label_fidelity"


def synthesizer_configs(cfg: DictConfig) -> list[DictConfig]:
    """This command's config once per ``label_fidelity.synthesizers`` entry (its other overrides kept)."""
    overrides = [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith("synthesizer=")]
    return [compose(CONFIG, overrides=[*overrides, f"synthesizer={name}"])
            for name in cfg.label_fidelity.synthesizers]


@hydra.main(version_base="1.3", config_path="../conf", config_name="label_fidelity")
def main(cfg: DictConfig) -> None:
    result = run_tool(lambda c: run(c, lambda: synthesizer_configs(c)), cfg)
    print(Path(str(cfg.label_fidelity.output_md)).read_text() if result else "")


if __name__ == "__main__":
    main()
