"""``make labels``: label fidelity of pseudo-anomaly caches, per synthesizer, as a table and galleries.

For each synthesizer the cache is synthesized (or reused) through :mod:`cai.pipeline` on the configured
dataset; or one existing cache dir (``label_fidelity.cache_dir``) is read. Normal images come from
``prepare_category`` at ``dataset.image_size`` (the cache stores only pseudo images), so the dataset config
must match the cache's. Writes ``<output_md>``, ``<output_json>`` and one gallery PNG per synthesizer (the
worst-labelled outputs) under ``<figures_dir>``. Measures: :mod:`cai.metrics.label_fidelity`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from cai.errors import ConfigError, MissingFileError
from cai.io import resize_image, resize_mask, write_json, write_text
from cai.metrics.label_fidelity import (
    FidelityOptions,
    LabelFidelity,
    evaluate_pseudo,
    label_fidelity,
    summarize,
    summarize_groups,
)
from cai.pipeline import PreparedCategory, load_category, prepare_category, synthesize
from cai.synth.cache import PseudoRecord, load_pseudo, read_manifest
from cai.synth.grid import outline, save_grid
from cai.viz import heat

log = logging.getLogger(__name__)


@dataclass
class CacheFidelity:
    """One synthesizer's cache with its per-output measures."""

    name: str
    directory: Path
    records: list[PseudoRecord]
    pseudo: np.ndarray
    masks: np.ndarray
    items: list[LabelFidelity]

    def summary(self, group_by: str | None) -> dict[str, Any]:
        out = {"synthesizer": self.name, "cache": str(self.directory), **summarize(self.items)}
        if group_by:
            groups = [r.info.get(group_by) for r in self.records]
            if any(g is not None for g in groups):
                out[f"by_{group_by}"] = summarize_groups(self.items, groups)
        return out


def prepare(cfg: DictConfig) -> PreparedCategory:
    """The dataset's category at the working size, its train set cut to ``label_fidelity.max_images``."""
    data = load_category(cfg)
    limit = cfg.label_fidelity.max_images
    if limit is not None:
        data = dataclasses.replace(data, train=tuple(data.train)[: int(limit)])
    return prepare_category(cfg, data)


def measure_cache(name: str, directory: Path, prep: PreparedCategory, options: FidelityOptions) -> CacheFidelity:
    """Read a finished cache dir and measure every record against its normal image."""
    directory = Path(directory)
    if not (directory / "manifest.jsonl").is_file():
        raise MissingFileError(
            "Not a finished pseudo-anomaly cache (no manifest.jsonl).", where=directory,
            fix="Point label_fidelity.cache_dir at <cache>/pseudo/<dataset>/<category>/<name>-<hash>.")
    _check_cache_matches(directory, prep)
    records = read_manifest(directory)
    pseudo, masks = load_pseudo(directory, records)
    size = prep.normals[0].shape[0]
    if pseudo.shape[1:3] != (size, size):  # measure at the size the detector sees
        pseudo = np.stack([resize_image(p, size) for p in pseudo])
        masks = np.stack([resize_mask(m, size) for m in masks])
    index = [r.normal_index for r in records]
    return CacheFidelity(name, directory, records, pseudo, masks,
                         evaluate_pseudo(prep.normals, pseudo, masks, index, options, [r.info for r in records]))


def _check_cache_matches(directory: Path, prep: PreparedCategory) -> None:
    path = directory / "config.json"
    if not path.is_file():
        return
    key = json.loads(path.read_text())
    data = prep.data
    expected = {"dataset": data.dataset, "category": data.category, "n_train": len(prep.normals)}
    wrong = {k: (key.get(k), v) for k, v in expected.items() if k in key and key[k] != v}
    if wrong:
        raise ConfigError(
            "The cache was made from other normal images than the configured dataset gives: "
            + ", ".join(f"{k} cache={a!r} config={b!r}" for k, (a, b) in wrong.items()),
            where=directory,
            fix="Pass the cache's dataset=…, dataset.category=… and label_fidelity.max_images=<its n_train>.")


def run(cfg: DictConfig, synth_cfgs: Callable[[], Sequence[DictConfig]]) -> dict[str, Any]:
    """Measure every synthesizer (``synth_cfgs()`` gives one composed config each) or the one cache dir,
    then write the table, the JSON and the galleries. Returns the JSON's content."""
    lf = cfg.label_fidelity
    options = FidelityOptions.from_config(cfg.fidelity)
    prep = prepare(cfg)
    results: list[CacheFidelity] = []
    if lf.cache_dir:
        directory = Path(str(lf.cache_dir))
        results.append(measure_cache(directory.name.rsplit("-", 1)[0], directory, prep, options))
    else:
        for scfg in synth_cfgs():
            directory, _, _, _ = synthesize(scfg, prep)
            results.append(measure_cache(str(scfg.synthesizer.name), directory, prep, options))
            log.info("Label fidelity of %s: %s", scfg.synthesizer.name, _fmt_row(results[-1].summary(None)))
    group_by = cfg.fidelity.get("group_by")
    summaries = [r.summary(group_by) for r in results]
    header = {
        "dataset": prep.data.dataset, "category": prep.data.category, "image_size": int(cfg.dataset.image_size),
        "n_train_images": len(prep.normals), "foreground": _target_name(cfg.foreground),
        "measure": options.measure, "visibility_threshold": options.visibility_threshold,
    }
    figures = Path(str(lf.figures_dir))
    galleries = {}
    for r in results:
        path = figures / f"{r.name}.png"
        write_gallery(path, r, prep, options, n=int(lf.gallery_n), change_max=float(lf.change_map_max))
        galleries[r.name] = str(path)
    content = {**header, "synthesizers": summaries, "galleries": galleries}
    write_json(Path(str(lf.output_json)), content)
    write_text(Path(str(lf.output_md)), markdown(header, summaries, group_by, galleries, Path(str(lf.output_md))))
    return content


def _target_name(node: Any) -> str:
    target = OmegaConf.select(node, "_target_") if isinstance(node, DictConfig) else None
    return str(target).rsplit(".", 1)[-1] if target else "?"


def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _fmt_row(s: dict[str, Any]) -> str:
    return (f"n={s['n']} label={_pct(s['label_area'])}% visible={_pct(s['visible_area'])}% "
            f"over={_pct(s['over'])}% under={_pct(s['under'])}% IoU={_num(s['iou'])}")


_COLUMNS = ("| n | misaligned | labelled | label area % | visible area % | over-labelling % | under-labelling % "
            "| IoU | invisible % |")


def _cells(s: dict[str, Any]) -> str:
    return (f"{s['n']} | {s['n_misaligned']} | {s['n_labelled']} | {_pct(s['label_area'])} | "
            f"{_pct(s['visible_area'])} | {_pct(s['over'])} | {_pct(s['under'])} | {_num(s['iou'])} | "
            f"{_pct(s['invisible'])} |")


def markdown(header: dict[str, Any], summaries: Sequence[dict[str, Any]], group_by: str | None,
             galleries: dict[str, str], md_path: Path) -> str:
    """The results table: one row per synthesizer, then the split by ``group_by`` where recorded."""
    lines = [
        "# Label fidelity of pseudo anomalies",
        "",
        f"Dataset {header['dataset']}/{header['category']}, {header['n_train_images']} train images at "
        f"{header['image_size']} px (foreground: {header['foreground']}). A pixel changed visibly when "
        f"{'ΔE00 (CIEDE2000)' if header['measure'] == 'ciede2000' else 'the grey-image difference'} "
        f"between the normal image and the pseudo anomaly exceeds {header['visibility_threshold']:g}. "
        "Means over outputs: over-labelling = share of mask pixels with no visible change; under-labelling = "
        "share of visibly changed pixels outside the mask; IoU of mask and visible change; invisible = share of "
        "labelled outputs whose mask holds no visibly changed pixel. Areas in % of the image. Misaligned: the "
        "synthesizer recorded a whole-image transform of its base (DRAEM rotates the normal image in 30 % of "
        "draws), so the stored normal image is not the output's base; counted, left out of the means. "
        "Generated by `make labels` (scripts/label_fidelity.py).",
        "",
        "| synthesizer " + _COLUMNS,
        "|---" * 10 + "|",
    ]
    lines += [f"| {s['synthesizer']} | " + _cells(s) for s in summaries]
    key = f"by_{group_by}" if group_by else None
    split = [s for s in summaries if key and key in s]
    if split:
        lines += ["", f"Split by {group_by} (records' `info.{group_by}`):", "",
                  f"| synthesizer | {group_by} " + _COLUMNS, "|---" * 11 + "|"]
        for s in split:
            lines += [f"| {s['synthesizer']} | {g} | " + _cells(v) for g, v in s[key].items()]
    if galleries:
        lines += ["", "Worst-labelled outputs (lowest IoU; columns: normal | pseudo anomaly with the mask "
                  "outline in red | change map, JET above the threshold, grey below | mask):", ""]
        for name, path in galleries.items():
            rel = _relative(Path(path), md_path.parent)
            lines.append(f"- {name}: [{rel}]({rel})")
    return "\n".join(lines) + "\n"


def _relative(path: Path, start: Path) -> str:
    try:
        return str(path.resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path)


def worst(items: Sequence[LabelFidelity], n: int) -> list[int]:
    """Indices of the ``n`` worst-labelled outputs: lowest IoU first, then most over + under-labelling;
    normal outputs (empty mask and no visible change) and misaligned ones are left out."""
    scored = [(it.iou, -(0 if math.isnan(it.over) else it.over) - (0 if math.isnan(it.under) else it.under), k)
              for k, it in enumerate(items) if not math.isnan(it.iou) and not it.misaligned]
    return [k for *_, k in sorted(scored)[:n]]


def write_gallery(path: Path, result: CacheFidelity, prep: PreparedCategory, options: FidelityOptions,
                  n: int, change_max: float) -> None:
    """Rows of normal | pseudo + mask outline | change map | mask for the ``n`` worst-labelled outputs."""
    picks = worst(result.items, n)
    if not picks:
        log.warning("No labelled or visibly changed output for %s: no gallery", result.name)
        return
    rows, labels = [], []
    for k in picks:
        normal = prep.normals[result.records[k].normal_index]
        mask = result.masks[k]
        item, change = label_fidelity(normal, result.pseudo[k], mask, options, result.records[k].info)
        visible = change > options.visibility_threshold
        shown = heat(np.clip(change / change_max, 0.0, 1.0))
        shown[~visible] = 64
        rows.append([normal, outline(result.pseudo[k], mask), outline(shown, mask, (255, 255, 255)), mask])
        labels.append(f"{k} IoU {item.iou:.2f}")
    save_grid(path, rows, labels=labels)
