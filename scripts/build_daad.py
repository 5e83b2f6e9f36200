"""Build an anomaly-bank (DAAD-style) manifest: ``python scripts/build_daad.py [overrides]``.

See ``conf/build_daad.yaml`` for the options and :func:`cai.bank.build_manifest` for what it does. With
``bank=public`` the public archives of ``conf/bank/public.yaml`` are first fetched, checksum-checked and
converted into a folder bank (:func:`cai.bank_sources.build_public_bank`), which is then harvested.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cai.config  # noqa: E402,F401  (config resolvers, PROJECT_ROOT)
from cai.bank import build_manifest  # noqa: E402
from cai.bank_sources import build_public_bank  # noqa: E402
from cai.cli import run_tool  # noqa: E402


def run(cfg: DictConfig) -> Path:
    """Build the manifest described by ``cfg`` and return its path."""
    c = OmegaConf.to_container(cfg, resolve=True)
    folders = list(c.get("folders") or [])
    if (c.get("bank") or {}).get("sources"):
        folders.append({"root": str(build_public_bank(c["bank"]))})
    build_manifest(
        c["out"],
        datasets=c.get("datasets") or [],
        folders=folders,
        tables=c.get("tables") or {},
        source_group_of=c.get("source_group_of"),
    )
    return Path(c["out"])


@hydra.main(version_base="1.3", config_path="../conf", config_name="build_daad")
def main(cfg: DictConfig) -> None:
    print(run_tool(run, cfg))


if __name__ == "__main__":
    main()
