"""Save a grid of normal images and their CAI-N / CAI-M pseudo anomalies + masks (conf/cai_grid.yaml).

Rows: normal, then for each mode its pseudo anomaly and mask; column i shows output i of the ten
made for image i (so the scales vary along the row). Both modes use the same seed per image, so
they inject the same pattern at the same place whenever their labels both succeed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cai.config  # noqa: E402,F401  (config resolvers, PROJECT_ROOT)
from cai.cli import run_tool  # noqa: E402
from cai.synth.grid import grid_targets, outline, save_grid  # noqa: E402


def run(cfg: DictConfig) -> Path:
    paths, context = grid_targets(cfg)
    images, fgs = list(context.normals), list(context.foregrounds)
    rows, labels, outlined = [images], ["normal"], [images]
    for mode in cfg.modes.values():
        syn = instantiate(mode.params)
        syn.prepare(context)
        outs, masks = [], []
        for i, (im, fg) in enumerate(zip(images, fgs, strict=True)):
            info = syn.generate_with_info(im, fg, np.random.default_rng([cfg.seed, i]), mode.n_per_image)
            pick = info[i % len(info)]
            outs.append(pick.image)
            masks.append(pick.mask)
            print(
                f"{mode.display_name} {paths[i].name}: {pick.scale} R'={pick.ratio:.2f} "
                f"{pick.item.anomaly_class}/{pick.item.source} at {pick.location} ({pick.ils})"
            )
        rows += [outs, masks]
        labels += [mode.display_name, f"{mode.display_name} mask"]
        outlined += [[outline(o, m) for o, m in zip(outs, masks, strict=True)]]
    save_grid(cfg.out, rows, labels=labels)
    if cfg.outline_out:
        save_grid(cfg.outline_out, outlined, labels=["normal", *[m.display_name for m in cfg.modes.values()]])
    return Path(cfg.out)


@hydra.main(version_base="1.3", config_path="../conf", config_name="cai_grid")
def main(cfg: DictConfig) -> None:
    print(run_tool(run, cfg))


if __name__ == "__main__":
    main()
