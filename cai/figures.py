"""The paper's figures as PNGs: galleries (Fig. 2, 5), detector heat maps (Fig. 6) and bar charts (Fig. 7 a–d).

Drawing functions take plain arrays and numbers, so tests feed them fake data; loader functions read
what finished run dirs hold (``metrics.json``, ``.hydra/config.yaml``, the pseudo-anomaly cache named in
``run_info.json``, ``checkpoints/best.pt``). Matplotlib's object API with the Agg canvas is used (no
pyplot, no global backend switch), and every PNG is written atomically with :func:`cai.io.write_png`.
Each figure function returns the PNG's path and, given a :class:`cai.track.Tracker`, logs the image to it.

What the paper shows (§3.1, §4.2): Fig. 2 pseudo anomalies of each ZSAS method on the same normal
images; Fig. 5 CAI (row 1) vs CDM (rows 2–5); Fig. 6 test image | ground truth | detector heat map on
anomalies unseen in the bank (wrong pill type, bent grid, misplaced transistor); Fig. 7 AUC / AP / PRO (%)
of (a) CAI vs CDM-5 vs CDM-8, (b) ZSAS (CAI, GLASS) vs the FSAS AnomalyDiffusion, (c) bank source groups,
(d) 500 / 1000 / 1500 detector training samples. Fig. 7 prints no numbers in the paper.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread

from cai.authenticity import build, load_run_config, pseudo_cache_dir, resolve_device
from cai.errors import MissingFileError
from cai.io import read_image, read_mask, resize_image, resize_mask, write_png
from cai.report import finished_run_dirs
from cai.synth.cache import read_manifest

log = logging.getLogger(__name__)

DEFAULT_DIR = Path("results/figures")
METRICS = {"AUC": "pixel_auroc", "AP": "pixel_ap", "PRO": "pro"}
MISSING = "X"
Pair = tuple[np.ndarray, np.ndarray | None]


# -- output ------------------------------------------------------------------------------------------
def save_figure(fig: Figure, path: Path, tracker: Any = None, caption: str | None = None, dpi: int = 150) -> Path:
    """Render ``fig`` to a PNG at ``path`` (atomic) and log it to ``tracker`` when one is given."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.08, facecolor="white")
    buf.seek(0)
    rgb = (imread(buf, format="png")[:, :, :3] * 255).round().astype(np.uint8)
    path = Path(path)
    write_png(path, rgb)
    if tracker is not None:
        tracker.log_image(path.stem, rgb, caption=caption)
    return path


def _blank(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _missing(ax: Any) -> None:
    ax.set_facecolor("#eeeeee")
    ax.text(0.5, 0.5, MISSING, ha="center", va="center", transform=ax.transAxes, fontsize=16, color="#888888")


# -- Fig. 2 / Fig. 5: galleries ----------------------------------------------------------------------
def gallery(rows: Mapping[str, Sequence[Pair | None]], path: Path, normals: Sequence[np.ndarray] | None = None,
            title: str | None = None, normal_label: str = "Normal", show_masks: bool = True,
            tracker: Any = None, cell: float = 1.45) -> Path:
    """Rows of images (one row per method) over the same columns; a ``None`` cell is drawn as "X".

    ``normals`` (optional) is drawn as the first row. With ``show_masks`` each pseudo anomaly's mask is
    outlined in red, so small anomalies can be found.
    """
    all_rows: list[tuple[str, Sequence[Pair | None]]] = []
    if normals is not None:
        all_rows.append((normal_label, [(n, None) for n in normals]))
    all_rows += list(rows.items())
    if not all_rows:
        raise ValueError("gallery needs at least one row")
    n_cols = max(1, max(len(items) for _, items in all_rows))
    label_w = 0.12 * max(len(label) for label, _ in all_rows) + 0.3
    height = cell * len(all_rows) + (0.45 if title else 0.1)
    fig = Figure(figsize=(label_w + cell * n_cols, height))
    grid = fig.add_gridspec(len(all_rows), n_cols, left=label_w / (label_w + cell * n_cols), right=1.0,
                            bottom=0.0, top=1.0, wspace=0.04, hspace=0.04)
    for i, (label, items) in enumerate(all_rows):
        for j in range(n_cols):
            ax = fig.add_subplot(grid[i, j])
            _blank(ax)
            item = items[j] if j < len(items) else None
            if item is None:
                _missing(ax)
            else:
                image, mask = item
                ax.imshow(image, interpolation="lanczos")
                if show_masks and mask is not None and mask.any():
                    ax.contour(mask.astype(float), levels=[0.5], colors=["#ff2a2a"], linewidths=0.7)
            if j == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9, labelpad=6)
    if title:
        fig.suptitle(title, fontsize=10, y=1.0 + 0.08 / height, va="bottom")
    return save_figure(fig, path, tracker, caption=title)


def figure2(rows: Mapping[str, Sequence[Pair | None]], normals: Sequence[np.ndarray] | None,
            out_dir: Path = DEFAULT_DIR, name: str = "fig2_zsas_gallery.png", tracker: Any = None,
            title: str | None = "Fig. 2: pseudo anomalies of each ZSAS method on the same normal images",
            show_masks: bool = True) -> Path:
    """Fig. 2: the normal images (row 1) and each synthesizer's pseudo anomalies of them."""
    return gallery(rows, Path(out_dir) / name, normals, title, show_masks=show_masks, tracker=tracker)


def figure5(rows: Mapping[str, Sequence[Pair | None]], normals: Sequence[np.ndarray] | None = None,
            out_dir: Path = DEFAULT_DIR, name: str = "fig5_cai_vs_cdm.png", tracker: Any = None,
            title: str | None = "Fig. 5: pseudo anomalies of CAI (row 1) and CDM (other rows)",
            show_masks: bool = True) -> Path:
    """Fig. 5: CAI's row over the CDM rows (the same gallery, other labels)."""
    return gallery(rows, Path(out_dir) / name, normals, title, show_masks=show_masks, tracker=tracker)


def _runs_by(runs_dir: Path, field: str, dataset: str | None, category: str | None) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = defaultdict(list)
    for run_dir in finished_run_dirs(runs_dir):
        rec = json.loads((run_dir / "metrics.json").read_text())
        if (dataset and rec.get("dataset") != dataset) or (category and rec.get("category") != category):
            continue
        out[str(_dotted(rec, field))].append(run_dir)
    return out


def gallery_from_runs(runs_dir: Path, paths: Mapping[str, Any], dataset: str, category: str,
                      rows: Sequence[str] | None = None, n_images: int = 5, field: str = "display_name",
                      normal_indices: Sequence[int] | None = None) -> tuple[dict[str, list[Pair | None]],
                                                                             list[np.ndarray]]:
    """Gallery rows from each run's pseudo-anomaly cache, on the same normal training images.

    The columns are the first ``n_images`` normal images for which every row has a pseudo anomaly with
    a non-empty mask (or ``normal_indices``); a row without a run is all "X".
    """
    by_label = _runs_by(runs_dir, field, dataset, category)
    labels = list(rows) if rows else sorted(by_label)
    firsts: dict[str, dict[int, Any]] = {}
    caches: dict[str, Path] = {}
    for label in labels:
        if not by_label.get(label):
            log.warning("Gallery: no finished %s/%s run with %s=%s under %s", dataset, category, field, label, runs_dir)
            continue
        cache = pseudo_cache_dir(by_label[label][0])
        caches[label] = cache
        first: dict[int, Any] = {}
        for r in read_manifest(cache):
            if r.anomalous and r.normal_index not in first:
                first[r.normal_index] = r
        firsts[label] = first
    if not firsts:
        raise MissingFileError(f"No finished {dataset}/{category} runs for the gallery rows {labels}.", where=runs_dir,
                               fix="Run the sweep first (scripts/run.py) or point runs_dir at it.")
    if normal_indices is None:
        common = set.intersection(*(set(f) for f in firsts.values()))
        anywhere = sorted(set().union(*(set(f) for f in firsts.values())) - common)
        normal_indices = (sorted(common) + anywhere)[:n_images]
    run_cfg = load_run_config(next(iter(by_label[label][0] for label in firsts)), paths)
    data = build(run_cfg.dataset.reader).load(str(run_cfg.dataset.category))
    size = int(run_cfg.dataset.image_size)
    normals = [resize_image(read_image(data.train[i]), size) for i in normal_indices]
    out: dict[str, list[Pair | None]] = {}
    for label in labels:
        cells: list[Pair | None] = []
        for i in normal_indices:
            rec = firsts.get(label, {}).get(i)
            cells.append(None if rec is None else (read_image(caches[label] / rec.image),
                                                   read_mask(caches[label] / rec.mask)))
        out[label] = cells
    return out, normals


# -- Fig. 6: heat maps ---------------------------------------------------------------------------------
@dataclass
class HeatmapItem:
    """One real test anomaly: image (H, W, 3) uint8, ground truth (H, W) bool, anomaly map (H, W) in [0, 1]."""

    image: np.ndarray
    mask: np.ndarray
    anomaly_map: np.ndarray
    label: str


def heatmap_panel(items: Sequence[HeatmapItem], path: Path, title: str | None = None, alpha: float = 0.5,
                  tracker: Any = None, cell: float = 1.8) -> Path:
    """Rows of test image | ground truth | anomaly-map overlay, with one colour bar for the scores."""
    if not items:
        raise ValueError("heatmap_panel needs at least one item")
    label_w = 0.11 * max(len(it.label) for it in items) + 0.3
    height = cell * len(items) + (0.75 if title else 0.4)
    fig = Figure(figsize=(label_w + 3 * cell + 0.9, height))
    grid = fig.add_gridspec(len(items), 4, width_ratios=[1, 1, 1, 0.07], left=label_w / (label_w + 3 * cell + 0.9),
                            right=0.93, bottom=0.0, top=1.0, wspace=0.05, hspace=0.05)
    heads = ["test image", "ground truth", "heat map (detector)"]
    mappable = None
    for i, it in enumerate(items):
        axes = [fig.add_subplot(grid[i, j]) for j in range(3)]
        for ax in axes:
            _blank(ax)
        axes[0].imshow(it.image)
        axes[1].imshow(it.mask, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[2].imshow(it.image)
        mappable = axes[2].imshow(it.anomaly_map, cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
        axes[0].set_ylabel(it.label, rotation=0, ha="right", va="center", fontsize=9, labelpad=6)
        if i == 0:
            for ax, head in zip(axes, heads, strict=True):
                ax.set_title(head, fontsize=9)
    cax = fig.add_subplot(grid[:, 3])
    fig.colorbar(mappable, cax=cax).set_label("anomaly score", fontsize=8)
    cax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10, y=1.0 + 0.3 / height, va="bottom")
    return save_figure(fig, path, tracker, caption=title)


def figure6(items: Sequence[HeatmapItem], out_dir: Path = DEFAULT_DIR, name: str = "fig6_heatmaps.png",
            tracker: Any = None,
            title: str | None = "Fig. 6: detector trained on CAI pseudo anomalies, on real test anomalies") -> Path:
    """Fig. 6: heat maps of the detector on real test anomalies."""
    return heatmap_panel(items, Path(out_dir) / name, title, tracker=tracker)


def _pick_test_anomalies(anomalies: Sequence[Any], n: int, prefer: Sequence[str] = ()) -> list[Any]:
    """Up to ``n`` anomalous test items: preferred defect types first, then one per defect type in turn."""
    by_defect: dict[str, list[Any]] = defaultdict(list)
    for t in anomalies:
        by_defect[t.defect].append(t)
    order = [d for d in prefer if d in by_defect] + sorted(d for d in by_defect if d not in prefer)
    picked: list[Any] = []
    depth = 0
    while len(picked) < n and any(len(by_defect[d]) > depth for d in order):
        picked += [by_defect[d][depth] for d in order if len(by_defect[d]) > depth][: n - len(picked)]
        depth += 1
    return picked


@torch.no_grad()
def predict_maps(model: torch.nn.Module, images: np.ndarray, device: torch.device, batch: int = 8) -> np.ndarray:
    """Anomaly maps as the trainer computes them: softmax probability of class 1 on [0, 1] RGB input."""
    model = model.to(device).eval()
    out = []
    for s in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[s : s + batch].transpose(0, 3, 1, 2))).float().div_(255)
        out.append(torch.softmax(model(x.to(device)).float(), dim=1)[:, 1].cpu().numpy())
    return np.concatenate(out)


def heatmaps_from_run(run_dir: Path, paths: Mapping[str, Any], n: int = 2, prefer: Sequence[str] = (),
                      device: str = "auto") -> list[HeatmapItem]:
    """The run's selected detector (``checkpoints/best.pt``, built from ``detector.model``, or by the
    detector's own trainer, e.g. HeadCLIP's) on ``n`` real test anomalies of its category (``prefer``'d
    defect types first)."""
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoints" / "best.pt"
    if not ckpt_path.is_file():
        raise MissingFileError("The run has no selected detector checkpoint.", where=ckpt_path,
                               fix="Heat maps need a finished run of scripts/run.py (it writes checkpoints/best.pt).")
    cfg = load_run_config(run_dir, paths)
    data = build(cfg.dataset.reader).load(str(cfg.dataset.category))
    size = int(cfg.dataset.image_size)
    chosen = _pick_test_anomalies(data.anomalies, n, prefer)
    images, masks = [], []
    for t in chosen:
        img = read_image(t.image)
        images.append(resize_image(img, size))
        masks.append(resize_mask(read_mask(t.mask, img.shape[:2]), size))
    dev = resolve_device(device)
    if cfg.detector.get("trainer") and images:  # another detector family (detector=headclip): its trainer
        from cai.detect.trainer import make_trainer  # builds the model, loads best.pt and predicts the maps

        trainer = make_trainer(cfg.detector, run_dir, dev, int(cfg.seed))
        chw = torch.from_numpy(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)))
        maps = trainer.predict(trainer.load_selected(), chw).numpy()
    else:
        model = build(cfg.detector.model)
        model.load_state_dict(torch.load(ckpt_path, map_location=dev, weights_only=False)["model"])
        maps = predict_maps(model, np.stack(images), dev) if images else np.zeros((0, size, size))
    return [HeatmapItem(im, m, a, f"{data.category} / {t.defect}")
            for im, m, a, t in zip(images, masks, maps, chosen, strict=True)]


# -- Fig. 7: grouped bars ------------------------------------------------------------------------------
def bar_chart(series: Mapping[str, Mapping[str, float | None]], metrics: Sequence[str], path: Path,
              title: str | None = None, ylabel: str = "%", hatched: Sequence[str] = (), note: str | None = None,
              tracker: Any = None) -> Path:
    """Grouped bars: one group per metric, one bar per series, value labels; a missing value shows "X".

    Series named ``"<method> (<source>)"`` share the method's colour, so ours and the paper's bars of one
    method pair up; ``hatched`` series (published numbers) are hatched.
    """
    n = max(1, len(series))
    many = n > 3
    fig = Figure(figsize=(max(5.0, 1.1 + len(metrics) * (0.45 * n + 0.5)), 4.2))
    ax = fig.add_subplot()
    x = np.arange(len(metrics))
    width = 0.8 / n
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
    tops = [0.0]
    bases: list[str] = []
    for name in series:
        if name.split(" (")[0] not in bases:
            bases.append(name.split(" (")[0])
    for k, (name, values) in enumerate(series.items()):
        pos = x - 0.4 + width * (k + 0.5)
        heights = [values.get(m) for m in metrics]
        color = colors[bases.index(name.split(" (")[0]) % len(colors)]
        ax.bar(pos, [h if h is not None else 0.0 for h in heights], width * 0.92, label=name, color=color,
               hatch="///" if name in hatched else None, edgecolor="white", linewidth=0.5)
        for p, h in zip(pos, heights, strict=True):
            if h is None:
                ax.text(p, 1.0, MISSING, ha="center", va="bottom", fontsize=9, color="#666666", fontweight="bold")
            else:
                ax.text(p, h + 0.8, f"{h:.1f}", ha="center", va="bottom", fontsize=7, rotation=90 if many else 0)
                tops.append(h)
    ax.set_xticks(x, list(metrics))
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(100.0, max(tops) + (13 if many else 7)))
    ax.yaxis.grid(True, alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=min(n, 3), frameon=False, fontsize=8)
    if note:
        fig.text(0.01, -0.02 - 0.05 * ((n + 2) // 3), note, fontsize=7, color="#444444", ha="left", va="top",
                 wrap=True)
    return save_figure(fig, path, tracker, caption=title)


FIG7_TITLES = {
    "a": "Fig. 7a: CAI vs CDM",
    "b": "Fig. 7b: ZSAS vs FSAS",
    "c": "Fig. 7c: anomaly-bank data sources",
    "d": "Fig. 7d: detector training samples per epoch",
}
DATASET_NAMES = {"mvtec": "MVTec-AD", "visa": "VisA", "ksdd2": "KSDD2"}


def figure7(panel: str, series: Mapping[str, Mapping[str, float | None]], out_dir: Path = DEFAULT_DIR,
            metrics: Sequence[str] = tuple(METRICS), title: str | None = None, hatched: Sequence[str] = (),
            note: str | None = None, tracker: Any = None, dataset: str | None = None) -> Path:
    """One panel (a–d) of Fig. 7 as ``fig7<panel>.png`` (the dataset, if given, is named in the title)."""
    title = title or FIG7_TITLES.get(panel)
    if title and dataset:
        title += f" ({DATASET_NAMES.get(dataset, dataset)}, mean over categories)"
    return bar_chart(series, metrics, Path(out_dir) / f"fig7{panel}.png", title, hatched=hatched, note=note,
                     tracker=tracker)


def _dotted(record: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(record, Mapping) or part not in record:
            return None
        record = record[part]
    return record


def group_key(value: Any) -> str:
    """A group value as a label: None → "all", a list → "a+b", 1000.0 → "1000"."""
    if value is None:
        return "all"
    if isinstance(value, list | tuple):
        return "+".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def run_field(run_dir: Path, record: Mapping[str, Any], field: str) -> Any:
    """``field`` of a run: a dotted path into metrics.json, or ``config.<dotted>`` into its saved config."""
    if field.startswith("config."):
        path = Path(run_dir) / ".hydra" / "config.yaml"
        return _dotted(yaml.safe_load(path.read_text()) if path.is_file() else {}, field[len("config."):])
    return _dotted(record, field)


def group_metrics(runs_dir: Path, group_field: str, dataset: str | None = None,
                  metrics: Mapping[str, str] = METRICS, groups: Sequence[Any] | None = None,
                  labels: Mapping[str, str] | None = None,
                  where: Mapping[str, Any] | None = None) -> dict[str, dict[str, float | None]]:
    """Mean over categories (× 100) of each metric per group of finished runs; absent groups get None.

    ``where`` keeps only runs whose fields (same syntax as ``group_field``) equal the given values, e.g.
    ``{"display_name": "CAI-N"}`` so that Table 1's other synthesizers do not join Fig. 7d's 1000 group.
    """
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run_dir in finished_run_dirs(runs_dir):
        rec = json.loads((run_dir / "metrics.json").read_text())
        if dataset and rec.get("dataset") != dataset:
            continue
        if any(group_key(run_field(run_dir, rec, f)) != group_key(v) for f, v in (where or {}).items()):
            continue
        key = group_key(run_field(run_dir, rec, group_field))
        for label, k in metrics.items():
            v = (rec.get("metrics") or {}).get(k)
            if v is not None and v == v:  # not NaN
                values[key][label].append(100.0 * float(v))
    keys = [group_key(g) for g in groups] if groups else sorted(values)
    labels = dict(labels or {})
    return {labels.get(k, k): {m: statistics.fmean(values[k][m]) if values[k][m] else None for m in metrics}
            for k in keys}


def reference_series(csv_path: Path, rows: Sequence[str], dataset: str, metrics: Sequence[str] = tuple(METRICS),
                     suffix: str = "", row_column: str = "synthesizer") -> dict[str, dict[str, float | None]]:
    """Published numbers (long CSV: row, dataset, one column per metric, in %); an empty cell is None."""
    found: dict[str, dict[str, float | None]] = {}
    if not Path(csv_path).is_file():
        log.warning("Reference numbers not found: %s (their bars show X)", csv_path)
    else:
        with Path(csv_path).open() as f:
            for rec in csv.DictReader(f):
                if rec.get("dataset") == dataset:
                    found[rec[row_column]] = {m: float(rec[m]) if rec.get(m) else None for m in metrics}
    return {f"{r}{suffix}": found.get(r, dict.fromkeys(metrics)) for r in rows}


# -- all figures from one config (scripts/make_figures.py) --------------------------------------------
def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def fig7_series(spec: Mapping[str, Any], metrics: Mapping[str, str]) -> tuple[dict[str, dict[str, float | None]],
                                                                               list[str]]:
    """A Fig. 7 panel's series: our groups of runs, then reference CSVs (returned as the hatched names)."""
    series: dict[str, dict[str, float | None]] = {}
    for runs_dir in _as_list(spec["runs_dir"]):
        found = group_metrics(Path(runs_dir), spec["group_field"], spec.get("dataset"), metrics, spec.get("groups"),
                              spec.get("labels"), spec.get("where"))
        for name, values in found.items():
            old = series.get(name)
            series[name] = values if old is None or all(v is None for v in old.values()) else old
    hatched: list[str] = []
    for ref in spec.get("references") or []:
        refs = reference_series(Path(ref["csv"]), ref["rows"], spec.get("dataset"), list(metrics),
                                ref.get("suffix", ""))
        series.update(refs)
        hatched += list(refs)
    return series, hatched


def draw_from_config(cfg: Mapping[str, Any], paths: Mapping[str, Any], tracker: Any = None) -> dict[str, Any]:
    """Draw every figure named in ``cfg["draw"]`` (a resolved ``conf/figures.yaml``).

    Returns ``{"drawn": {name: path}, "skipped": {name: reason}}``: a gallery or heat-map figure whose
    runs are missing is skipped with its reason; a bar chart is always drawn, with "X" for missing bars.
    """
    from cai.errors import CaiError

    out_dir = Path(cfg["out_dir"])
    metrics = dict(cfg.get("metrics") or METRICS)
    drawn: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name in cfg["draw"]:
        spec = cfg[name]
        try:
            if name in ("fig2", "fig5"):
                rows, normals = gallery_from_runs(Path(spec["runs_dir"]), paths, spec["dataset"], spec["category"],
                                                  spec.get("rows"), int(spec.get("n_images", 5)),
                                                  normal_indices=spec.get("normal_indices"))
                fn = figure2 if name == "fig2" else figure5
                drawn[name] = fn(rows, normals if spec.get("show_normals", name == "fig2") else None, out_dir,
                                 tracker=tracker, show_masks=bool(spec.get("show_masks", True)))
            elif name == "fig6":
                by_label = _runs_by(Path(spec["runs_dir"]), "display_name", spec.get("dataset"), None)
                items: list[HeatmapItem] = []
                for run_dir in by_label.get(spec["row"], []):
                    category = json.loads((run_dir / "metrics.json").read_text())["category"]
                    if spec.get("categories") and category not in spec["categories"]:
                        continue
                    items += heatmaps_from_run(run_dir, paths, int(spec.get("n_per_category", 1)),
                                               (spec.get("prefer") or {}).get(category, ()), str(cfg.get("device")))
                if not items:
                    raise MissingFileError(f"No finished {spec['row']} runs of {spec.get('categories')} for Fig. 6.",
                                           where=spec["runs_dir"])
                order = {c: i for i, c in enumerate(spec.get("categories") or [])}
                items.sort(key=lambda it: order.get(it.label.split(" / ")[0], len(order)))
                drawn[name] = figure6(items, out_dir, tracker=tracker, title=spec.get("title") or (
                    f"Fig. 6: detector trained on {spec['row']} pseudo anomalies, on real test anomalies"))
            elif name.startswith("fig7"):
                series, hatched = fig7_series(spec, metrics)
                drawn[name] = figure7(name[-1], series, out_dir, list(metrics), spec.get("title"), hatched,
                                      spec.get("note"), tracker, spec.get("dataset"))
            else:
                raise KeyError(name)
        except CaiError as err:
            log.warning("%s skipped:\n%s", name, err.message)
            skipped[name] = err.message
    return {"drawn": drawn, "skipped": skipped}
