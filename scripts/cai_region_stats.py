"""Compare CAI's PE region / label variants on the same draws (conf/cai_region_stats.yaml).

The Algorithm 1 draws of ``draw_mode`` (bank item, scale, R', ILS seed) are replayed with every mode
through :meth:`CAISynthesizer.replay`, so the variants differ only in the clone region and label rule.
Writes ``region_stats.json`` (mean label area fraction by scale, per mode; n replays and n labelled),
``region_grid.png`` (normal + each mode's pseudo anomaly with its label outlined, same draw per column)
and prints a Markdown table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cai.config  # noqa: E402,F401  (config resolvers, PROJECT_ROOT)
from cai.cli import run_tool  # noqa: E402
from cai.synth.cai import SCALES  # noqa: E402
from cai.synth.grid import grid_targets, outline, save_grid  # noqa: E402


def run(cfg: DictConfig) -> Path:
    paths, context = grid_targets(cfg)
    images, fgs = list(context.normals), list(context.foregrounds)
    synths = {}
    for key, mode in cfg.modes.items():
        synths[key] = instantiate(mode.params)
        synths[key].prepare(context)
    drawer = synths[cfg.draw_mode]
    index = {it: k for k, it in enumerate(drawer.bank.items)}
    areas = {k: {s: [] for s in SCALES} for k in synths}
    tried = {s: 0 for s in SCALES}
    cells = {k: [] for k in ["normal", *synths]}
    for i, (im, fg) in enumerate(zip(images, fgs, strict=True)):
        n = cfg.modes[cfg.draw_mode].n_per_image
        draws = drawer.generate_with_info(im, fg, np.random.default_rng([cfg.seed, i]), n)
        for j, d in enumerate(draws):
            if d.scale is None:
                continue
            tried[d.scale] += 1
            for key, syn in synths.items():
                rng = np.random.default_rng([cfg.seed, i, j])
                inj = syn.replay(im, fg, index[d.item], d.target_ratio, d.scale, rng)
                areas[key][d.scale].append(0.0 if inj is None else float(inj.mask.mean()))
                if i < cfg.grid_images and j == i % len(draws):
                    cells[key].append(im if inj is None else outline(inj.image, inj.mask))
            if i < cfg.grid_images and j == i % len(draws):
                cells["normal"].append(im)
    out = Path(cfg.out_dir)
    stats = {
        key: {s: {"mean_area": float(np.mean(v)) if v else None, "n": len(v), "labelled": int(np.count_nonzero(v)),
                  "mean_area_labelled": float(np.mean([a for a in v if a > 0])) if any(v) else None}
              for s, v in by.items()}
        for key, by in areas.items()
    }
    ref = next(iter(synths))  # paired with the first mode: draws that both label
    for key, by in areas.items():
        for s, v in by.items():
            both = [(a, r) for a, r in zip(v, areas[ref][s], strict=True) if a > 0 and r > 0]
            stats[key][s]["paired_ratio_to_" + ref] = (
                float(np.mean([a for a, _ in both]) / np.mean([r for _, r in both])) if both else None
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / "region_stats.json").write_text(json.dumps({"draws_per_scale": tried, "modes": stats}, indent=2))
    labels = ["normal", *[cfg.modes[k].display_name for k in synths]]
    save_grid(out / "region_grid.png", [cells[k] for k in ["normal", *synths]], labels=labels, cell=cfg.cell)
    print(f"{len(images)} images of {cfg.dataset}/{cfg.category}, draws of {cfg.draw_mode} replayed; "
          "mean label area (fraction of the image; an unlabelled replay counts 0), "
          f"mean over labelled replays only, [labelled/replays], x area ratio to {ref} on draws both label:")
    print("| variant | " + " | ".join(SCALES) + " |")
    print("|---|" + "---|" * len(SCALES))
    for key in synths:
        row = [f"{st['mean_area']:.4f}, {st['mean_area_labelled'] or 0:.4f} [{st['labelled']}/{st['n']}] "
               f"x{st['paired_ratio_to_' + ref] or 0:.2f}"
               if st["n"] else "-" for st in (stats[key][s] for s in SCALES)]
        print(f"| {cfg.modes[key].display_name} | " + " | ".join(row) + " |")
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="cai_region_stats")
def main(cfg: DictConfig) -> None:
    print(run_tool(run, cfg))


if __name__ == "__main__":
    main()
