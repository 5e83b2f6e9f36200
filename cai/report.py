"""Run dirs → tables beside the paper's numbers (markdown), as DomainBed's collect_results does.

Only local files are read: every finished run dir holds ``metrics.json`` and a ``done`` marker, a failed
one ``failed.txt`` (its identity is read from ``.hydra/``). Runs are grouped by a row field (e.g. the
synthesizer's display name, or the ablation choice), a dataset and the checkpoint selection, averaged over
categories × seeds (mean ± std), and printed as "ours / paper" cells. A cell never silently averages
fewer runs than expected: one with a failed or missing (category, seed) shows ``mean* (k/n)`` and a note
naming what is missing; a cell with no run at all is "X". A metric family a run did not measure
(``metrics.json["skipped"]``, e.g. pixel metrics without ground-truth masks) is neither a number nor "X":
its cell says ``skipped [n]``, and note ``[n]`` under the table gives the reason. A table comes from one
budget (``paper`` or ``cpu``) and one detector (``unet`` or ``headclip``) and says so in its heading, with the
selection(s); selections are shown side by side, never averaged together. Optionally a paired comparison
(candidate − strongest baseline per seed) follows.

Beside each markdown table, :func:`write_runs_csv` writes the long table of the sweep (one CSV row per run
dir, finished, failed or unfinished, with a ``status`` column; every metric, the dotted extras of
metrics.json and the Hydra choices), for pandas or any spreadsheet.

Two shapes of paper table are read: *long* (one CSV row per (method, dataset), one column per metric:
Tables 1, 3, 4) and *wide* (one CSV row per method, one column per dataset, a single metric: Table 2's
FID). Per-run numbers come from ``metrics.json`` or, for Table 2, from ``fid.json``
(scripts/evaluate_fid.py), which carries the same identity keys.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cai.errors import ConfigError

MISSING = "X"
SKIPPED = "skipped"  # a cell whose runs did not measure the metric (metrics.json["skipped"]); a note says why

#: metrics.json["skipped"] family -> the metrics it covers (cai.metrics.PIXEL_METRICS, not imported: it needs torch)
SKIPPED_FAMILIES: dict[str, tuple[str, ...]] = {"pixel": ("pixel_auroc", "pixel_ap", "pro", "pixel_f1_max")}


@dataclass
class TableSpec:
    """How to build one table (mirrors ``conf/table/<name>.yaml``)."""

    name: str
    title: str
    runs_dir: Path
    metrics: dict[str, str]                       # column label -> key in metrics.json["metrics"], or a
                                                  # dotted path into metrics.json (label_fidelity.under)
    datasets: list[str]
    row_field: str = "display_name"               # dotted path into metrics.json
    rows: list[str] | None = None                 # row order; None = sorted rows found
    paper_csv: Path | None = None
    paper_row_column: str = "synthesizer"
    paper_dataset_column: str | None = "dataset"  # None: the paper table covers one dataset
    paper_row_map: dict[str, str] = field(default_factory=dict)
    per_category: bool = False
    source: str = "metrics.json"                  # per-run file with the numbers (Table 2: fid.json)
    paper_wide: bool = False                      # paper CSV has one column per dataset (one metric)
    scale: float = 100.0                          # ours × scale is printed (fractions → %); FID: 1
    unit: str = "%"                               # caption unit; "" for none
    lower_is_better: bool = False                 # said in the caption (FID, KID)
    expected: dict[str, list[str]] | None = None  # dataset -> expected categories; None: those found
    seeds: list[int] | None = None                # expected seeds; None: every seed found in the runs
    selections: list[str] | None = None           # checkpoint selections shown side by side; None: found
    budget: str | None = None                     # keep only this budget's runs; None: runs must agree
    detector: str | None = None                   # keep only this detector's runs; None: runs must agree
    paired: dict[str, Any] | None = None          # {candidates: [rows], metrics: [labels]}: paired test
    texture_notes: dict[str, str] = field(default_factory=dict)  # texture_source -> footnote
    not_run: dict[str, str] = field(default_factory=dict)  # row -> why it is not run here (shown under its X)

    def __post_init__(self) -> None:
        # a table config may clear an inherited mapping with null (conf/table/bsdata_long.yaml: not_run: null)
        for name in ("paper_row_map", "texture_notes", "not_run"):
            setattr(self, name, dict(getattr(self, name) or {}))


def _get(record: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(record, dict) or part not in record:
            return None
        record = record[part]
    return record


def run_metric(run: dict[str, Any], key: str) -> float | None:
    """A run's value of a table metric: ``metrics.json["metrics"][key]``, or for a dotted key the path into
    metrics.json (e.g. ``label_fidelity.under``, beside AUROC / AP / PRO)."""
    value = run.get("metrics", {}).get(key) if "." not in key else _get(run, key)
    return None if value is None else float(value)


def skipped_reason(run: dict[str, Any], key: str) -> tuple[str, str] | None:
    """(family, reason) when the run has no value of metric ``key`` because it skipped the key's family
    (``metrics.json["skipped"]``, e.g. ``("pixel", "no ground-truth masks for 3 of 3 anomalous test images")``),
    else None (it has a value, or lacks one for another reason)."""
    value = run_metric(run, key)
    if value is not None and not math.isnan(value):
        return None
    skipped = run.get("skipped") if isinstance(run.get("skipped"), dict) else {}
    for family, reason in sorted(skipped.items()):
        if key in SKIPPED_FAMILIES.get(family, ()):
            return str(family), str(reason)
    return None


def finished_run_dirs(runs_dir: Path) -> list[Path]:
    """Run dirs under ``runs_dir`` that hold ``metrics.json`` and a ``done`` marker, sorted."""
    return [p.parent for p in sorted(Path(runs_dir).rglob("metrics.json")) if (p.parent / "done").is_file()]


RUN_IDENTITY_KEYS = ("dataset", "category", "synthesizer", "display_name", "seed", "selection", "budget",
                     "texture_source", "choices", "detector")


def collect_runs(runs_dir: Path, source: str = "metrics.json") -> list[dict[str, Any]]:
    """Every finished run's ``source`` file under ``runs_dir`` (unfinished or failed runs are skipped).
    Another source than metrics.json (fid.json) takes the identity keys it lacks (seed, selection, budget,
    texture_source, choices) from the run's metrics.json."""
    out = []
    for d in finished_run_dirs(runs_dir):
        if not (d / source).is_file():
            continue
        record = json.loads((d / source).read_text())
        if source != "metrics.json":  # the run's identity is metrics.json's: fid.json's seed is its sampling seed
            run = json.loads((d / "metrics.json").read_text())
            record = {**{k: v for k, v in run.items() if k != "metrics"}, **record,
                      **{k: run[k] for k in RUN_IDENTITY_KEYS if k in run}}
        record["run_dir"] = str(d)
        out.append(record)
    return out


def failure_reason(path: Path) -> str:
    """One line saying why a run failed: ``failed.txt``'s first line (a user error's message), or the
    last line of a traceback (the exception)."""
    lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    if not lines:
        return "no reason recorded"
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]


def _select(cfg: Any, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)


def _hydra_identity(run_dir: Path) -> dict[str, Any]:
    """A run's identity keys as metrics.json names them, read from ``.hydra/config.yaml`` and the Hydra
    choices from ``.hydra/hydra.yaml`` (what a run dir without metrics.json still holds); {} when absent."""
    record: dict[str, Any] = {}
    cfg_file, hydra_file = run_dir / ".hydra" / "config.yaml", run_dir / ".hydra" / "hydra.yaml"
    if cfg_file.is_file():
        cfg = OmegaConf.load(cfg_file)
        record.update({"dataset": _select(cfg, "dataset.name"), "category": _select(cfg, "dataset.category"),
                       "synthesizer": _select(cfg, "synthesizer.name"),
                       "display_name": _select(cfg, "synthesizer.display_name"), "seed": _select(cfg, "seed"),
                       "selection": _select(cfg, "detector.selection")})
    if hydra_file.is_file():
        choices = _select(OmegaConf.load(hydra_file), "hydra.runtime.choices")
        if choices is not None:
            choices = {str(k): str(v) for k, v in OmegaConf.to_container(choices, resolve=False).items()}
            record["choices"] = choices
            record["budget"] = choices.get("budget")
            record["detector"] = choices.get("detector")
    return record


def collect_failed(runs_dir: Path) -> list[dict[str, Any]]:
    """Every failed run under ``runs_dir`` (``failed.txt``, no ``done``) as a metrics.json-like record
    (identity keys from ``.hydra/config.yaml`` and ``.hydra/hydra.yaml``) with ``failed``: its reason."""
    out = []
    for marker in sorted(Path(runs_dir).rglob("failed.txt")):
        run_dir = marker.parent
        if (run_dir / "done").is_file():
            continue
        record: dict[str, Any] = {"failed": failure_reason(marker), "run_dir": str(run_dir), "metrics": {}}
        record.update(_hydra_identity(run_dir))
        out.append(record)
    return out


def collect_unfinished(runs_dir: Path) -> list[dict[str, Any]]:
    """Every run started under ``runs_dir`` that neither finished (``done``) nor failed (``failed.txt``):
    still running, or killed. A run dir is recognised by the ``.hydra/config.yaml`` run_job writes first."""
    out = []
    for cfg_file in sorted(Path(runs_dir).rglob("config.yaml")):
        run_dir = cfg_file.parent.parent
        if cfg_file.parent.name != ".hydra" or (run_dir / "done").is_file() or (run_dir / "failed.txt").is_file():
            continue
        out.append({"run_dir": str(run_dir), "metrics": {}, **_hydra_identity(run_dir)})
    return out


#: The leading columns of the runs CSV, in this order; then metrics, dotted extras, choices, run_dir, reason.
RUNS_CSV_IDENTITY = ("status", "dataset", "category", "synthesizer", "display_name", "seed", "budget", "selection",
                     "detector")


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"<prefix>.a.b": 1}``; lists stay one cell (JSON)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(value) if isinstance(value, list | tuple) else value}


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # full precision; NaN as "nan", which pandas and float() read back
    return str(value)


def runs_long_table(runs_dir: Path, source: str = "metrics.json") -> tuple[list[str], list[dict[str, Any]]]:
    """Every run dir under ``runs_dir`` as one row: ``status`` (finished / failed / unfinished), the identity
    columns, each metric of ``metrics.json["metrics"]`` under its own name, every other metrics.json value
    as a dotted column (``label_fidelity.over``, ``synthesis.n``, ...), the Hydra choices (``choices.daad``),
    ``run_dir`` and, for a failed run, ``reason``. With another ``source`` (Table 2's ``fid.json``) its
    ``metrics`` join as ``<stem>.<metric>`` (``fid.fid``). Returns (columns, rows); rows are sorted."""
    finished = []
    for d in finished_run_dirs(runs_dir):
        record = {**json.loads((d / "metrics.json").read_text()), "run_dir": str(d), "status": "finished"}
        if source != "metrics.json" and (d / source).is_file():
            extra = json.loads((d / source).read_text())
            record[Path(source).stem] = {**(extra.get("metrics") or {}),
                                         **({"error": extra["error"]} if extra.get("error") else {})}
        finished.append(record)
    failed = [{**{k: v for k, v in r.items() if k != "failed"}, "status": "failed", "reason": r["failed"]}
              for r in collect_failed(runs_dir)]
    unfinished = [{**r, "status": "unfinished"} for r in collect_unfinished(runs_dir)]
    rows, metric_cols, extra_cols, choice_cols = [], set(), set(), set()
    for record in [*finished, *failed, *unfinished]:
        rest = {k: v for k, v in record.items()
                if k not in {*RUNS_CSV_IDENTITY, "metrics", "choices", "run_dir", "reason"}}
        extras, metrics = _flatten(rest, ""), dict(record.get("metrics") or {})
        choices = _flatten(record.get("choices") or {}, "choices")
        row = {**extras, **metrics, **choices}  # a metric wins over an extra of the same name
        row.update({k: record.get(k) for k in (*RUNS_CSV_IDENTITY, "run_dir", "reason")})
        metric_cols.update(metrics)
        extra_cols.update(extras)
        choice_cols.update(choices)
        rows.append(row)
    extra_cols -= metric_cols | set(RUNS_CSV_IDENTITY)
    columns = [*RUNS_CSV_IDENTITY, *sorted(metric_cols), *sorted(extra_cols), *sorted(choice_cols), "run_dir",
               "reason"]

    def order(row: dict[str, Any]) -> tuple:
        seed = row.get("seed")
        return (*(str(row.get(k) or "") for k in ("dataset", "category", "display_name")),
                int(seed) if isinstance(seed, int) else -1, str(row.get("selection") or ""), str(row["run_dir"]))

    rows.sort(key=order)
    return columns, rows


def write_runs_csv(path: Path, runs_dir: Path, source: str = "metrics.json", budget: str | None = None,
                   detector: str | None = None) -> int:
    """Write :func:`runs_long_table` as CSV to ``path`` (atomically; empty cell = no value); returns the
    number of runs written. ``budget`` / ``detector``: keep to the table's, as its markdown does (finished
    runs of another budget or detector sharing the runs dir are left out; a run that never said is kept)."""
    from cai.io import write_text

    def kept(row: dict[str, Any], key: str, of_finished: Callable[[dict[str, Any]], str], wanted: str | None) -> bool:
        if wanted is None:
            return True
        return (of_finished(row) if row.get("status") == "finished" else row.get(key) or wanted) == wanted

    columns, rows = runs_long_table(runs_dir, source)
    rows = [r for r in rows if kept(r, "budget", _budget, budget) and kept(r, "detector", _detector, detector)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    write_text(path, buf.getvalue())
    return len(rows)


def dataset_categories(datasets: list[str], dataset_conf_dir: Path) -> dict[str, list[str]]:
    """Each dataset's expected categories: ``categories`` of ``<dataset_conf_dir>/<dataset>.yaml``."""
    out = {}
    for ds in datasets:
        path = Path(dataset_conf_dir) / f"{ds}.yaml"
        if not path.is_file():
            raise ConfigError(f"No dataset config for '{ds}', so its expected categories are unknown.", where=path,
                              fix=f"Give them in the table config: table.expected={{{ds}:[cat1,cat2]}}, or "
                                  "table.expected=null to expect the categories found in the runs.")
        cats = OmegaConf.load(path).get("categories")
        if not cats:
            raise ConfigError(f"Dataset config '{ds}' lists no categories.", where=path,
                              fix="Add `categories: [...]` to it, or give table.expected explicitly.")
        out[ds] = [str(c) for c in cats]
    return out


def read_paper(spec: TableSpec) -> dict[tuple[str, str], dict[str, float]]:
    """The paper's numbers keyed like ``aggregate`` (row label as in our runs, dataset)."""
    if spec.paper_csv is None or not Path(spec.paper_csv).is_file():
        return {}
    inverse = {v: k for k, v in spec.paper_row_map.items()}
    if spec.paper_wide and len(spec.metrics) != 1:
        raise ConfigError(f"Table {spec.name}: a wide paper CSV holds one metric, but metrics has {len(spec.metrics)}.",
                          where=spec.paper_csv, fix="Give exactly one metric, or set paper_wide: false.")
    out = {}
    with Path(spec.paper_csv).open() as f:
        for rec in csv.DictReader(f):
            row = inverse.get(rec[spec.paper_row_column], rec[spec.paper_row_column])
            if spec.paper_wide:
                label = next(iter(spec.metrics))
                for ds in spec.datasets:
                    if rec.get(ds):
                        out[(row, ds)] = {label: float(rec[ds])}
                continue
            datasets = [rec[spec.paper_dataset_column]] if spec.paper_dataset_column else spec.datasets
            for ds in datasets:
                out[(row, ds)] = {label: float(rec[label]) for label in spec.metrics if rec.get(label)}
    return out


def fmt_cell(values: list[float] | None, paper: float | None, scale: float = 100.0, with_paper: bool = True) -> str:
    """``ours ± std / paper`` with one decimal, ours × ``scale`` (percent by default); "X" where missing.
    ``with_paper=False`` (a table with no published numbers): ours only."""
    if values:
        pct = [scale * v for v in values]
        ours = f"{statistics.fmean(pct):.1f}"
        if len(pct) > 1:
            ours += f" ± {statistics.stdev(pct):.1f}"
    else:
        ours = MISSING
    if not with_paper:
        return ours
    return f"{ours} / {paper:.1f}" if paper is not None else f"{ours} / {MISSING}"




def _seed(run: dict[str, Any]) -> int:
    return int(run["seed"]) if run.get("seed") is not None else 0


def _selection(run: dict[str, Any]) -> str:
    return str(run.get("selection") or "best")


def _budget(run: dict[str, Any]) -> str:
    return str(run.get("budget") or "paper")


def _detector(run: dict[str, Any]) -> str:
    """The detector that produced a run (metrics.json before there was a choice: the UNet)."""
    return str(run.get("detector") or "unet")


Key = tuple[str, int]  # (category, seed)


@dataclass
class Cell:
    """The runs of one (row, dataset, selection): finished values and failures per (category, seed)."""

    values: dict[Key, dict[str, float]] = field(default_factory=dict)
    failed: dict[Key, str] = field(default_factory=dict)
    dirs: dict[Key, str] = field(default_factory=dict)  # run dir of each finished value
    skipped: dict[Key, dict[str, tuple[str, str]]] = field(default_factory=dict)  # metric -> (family, reason)


@dataclass
class _Table:
    """Runs grouped into cells, with what each cell is expected to hold."""

    cells: dict[tuple[str, str, str], Cell]
    selections: list[str]
    budget: str
    detector: str
    seeds: list[int]
    expected: dict[str, list[Key]]
    ignored: list[str]
    records: list[dict[str, Any]]  # the runs and failures of this budget and these selections
    unidentified: list[str]        # failed run dirs without a readable .hydra/config.yaml


def _group(spec: TableSpec, runs: list[dict[str, Any]], failed: list[dict[str, Any]]) -> _Table:
    """Filter by budget and selection, group into cells, and work out the expected (category, seed)s."""
    placed = [r for r in [*runs, *failed] if _get(r, spec.row_field) is not None and r.get("dataset")]
    unidentified = sorted(str(r.get("run_dir")) for r in failed if r not in placed)
    records = [r for r in placed if r["dataset"] in spec.datasets]
    budgets = sorted({_budget(r) for r in records})
    if spec.budget is not None:
        records = [r for r in records if _budget(r) == spec.budget]
        budget = spec.budget
    elif len(budgets) > 1:
        raise ConfigError(f"Table {spec.name}: its runs mix budgets {budgets}; a table is made from one budget.",
                          where=spec.runs_dir,
                          fix=f"Choose one, e.g. python scripts/make_table.py table={spec.name} "
                              f"table.budget={budgets[0]}")
    else:
        budget = budgets[0] if budgets else "n/a"
    detectors = sorted({_detector(r) for r in records})
    if spec.detector is not None:
        records = [r for r in records if _detector(r) == spec.detector]
        detector = spec.detector
    elif len(detectors) > 1:
        raise ConfigError(f"Table {spec.name}: its runs mix detectors {detectors}; a table is made from one "
                          "detector.", where=spec.runs_dir,
                          fix=f"Choose one, e.g. python scripts/make_table.py table={spec.name} "
                              f"table.detector={detectors[0]}")
    else:
        detector = detectors[0] if detectors else "n/a"
    found = sorted({_selection(r) for r in records})
    selections = list(spec.selections) if spec.selections else found
    records = [r for r in records if _selection(r) in selections]
    seeds = sorted(int(s) for s in spec.seeds) if spec.seeds else sorted({_seed(r) for r in records}) or [0]
    expected: dict[str, list[Key]] = {}
    for ds in spec.datasets:
        if spec.expected is not None and ds in spec.expected:
            cats = [str(c) for c in spec.expected[ds]]
        else:
            cats = sorted({str(r["category"]) for r in records if r["dataset"] == ds})
        expected[ds] = [(c, s) for c in cats for s in seeds]
    cells: dict[tuple[str, str, str], Cell] = defaultdict(Cell)
    ignored = []
    for r in records:
        key = (str(r["category"]), _seed(r))
        if key not in expected[r["dataset"]]:
            ignored.append(f"{_get(r, spec.row_field)} / {r['dataset']} / {key[0]} seed {key[1]}")
            continue
        cell = cells[(str(_get(r, spec.row_field)), r["dataset"], _selection(r))]
        if "failed" in r:
            cell.failed.setdefault(key, r["failed"])
        else:
            if key in cell.values:  # two finished runs of one cell (e.g. a rerun with another config)
                raise ConfigError(
                    f"Table {spec.name}: two finished runs for {_get(r, spec.row_field)} / {r['dataset']} / "
                    f"{key[0]} seed {key[1]} (selection {_selection(r)}): {cell.dirs[key]} and {r.get('run_dir')}; "
                    "averaging them would count one category twice.",
                    where=spec.runs_dir,
                    fix="Compare their resolved_config.yaml files and delete the run dir that is not wanted.")
            cell.dirs[key] = str(r.get("run_dir"))
            found = {k: run_metric(r, k) for k in spec.metrics.values()}
            cell.values[key] = {k: v for k, v in found.items() if v is not None and not math.isnan(v)}
            why = {k: skipped_reason(r, k) for k in spec.metrics.values()}
            cell.skipped[key] = {k: w for k, w in why.items() if w is not None}
    for (row, ds, sel), cell in cells.items():
        _check_one_config(spec, f"{row} / {ds} (selection {sel})", cell)
    for cell in cells.values():  # a (category, seed) that finished elsewhere has not failed
        for key in list(cell.failed):
            if key in cell.values:
                del cell.failed[key]
    return _Table(dict(cells), selections, budget, detector, seeds, expected, sorted(ignored), records,
                  unidentified)


#: Keys that choose which categories a sweep runs, not how one run goes: a cell may mix runs made with
#: ``dataset.categories=[bottle]`` and with the full list.
SWEEP_ONLY_KEYS = ("dataset.categories", "dataset.reader.categories")


def run_identity(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's resolved config (``resolved_config.yaml``) minus what its dir path names (dataset,
    category, synthesizer, seed, task): what every run of one table cell must share. None when absent."""
    from cai.runid import PATH_KEYS, RESOLVED_CONFIG, _drop

    path = Path(run_dir) / RESOLVED_CONFIG
    if not path.is_file():
        return None
    ident = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if not isinstance(ident, dict):
        return None
    for key in (*PATH_KEYS, *SWEEP_ONLY_KEYS, *_follows_path_keys(Path(run_dir))):
        _drop(ident, key)
    return ident


def _follows_path_keys(run_dir: Path) -> list[str]:
    """Dotted keys whose value is built from a key the dir path names (e.g. RealNet's ``synthesizer.params.seed:
    ${seed}``), read from the unresolved ``.hydra/config.yaml``: they differ between seeds by design."""
    from cai.runid import PATH_KEYS

    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return []
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    marks = tuple("${" + k + "}" for k in PATH_KEYS)
    found: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, str) and any(m in node for m in marks):
            found.append(prefix[:-1])

    walk(raw, "")
    return found


def _check_one_config(spec: TableSpec, label: str, cell: Cell) -> None:
    """The finished runs of a cell (its categories and seeds) must come from one config: a mean over
    categories trained with, e.g., different epochs would silently mix settings."""
    from cai.runid import config_diff

    first: tuple[str, dict[str, Any]] | None = None
    for run_dir in cell.dirs.values():
        ident = run_identity(run_dir)
        if ident is None:
            continue
        if first is None:
            first = (run_dir, ident)
            continue
        diff = config_diff(first[1], ident)
        if diff:
            shown = "\n    ".join(diff[:10]) + (f"\n    ... {len(diff) - 10} more" if len(diff) > 10 else "")
            raise ConfigError(
                f"Table {spec.name}: the runs of {label} were made with different configs, so their mean would "
                f"mix settings: {first[0]} vs {run_dir} (resolved_config.yaml, old -> new):\n    {shown}",
                where=spec.runs_dir,
                fix="Rerun the odd runs with the cell's config (or all of them with the new one) and delete the "
                    "run dirs that are not wanted.")


def _skipped_keys(cell: Cell, expected: list[Key], key: str) -> list[Key]:
    """The finished (category, seed)s of ``cell`` that did not measure metric ``key`` (metrics.json["skipped"])."""
    return [k for k in expected if key in cell.skipped.get(k, {})]


def _refs(cell: Cell, expected: list[Key], key: str, refs: dict[tuple[str, str], int]) -> str:
    """`` [1]`` / `` [1,2]``: the notes giving why runs of the cell skipped metric ``key`` ("" when none did)."""
    numbers = sorted({refs[cell.skipped[k][key]] for k in _skipped_keys(cell, expected, key)})
    return f" [{','.join(map(str, numbers))}]" if numbers else ""


def _ours(cell: Cell | None, key: str, expected: list[Key], seeds: list[int], scale: float,
          refs: dict[tuple[str, str], int] | None = None) -> str:
    """Our cell: mean ± std (over seeds' means when there are several seeds, else over categories);
    ``mean* (k/n)`` when runs are missing; "X" when nothing ran (or nothing finished: ``X* (0/n)``);
    ``skipped [n]`` when every expected run finished without measuring it (the reason is note [n], from ``refs``),
    and ``[n]`` after a mean that lacks such runs."""
    if cell is None or (not cell.values and not cell.failed):
        return MISSING
    done = [k for k in expected if k in cell.values]
    values = [scale * cell.values[k][key] for k in done if key in cell.values[k]]
    skipped = _skipped_keys(cell, expected, key)
    marks = _refs(cell, expected, key, refs or {})
    if skipped and len(skipped) == len(expected):  # measured nowhere, by design: not missing
        return f"{SKIPPED}{marks}"
    if len(values) < len(expected):  # a run missing, or its metric NaN or skipped
        nothing = SKIPPED if skipped and len(skipped) == len(done) else MISSING  # every finished run skipped it?
        ours = f"{statistics.fmean(values):.1f}" if values else nothing
        return f"{ours}* ({len(values)}/{len(expected)}){marks}"
    ours = f"{statistics.fmean(values):.1f}"
    if len(seeds) > 1:
        per_seed = [[scale * cell.values[k][key] for k in done if k[1] == s and key in cell.values[k]] for s in seeds]
        spread = [statistics.fmean(v) for v in per_seed if v]
    else:
        spread = values
    if len(spread) > 1:
        ours += f" ± {statistics.stdev(spread):.1f}"
    return ours


def _gaps(cell: Cell, expected: list[Key], metrics: dict[str, str]) -> tuple[list[Key], dict[str, list[Key]]]:
    """What a cell lacks: expected (category, seed)s with no finished run, and per metric label the
    finished runs whose value is missing or NaN -- not those that skipped it, unless the cell's mean lacks
    them (some of its runs measured it, or some did not finish): a metric skipped by every run is no gap."""
    missing = [k for k in expected if k not in cell.values]
    no_value = {}
    for label, key in metrics.items():
        skipped = _skipped_keys(cell, expected, key)
        whole = len(skipped) == len(expected)
        no_value[label] = [k for k in expected if k in cell.values and key not in cell.values[k]
                           and not (whole and k in skipped)]
    return missing, {label: keys for label, keys in no_value.items() if keys}


def _missing_note(label: str, cell: Cell, expected: list[Key], metrics: dict[str, str], several_seeds: bool,
                  refs: dict[tuple[str, str], int] | None = None) -> str:
    """``- label: k/n runs; failed: a (reason); not run: b; no PRO value: c`` for an incomplete cell
    (``AUC skipped [1]: c`` for runs that did not measure it, the reason in note [1])."""
    def name(k: Key) -> str:
        return f"{k[0]} seed {k[1]}" if several_seeds else k[0]

    missing, no_value = _gaps(cell, expected, metrics)
    failed = [f"{name(k)} ({cell.failed[k]})" for k in missing if k in cell.failed]
    not_run = [name(k) for k in missing if k not in cell.failed]
    parts = [f"{len(expected) - len(missing)}/{len(expected)} runs"]
    if failed:
        parts.append("failed: " + "; ".join(failed))
    if not_run:
        parts.append("not run: " + ", ".join(not_run))
    for metric, keys in no_value.items():
        key = metrics[metric]
        skipped = [k for k in keys if key in cell.skipped.get(k, {})]
        other = [k for k in keys if k not in skipped]
        if other:
            parts.append(f"no {metric} value: " + ", ".join(map(name, other)))
        if skipped:
            parts.append(f"{metric} skipped{_refs(cell, skipped, key, refs or {})}: " + ", ".join(map(name, skipped)))
    return f"- {label}: " + "; ".join(parts)


def render(spec: TableSpec, runs: list[dict[str, Any]], failed: list[dict[str, Any]] | None = None) -> str:
    """The markdown table: one row per row label, per dataset one column per metric (and selection);
    ``failed`` are :func:`collect_failed`'s records, which mark their cells incomplete."""
    table = _group(spec, runs, failed or [])
    paper = read_paper(spec)
    sels, seeds, several_seeds = table.selections, table.seeds, len(table.seeds) > 1
    rows = spec.rows or sorted({r for r, _, _ in table.cells} | {r for r, _ in paper})
    columns = [(ds, label, sel) for ds in spec.datasets for label in spec.metrics for sel in (sels or ["n/a"])]
    refs = _skip_refs(spec, table, rows, columns)
    header = ["method"] + [f"{ds} {label}" + (f" ({sel})" if len(sels) > 1 else "") for ds, label, sel in columns]
    with_paper = spec.paper_csv is not None
    over = (f"mean over categories × seeds {', '.join(map(str, seeds))} ± std of the seeds' means" if several_seeds
            else "mean ± std over categories")
    caption = (f"Cells: ours ({over})" + (" / paper" if with_paper else "")
               + (f", in {spec.unit}" if spec.unit else ""))
    caption += ". X = not run." + (" Lower is better." if spec.lower_is_better else "")
    caption += f" {SKIPPED} [n] = not measured by the runs, note [n] below says why." if refs else ""
    caption += " \\* = incomplete (finished/expected runs), see below." if _incomplete(spec, table) else ""
    heading = (f"## {spec.title} (selection: {' | '.join(sels) if sels else 'n/a'}; budget: {table.budget}; "
               f"detector: {table.detector})")
    lines = [heading, "", caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        vals = []
        for ds, label, sel in columns:
            ours = _ours(table.cells.get((row, ds, sel)), spec.metrics[label], table.expected[ds], seeds, spec.scale,
                         refs)
            if with_paper:
                p = paper.get((row, ds), {}).get(label)
                ours = f"{ours} / {p:.1f}" if p is not None else f"{ours} / {MISSING}"
            vals.append(ours)
        lines.append("| " + " | ".join([row, *vals]) + " |")
    lines += _notes(spec, table, refs)
    if spec.per_category:
        lines += _per_category(spec, table, refs)
    counts: dict[str, int] = defaultdict(int)
    for (row, ds, sel), cell in sorted(table.cells.items()):
        if cell.values:
            counts[f"{row}/{ds}" + (f"/{sel}" if len(sels) > 1 else "")] += len(cell.values)
    lines += ["", "Runs per cell: " + ", ".join(f"{k}: {n}" for k, n in counts.items())
              if counts else "No finished runs found in " + str(spec.runs_dir)]
    if spec.paired:
        lines += paired_comparison(spec, table)
    return "\n".join(lines) + "\n"


def _incomplete(spec: TableSpec, table: _Table) -> list[tuple[tuple[str, str, str], Cell]]:
    """The cells (with some run) that lack a run or a metric value."""
    return [(k, c) for k, c in sorted(table.cells.items()) if any(_gaps(c, table.expected[k[1]], spec.metrics))]


def _skip_refs(spec: TableSpec, table: _Table, rows: list[str],
               columns: list[tuple[str, str, str]]) -> dict[tuple[str, str], int]:
    """Note number per distinct (family, reason) a shown run skipped a table metric for, in reading order (the
    table's rows and columns, then the per-category lines' runs)."""
    refs: dict[tuple[str, str], int] = {}
    for row in rows:
        for ds, label, sel in columns:
            cell = table.cells.get((row, ds, sel))
            for k in [] if cell is None else _skipped_keys(cell, table.expected[ds], spec.metrics[label]):
                refs.setdefault(cell.skipped[k][spec.metrics[label]], len(refs) + 1)
    if spec.per_category:
        for run in _per_category_order(table.records):
            for key in spec.metrics.values():
                why = None if "failed" in run else skipped_reason(run, key)
                if why is not None:
                    refs.setdefault(why, len(refs) + 1)
    return refs


def _notes(spec: TableSpec, table: _Table, refs: dict[tuple[str, str], int] | None = None) -> list[str]:
    """Footnotes: why metrics were not measured (once per reason), incomplete cells (what failed, what was not
    run), ignored runs, texture source."""
    out = []
    if refs:
        out += ["", "Not measured (metrics.json[\"skipped\"]: the runs skipped these metrics, so they have no value):"]
        out += [f"- [{n}] {family} metrics: {reason}" for (family, reason), n in sorted(refs.items(),
                                                                                        key=lambda x: x[1])]
    incomplete = []
    for (row, ds, sel), cell in _incomplete(spec, table):
        label = f"{row} / {ds}" + (f" / {sel}" if len(table.selections) > 1 else "")
        incomplete.append(_missing_note(label, cell, table.expected[ds], spec.metrics, len(table.seeds) > 1, refs))
    if incomplete:
        out += ["", "\\* Incomplete cells: the number is the mean over the runs that have a value only."]
        out += incomplete
    if table.unidentified:
        out += ["", "Failed runs that could not be placed in a cell (no .hydra/config.yaml): "
                + ", ".join(table.unidentified)]
    if table.ignored:
        out += ["", "Ignored (category or seed not expected by the table config): " + ", ".join(table.ignored)]
    sources = sorted({str(r["texture_source"]) for r in table.records
                      if r.get("texture_source") not in (None, "dtd")})
    for src in sources:
        out += ["", "Note: " + spec.texture_notes.get(src, f"DRAEM/GLASS used texture source '{src}', "
                                                          "not the full DTD.")]
    absent = [row for row in spec.not_run if not any(k[0] == row for k in table.cells)]
    if absent:
        out += ["", "Not run here: " + "; ".join(f"{row} ({spec.not_run[row]})" for row in absent)]
    return out


def _per_category_order(records: list[dict[str, Any]], row_field: str = "display_name") -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: (str(_get(r, row_field)), r["dataset"], str(r["category"]), _seed(r),
                                          _selection(r)))


def _per_category(spec: TableSpec, table: _Table, refs: dict[tuple[str, str], int] | None = None) -> list[str]:
    """One line per run (seed / selection columns only when the table has several)."""
    extra = (["seed"] if len(table.seeds) > 1 else []) + (["selection"] if len(table.selections) > 1 else [])
    header = ["method", "dataset", "category", *extra, *spec.metrics]
    lines = ["", "### Per category", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in _per_category_order(table.records, spec.row_field):
        if "failed" in run:
            vals = ["failed"] * len(spec.metrics)
        else:
            vals = []
            for k in spec.metrics.values():
                v, why = run_metric(run, k), skipped_reason(run, k)
                if why is not None:
                    vals.append(f"{SKIPPED} [{(refs or {}).get(why, '?')}]")
                else:
                    vals.append(MISSING if v is None or math.isnan(v) else f"{spec.scale * v:.1f}")
        ids = ([str(_seed(run))] if len(table.seeds) > 1 else []) + (
            [_selection(run)] if len(table.selections) > 1 else [])
        lines.append("| " + " | ".join([str(_get(run, spec.row_field)), run["dataset"], str(run["category"]),
                                        *ids, *vals]) + " |")
    return lines


def paired_comparison(spec: TableSpec, table: _Table) -> list[str]:
    """Candidate − strongest baseline (the best non-candidate row by its mean), paired on (category,
    seed): per seed the mean difference over the categories both finished, then mean ± std over seeds,
    and on how many seeds the candidate is better."""
    cands = [str(c) for c in spec.paired.get("candidates", [])]
    labels = [str(m) for m in spec.paired.get("metrics", list(spec.metrics))]
    unknown = [m for m in labels if m not in spec.metrics]
    if unknown:
        raise ConfigError(f"Table {spec.name}: paired.metrics {unknown} are not among its metrics "
                          f"{list(spec.metrics)}.", fix="Use the metric labels of the table's `metrics`.")
    sign = -1.0 if spec.lower_is_better else 1.0
    seeds = table.seeds
    out = []
    for sel in table.selections:
        header = ["dataset", "metric", "candidate", "strongest baseline", *[f"seed {s}" for s in seeds],
                  "mean ± std", "pairs", "better on"]
        block = ["", f"### Paired comparison (selection: {sel}): candidate − strongest baseline",
                 "", "Per seed: mean over the categories both finished of (candidate − baseline)"
                 + (f", in {spec.unit}" if spec.unit else "") + ("; lower is better" if spec.lower_is_better else "")
                 + ". The strongest baseline is the non-candidate row with the best mean in that column.",
                 "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for ds in spec.datasets:
            for label in labels:
                key = spec.metrics[label]
                means = {}
                for (row, d, s), cell in table.cells.items():
                    vals = [v[key] for v in cell.values.values() if key in v]
                    if d == ds and s == sel and row not in cands and vals:
                        means[row] = statistics.fmean(vals)
                if not means:
                    continue
                base = (min if spec.lower_is_better else max)(means, key=lambda r: means[r])
                base_cell = table.cells[(base, ds, sel)]
                for cand in cands:
                    cell = table.cells.get((cand, ds, sel))
                    per_seed: dict[int, float] = {}
                    n_pairs = 0
                    for s in seeds:
                        diffs = [spec.scale * (cell.values[k][key] - base_cell.values[k][key])
                                 for k in table.expected[ds] if k[1] == s and cell is not None
                                 and key in cell.values.get(k, {}) and key in base_cell.values.get(k, {})]
                        n_pairs += len(diffs)
                        if diffs:
                            per_seed[s] = statistics.fmean(diffs)
                    cols = [f"{per_seed[s]:+.1f}" if s in per_seed else MISSING for s in seeds]
                    if per_seed:
                        d = list(per_seed.values())
                        mean = f"{statistics.fmean(d):+.1f}" + (f" ± {statistics.stdev(d):.1f}" if len(d) > 1 else "")
                        wins = sum(sign * v > 0 for v in d)
                        verdict = ("every seed" if wins == len(d) else "no seed" if wins == 0 else "some seeds")
                        verdict += f" ({wins}/{len(d)})"
                    else:
                        mean, verdict = MISSING, "no pairs"
                    block.append("| " + " | ".join([ds, label, cand, base, *cols, mean,
                                                    f"{n_pairs}/{len(table.expected[ds])}", verdict]) + " |")
        out += block
    return out
