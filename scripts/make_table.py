"""Collect finished (and failed) run dirs into ``results/<table>.md`` beside the paper's numbers and print it;
``results/<table>.csv`` beside it is the long table, one row per run dir with its status (cai/report.py).

    python scripts/make_table.py table=table1
    python scripts/make_table.py table=table1 table.budget=cpu table.selections=[best,val]
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cai.config  # noqa: E402,F401  (config resolvers, PROJECT_ROOT)
from cai.cli import run_tool  # noqa: E402
from cai.errors import ConfigError  # noqa: E402
from cai.io import write_text  # noqa: E402
from cai.report import (  # noqa: E402
    TableSpec,
    collect_failed,
    collect_runs,
    dataset_categories,
    render,
    write_runs_csv,
)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def make_table(cfg: DictConfig) -> None:
    """Render ``cfg.table`` from its run dirs, write it to ``table.output`` and print it."""
    t = OmegaConf.to_container(cfg.table, resolve=True)
    output = Path(t.pop("output"))
    if t.get("expected") == "dataset_configs":  # each dataset's `categories` in conf/dataset/<name>.yaml
        t["expected"] = dataset_categories(t["datasets"], CONF_DIR / "dataset")
    spec = TableSpec(**{**t, "runs_dir": Path(t["runs_dir"]),
                        "paper_csv": Path(t["paper_csv"]) if t.get("paper_csv") else None,
                        "texture_notes": {**OmegaConf.to_container(cfg.texture_notes),
                                          **(t.get("texture_notes") or {})}})
    if not spec.runs_dir.is_dir():  # a mistyped table.runs_dir used to render an all-X table and exit 0
        raise ConfigError(f"No run directory at {spec.runs_dir}: nothing to tabulate.", where="table.runs_dir",
                          fix="Run the experiment first (see the table's make target), or point "
                              "table.runs_dir=... at the folder that holds its run dirs.")
    text = render(spec, collect_runs(spec.runs_dir, spec.source), collect_failed(spec.runs_dir))
    write_text(output, text)
    csv_path = output.with_suffix(".csv")
    n_runs = write_runs_csv(csv_path, spec.runs_dir, spec.source, budget=spec.budget, detector=spec.detector)
    print(text)
    print(f"written to {output}; every run dir ({n_runs}, with its status) to {csv_path}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="make_table")
def main(cfg: DictConfig) -> None:
    run_tool(make_table, cfg)


if __name__ == "__main__":
    main()
