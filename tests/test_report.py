import json
import math
from pathlib import Path

import pytest

from cai.errors import ConfigError
from cai.report import TableSpec, collect_runs, fmt_cell, render


def _run(root: Path, name: str, display: str, dataset: str, category: str, auc: float, done=True):
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "dataset": dataset, "category": category, "display_name": display,
        "metrics": {"pixel_auroc": auc, "pixel_ap": auc / 2, "pro": float("nan"), "image_auroc": 1.0},
    }))
    if done:
        (d / "done").write_text("ok")


def test_fmt_cell():
    assert fmt_cell([0.9], 89.6) == "90.0 / 89.6"
    assert fmt_cell([0.9, 0.8], None) == "85.0 ± 7.1 / X"
    assert fmt_cell(None, 62.6) == "X / 62.6"


def test_render_exact(tmp_path):
    _run(tmp_path, "a", "CutPaste", "mvtec", "bottle", 0.90)
    _run(tmp_path, "b", "CutPaste", "mvtec", "cable", 0.80)
    _run(tmp_path, "c", "CAI-N", "mvtec", "bottle", 0.95, done=False)  # unfinished: ignored
    paper = tmp_path / "paper.csv"
    paper.write_text("synthesizer,dataset,AUC,AP,PRO\nCutPaste,mvtec,89.6,38.5,71.9\nCAI-N,mvtec,95.6,62.6,87.5\n")
    spec = TableSpec(name="t", title="T", runs_dir=tmp_path, metrics={"AUC": "pixel_auroc", "AP": "pixel_ap",
                     "PRO": "pro"}, datasets=["mvtec"], rows=["CutPaste", "CAI-N"], paper_csv=paper)
    runs = collect_runs(tmp_path)
    assert len(runs) == 2
    text = render(spec, runs)
    assert "| method | mvtec AUC | mvtec AP | mvtec PRO |" in text
    assert "| CutPaste | 85.0 ± 7.1 / 89.6 | 42.5 ± 3.5 / 38.5 | X* (0/2) / 71.9 |" in text  # PRO is NaN
    assert "- CutPaste / mvtec: 2/2 runs; no PRO value: bottle, cable\n" in text
    assert "| CAI-N | X / 95.6 | X / 62.6 | X / 87.5 |" in text
    assert "Runs per cell: CutPaste/mvtec: 2" in text


def _fid_run(root: Path, name: str, display: str, dataset: str, category: str, fid: float | None):
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"dataset": dataset, "category": category, "display_name": display,
                                                "metrics": {"pixel_auroc": 0.9}}))
    (d / "fid.json").write_text(json.dumps({"dataset": dataset, "category": category, "display_name": display,
                                            "metrics": {"fid": fid, "kid": 0.0123}}))
    (d / "done").write_text("ok")


def _table2_spec(root: Path, paper: Path | None) -> TableSpec:
    return TableSpec(name="table2", title="Table 2", runs_dir=root, metrics={"FID": "fid"},
                     datasets=["mvtec", "visa", "ksdd2"], rows=["CutPaste", "CAI-M"], paper_csv=paper,
                     source="fid.json", paper_wide=True, scale=1.0, unit="", lower_is_better=True, per_category=True)


def test_table2_shape_exact(tmp_path):
    runs = tmp_path / "runs"
    _fid_run(runs, "a", "CutPaste", "mvtec", "bottle", 150.0)
    _fid_run(runs, "b", "CutPaste", "mvtec", "cable", 160.0)
    _fid_run(runs, "c", "CAI-M", "visa", "candle", 40.26)
    _fid_run(runs, "d", "CAI-M", "ksdd2", "ksdd2", None)  # FID could not be computed: X
    paper = tmp_path / "table2_fid.csv"
    paper.write_text("synthesizer,mvtec,visa,ksdd2\nCutPaste,153.4,98.5,201.9\nCAI-M,107.0,37.9,147.9\n")
    spec = _table2_spec(runs, paper)
    text = render(spec, collect_runs(runs, spec.source))
    assert text.startswith("## Table 2 (selection: best; budget: paper; detector: unet)\n\n"
                           "Cells: ours (mean ± std over categories) "
                           "/ paper. X = not run. Lower is better. \\* = incomplete (finished/expected runs), "
                           "see below.\n\n")
    assert "| method | mvtec FID | visa FID | ksdd2 FID |\n|---|---|---|---|\n" in text
    assert "| CutPaste | 155.0 ± 7.1 / 153.4 | X / 98.5 | X / 201.9 |\n" in text
    assert "| CAI-M | X / 107.0 | 40.3 / 37.9 | X* (0/1) / 147.9 |\n" in text
    assert "- CAI-M / ksdd2: 1/1 runs; no FID value: ksdd2\n" in text
    assert "| CutPaste | mvtec | bottle | 150.0 |\n" in text
    assert "| CAI-M | ksdd2 | ksdd2 | X |\n" in text


def test_table2_without_runs_shows_paper_numbers(tmp_path):
    paper = tmp_path / "table2_fid.csv"
    paper.write_text("synthesizer,mvtec,visa,ksdd2\nCutPaste,153.4,98.5,201.9\nCAI-M,107.0,,147.9\n")
    text = render(_table2_spec(tmp_path / "none", paper), [])
    assert "| CutPaste | X / 153.4 | X / 98.5 | X / 201.9 |\n" in text
    assert "| CAI-M | X / 107.0 | X / X | X / 147.9 |\n" in text
    assert f"No finished runs found in {tmp_path / 'none'}" in text


def test_wide_paper_csv_needs_one_metric(tmp_path):
    import pytest

    from cai.errors import ConfigError
    from cai.report import read_paper

    paper = tmp_path / "p.csv"
    paper.write_text("synthesizer,mvtec\nCAI-N,1.0\n")
    spec = TableSpec(name="t", title="T", runs_dir=tmp_path, metrics={"FID": "fid", "KID": "kid"}, datasets=["mvtec"],
                     paper_csv=paper, paper_wide=True)
    with pytest.raises(ConfigError, match="one metric"):
        read_paper(spec)


def test_scaled_cells():
    assert fmt_cell([0.0123, 0.0125], None, scale=1000.0) == "12.4 ± 0.1 / X"
    assert fmt_cell([121.84], 121.8, scale=1.0) == "121.8 / 121.8"


def test_table_without_paper_numbers_shows_ours_only(tmp_path):
    _run(tmp_path, "a", "CutPaste", "demo", "brick", 0.70)
    spec = TableSpec(name="d", title="D", runs_dir=tmp_path, metrics={"AUC": "pixel_auroc"}, datasets=["demo"])
    text = render(spec, collect_runs(tmp_path))
    assert "| CutPaste | 70.0 |" in text and "/ X" not in text
    assert "Cells: ours (mean ± std over categories), in %." in text


# --- incomplete cells, seeds, selections, budgets, paired comparison, texture note (#11, #12, #13) ---

def _rec(root: Path, name: str, display: str, category: str, metrics: dict, dataset: str = "demo", **extra):
    """A finished run dir whose metrics.json has ``metrics`` and the identity keys in ``extra``."""
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"dataset": dataset, "category": category, "display_name": display,
                                                "metrics": metrics, **extra}))
    (d / "done").write_text("ok")


def _failed(root: Path, name: str, display: str, dataset: str, category: str, reason: str, seed: int = 0,
            selection: str = "best", budget: str | None = None) -> None:
    """A failed run dir as scripts/run.py leaves it: failed.txt and Hydra's .hydra/{config,hydra}.yaml."""
    from omegaconf import OmegaConf

    d = root / name
    (d / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({
        "dataset": {"name": dataset, "category": category, "root": "${paths.data_dir}"},
        "synthesizer": {"name": display.lower(), "display_name": display}, "seed": seed,
        "detector": {"selection": selection}}), d / ".hydra" / "config.yaml")
    choices = {"dataset": dataset, "synthesizer": display.lower(), **({"budget": budget} if budget else {})}
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": choices}}}), d / ".hydra" / "hydra.yaml")
    (d / "failed.txt").write_text(reason)


def _table(root: Path, **kw) -> str:
    from cai.report import collect_failed

    spec = TableSpec(**{"name": "t", "title": "T", "runs_dir": root, "datasets": ["demo"],
                        "metrics": {"AUC": "pixel_auroc"}, **kw})
    return render(spec, collect_runs(root), collect_failed(root))


def test_failed_and_missing_categories_mark_the_cell_incomplete(tmp_path):
    for name, auc in (("bottle", 0.90), ("cable", 0.80), ("capsule", 0.70)):
        _run(tmp_path, f"cp-{name}", "CutPaste", "mvtec", name, auc)
    _run(tmp_path, "cp-zipper", "CutPaste", "mvtec", "zipper", 0.10)  # not expected: left out, and said so
    _run(tmp_path, "cai-bottle", "CAI-N", "mvtec", "bottle", 0.95)
    _failed(tmp_path, "cai-cable", "CAI-N", "mvtec", "cable", "Dataset root missing\n  where: /nowhere\n")
    _failed(tmp_path, "glass-bottle", "GLASS", "mvtec", "bottle",
            'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: boom\n')
    paper = tmp_path / "paper.csv"
    paper.write_text("synthesizer,dataset,AUC,AP,PRO\nCAI-N,mvtec,95.6,62.6,87.5\n")
    text = _table(tmp_path, datasets=["mvtec"], metrics={"AUC": "pixel_auroc", "AP": "pixel_ap", "PRO": "pro"},
                  rows=["CutPaste", "GLASS", "CAI-N"], paper_csv=paper,
                  expected={"mvtec": ["bottle", "cable", "capsule"]}, per_category=True)
    assert "| CutPaste | 80.0 ± 10.0 / X | 40.0 ± 5.0 / X | X* (0/3) / X |\n" in text  # PRO is NaN
    assert "| CutPaste | mvtec | bottle | 90.0 | 45.0 | X |\n" in text  # PRO is NaN
    assert "| CAI-N | mvtec | cable | failed | failed | failed |\n" in text
    assert "| CAI-N | 95.0* (1/3) / 95.6 | 47.5* (1/3) / 62.6 | X* (0/3) / 87.5 |\n" in text
    assert "| GLASS | X* (0/3) / X | X* (0/3) / X | X* (0/3) / X |\n" in text
    assert ("\n\n\\* Incomplete cells: the number is the mean over the runs that have a value only.\n"
            "- CAI-N / mvtec: 1/3 runs; failed: cable (Dataset root missing); not run: capsule; "
            "no PRO value: bottle\n"
            "- CutPaste / mvtec: 3/3 runs; no PRO value: bottle, cable, capsule\n"
            "- GLASS / mvtec: 0/3 runs; failed: bottle (RuntimeError: boom); not run: cable, capsule\n") in text
    assert "X = not run. \\* = incomplete (finished/expected runs), see below.\n" in text
    assert "Runs per cell: CAI-N/mvtec: 1, CutPaste/mvtec: 3\n" in text
    assert "\n\nIgnored (category or seed not expected by the table config): CutPaste / mvtec / zipper seed 0\n" in text


def test_expected_categories_default_to_those_found(tmp_path):
    _rec(tmp_path, "a", "CutPaste", "brick", {"pixel_auroc": 0.8})
    _rec(tmp_path, "b", "CutPaste", "coin", {"pixel_auroc": 0.6})
    _rec(tmp_path, "c", "CAI-N", "brick", {"pixel_auroc": 0.9})
    text = _table(tmp_path, rows=["CutPaste", "CAI-N"])
    assert "| CutPaste | 70.0 ± 14.1 |\n| CAI-N | 90.0* (1/2) |\n" in text
    assert "- CAI-N / demo: 1/2 runs; not run: coin\n" in text


def test_seeds_mean_std_over_seed_means_and_missing_seed_is_incomplete(tmp_path):
    for seed, (a, b) in enumerate(((0.8, 0.6), (0.9, 0.7))):
        _rec(tmp_path, f"cp-a-{seed}", "CutPaste", "a", {"pixel_auroc": a}, seed=seed)
        _rec(tmp_path, f"cp-b-{seed}", "CutPaste", "b", {"pixel_auroc": b}, seed=seed)
    _rec(tmp_path, "cai-a-0", "CAI-N", "a", {"pixel_auroc": 0.9}, seed=0)
    _rec(tmp_path, "cai-b-0", "CAI-N", "b", {"pixel_auroc": 0.9}, seed=0)
    _rec(tmp_path, "cai-a-1", "CAI-N", "a", {"pixel_auroc": 0.9}, seed=1)
    text = _table(tmp_path, rows=["CutPaste", "CAI-N"])
    assert text.startswith("## T (selection: best; budget: paper; detector: unet)\n\n"
                           "Cells: ours (mean over categories × seeds 0, 1 "
                           "± std of the seeds' means), in %. X = not run. \\* = incomplete (finished/expected "
                           "runs), see below.\n\n| method | demo AUC |\n|---|---|\n"
                           "| CutPaste | 75.0 ± 7.1 |\n| CAI-N | 90.0* (3/4) |\n")
    assert "- CAI-N / demo: 3/4 runs; not run: b seed 1\n" in text
    assert "Runs per cell: CAI-N/demo: 3, CutPaste/demo: 4\n" in text
    # Explicit seeds: a seed nobody ran makes every cell incomplete.
    assert "| CutPaste | 75.0* (4/6) |" in _table(tmp_path, rows=["CutPaste"], seeds=[0, 1, 2])


def test_selections_are_never_averaged_together(tmp_path):
    _rec(tmp_path, "best", "CutPaste", "a", {"pixel_auroc": 0.8}, selection="best")
    _rec(tmp_path, "val", "CutPaste", "a", {"pixel_auroc": 0.9}, selection="val")
    text = _table(tmp_path)
    assert text.startswith("## T (selection: best | val; budget: paper; detector: unet)\n")
    assert "| method | demo AUC (best) | demo AUC (val) |\n|---|---|---|\n| CutPaste | 80.0 | 90.0 |\n" in text
    assert "Runs per cell: CutPaste/demo/best: 1, CutPaste/demo/val: 1\n" in text
    only_val = _table(tmp_path, selections=["val"])
    assert only_val.startswith("## T (selection: val; budget: paper; detector: unet)\n")
    assert "| method | demo AUC |\n|---|---|\n| CutPaste | 90.0 |\n" in only_val


def test_mixed_budgets_refuse_to_render_and_a_filter_picks_one(tmp_path):
    import pytest

    from cai.errors import ConfigError

    _rec(tmp_path, "paper", "CutPaste", "a", {"pixel_auroc": 0.8})  # no "budget" key: the paper budget
    _rec(tmp_path, "cpu", "CutPaste", "a", {"pixel_auroc": 0.6}, budget="cpu")
    with pytest.raises(ConfigError, match=r"mix budgets \['cpu', 'paper'\].*\n.*\n.*table\.budget=cpu"):
        _table(tmp_path)
    text = _table(tmp_path, budget="cpu")
    assert text.startswith("## T (selection: best; budget: cpu; detector: unet)\n")
    assert "| CutPaste | 60.0 |\n" in text
    assert "| CutPaste | 80.0 |\n" in _table(tmp_path, budget="paper")


def test_mixed_detectors_refuse_to_render_and_a_filter_picks_one(tmp_path):
    """A UNet run (metrics.json without "detector": older runs) and a HeadCLIP run of one cell: refused like
    mixed budgets; table.detector picks one and the heading names it; a failed run's detector is its choice."""
    import pytest

    from cai.errors import ConfigError

    _rec(tmp_path, "unet", "CutPaste", "a", {"pixel_auroc": 0.8})
    _rec(tmp_path, "headclip", "CutPaste", "a", {"pixel_auroc": 0.6}, detector="headclip", selection="last")
    with pytest.raises(ConfigError, match=r"mix detectors \['headclip', 'unet'\].*\n.*\n.*table\.detector=headclip"):
        _table(tmp_path)
    text = _table(tmp_path, detector="headclip")
    assert text.startswith("## T (selection: last; budget: paper; detector: headclip)\n")
    assert "| CutPaste | 60.0 |\n" in text
    assert _table(tmp_path, detector="unet").startswith("## T (selection: best; budget: paper; detector: unet)\n")
    _failed(tmp_path, "hc-b", "CutPaste", "demo", "b", "CUDA out of memory", selection="last")
    from omegaconf import OmegaConf

    hydra_file = tmp_path / "hc-b" / ".hydra" / "hydra.yaml"
    hydra = OmegaConf.load(hydra_file)
    hydra.hydra.runtime.choices.detector = "headclip"
    OmegaConf.save(hydra, hydra_file)
    assert "failed: b (CUDA out of memory)" in _table(tmp_path, detector="headclip")
    assert "CUDA out of memory" not in _table(tmp_path, detector="unet")


def test_runs_of_datasets_outside_the_table_are_not_its_concern(tmp_path):
    _rec(tmp_path, "a", "CutPaste", "a", {"pixel_auroc": 0.8})
    _rec(tmp_path, "b", "CutPaste", "bottle", {"pixel_auroc": 0.6}, dataset="mvtec", budget="cpu", seed=3)
    text = _table(tmp_path)
    assert text.startswith("## T (selection: best; budget: paper; detector: unet)\n\n"
                           "Cells: ours (mean ± std over categories), in %.")
    assert "| CutPaste | 80.0 |\n" in text and "Runs per cell: CutPaste/demo: 1\n" in text


def test_failed_run_of_another_budget_is_filtered_too(tmp_path):
    _rec(tmp_path, "a", "CutPaste", "a", {"pixel_auroc": 0.8}, budget="cpu")
    _failed(tmp_path, "b", "CutPaste", "demo", "a", "boom", budget="paper")
    assert "| CutPaste | 80.0 |\n" in _table(tmp_path, budget="cpu")
    assert "| CutPaste | X* (0/1) |\n" in _table(tmp_path, budget="paper")


def test_failed_run_without_identity_is_still_reported(tmp_path):
    _rec(tmp_path, "a", "CutPaste", "a", {"pixel_auroc": 0.8})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "failed.txt").write_text("boom\n")
    assert ("\n\nFailed runs that could not be placed in a cell (no .hydra/config.yaml): "
            f"{tmp_path / 'b'}\n") in _table(tmp_path)


def test_paired_comparison_against_the_strongest_baseline(tmp_path):
    ap = {"CutPaste": [[0.4, 0.4], [0.4, 0.4]], "GLASS": [[0.5, 0.5], [0.6, 0.4]],
          "CAI-N": [[0.6, 0.6], [0.7, 0.5]], "CAI-M": [[0.56, 0.56], [0.56, 0.36]]}
    pro = {"CutPaste": 0.8, "GLASS": 0.7, "CAI-N": 0.7, "CAI-M": 0.9}
    for row in ap:
        for seed in (0, 1):
            for i, cat in enumerate("ab"):
                if row == "CAI-M" and seed == 1 and cat == "b":
                    continue  # not run: an incomplete cell, 3 of 4 pairs
                _rec(tmp_path, f"{row}-{cat}-{seed}", row, cat, {"pixel_ap": ap[row][seed][i], "pro": pro[row]},
                     seed=seed)
    text = _table(tmp_path, metrics={"AP": "pixel_ap", "PRO": "pro"}, rows=list(ap),
                  paired={"candidates": ["CAI-N", "CAI-M"], "metrics": ["AP", "PRO"]})
    assert ("### Paired comparison (selection: best): candidate − strongest baseline\n\n"
            "Per seed: mean over the categories both finished of (candidate − baseline), in %. The strongest "
            "baseline is the non-candidate row with the best mean in that column.\n\n"
            "| dataset | metric | candidate | strongest baseline | seed 0 | seed 1 | mean ± std | pairs | better on |\n"
            "|---|---|---|---|---|---|---|---|---|\n"
            "| demo | AP | CAI-N | GLASS | +10.0 | +10.0 | +10.0 ± 0.0 | 4/4 | every seed (2/2) |\n"
            "| demo | AP | CAI-M | GLASS | +6.0 | -4.0 | +1.0 ± 7.1 | 3/4 | some seeds (1/2) |\n"
            "| demo | PRO | CAI-N | CutPaste | -10.0 | -10.0 | -10.0 ± 0.0 | 4/4 | no seed (0/2) |\n"
            "| demo | PRO | CAI-M | CutPaste | +10.0 | +10.0 | +10.0 ± 0.0 | 3/4 | every seed (2/2) |\n") in text
    assert "| CAI-M | 56.0* (3/4) | 90.0* (3/4) |\n" in text


def test_paired_metrics_must_be_table_metrics(tmp_path):
    import pytest

    from cai.errors import ConfigError

    _rec(tmp_path, "a", "CAI-N", "a", {"pixel_auroc": 0.8})
    with pytest.raises(ConfigError, match="paired.metrics"):
        _table(tmp_path, paired={"candidates": ["CAI-N"], "metrics": ["PRO"]})


def test_texture_source_footnote(tmp_path):
    _rec(tmp_path, "a", "DRAEM", "a", {"pixel_auroc": 0.8}, texture_source="dtd_mini")
    note = "DRAEM/GLASS used dtd_mini (300 textures), not the full DTD."
    assert f"\n\nNote: {note}\n" in _table(tmp_path, texture_notes={"dtd_mini": note})
    assert "Note:" not in _table(tmp_path, budget="cpu")  # no run of that budget: no note


def test_fid_source_takes_seed_and_budget_from_metrics_json(tmp_path):
    for seed in (0, 1):
        d = tmp_path / f"r{seed}"
        _rec(tmp_path, f"r{seed}", "CAI-M", "a", {"pixel_auroc": 0.9}, seed=seed, budget="cpu")
        (d / "fid.json").write_text(json.dumps({"dataset": "demo", "category": "a", "display_name": "CAI-M",
                                                "seed": 0,  # an older fid.json's sampling seed, not the run's
                                                "metrics": {"fid": 10.0 * (seed + 1)}}))
    runs = collect_runs(tmp_path, "fid.json")
    assert sorted((r["seed"], r["budget"], r["metrics"]["fid"]) for r in runs) == [(0, "cpu", 10.0), (1, "cpu", 20.0)]
    spec = TableSpec(name="t", title="T", runs_dir=tmp_path, metrics={"FID": "fid"}, datasets=["demo"],
                     source="fid.json", scale=1.0, unit="")
    assert "| CAI-M | 15.0 ± 7.1 |\n" in render(spec, runs)


def test_expected_categories_from_dataset_configs():
    import pytest

    from cai.errors import ConfigError
    from cai.report import dataset_categories

    conf = Path(__file__).resolve().parents[1] / "conf" / "dataset"
    cats = dataset_categories(["mvtec", "demo"], conf)
    assert len(cats["mvtec"]) == 15 and cats["mvtec"][0] == "bottle"
    assert cats["demo"] == ["brick", "grass", "gravel", "coin"]
    with pytest.raises(ConfigError, match="table.expected"):
        dataset_categories(["fake"], conf)


def test_make_table_script_marks_failed_category_and_refuses_mixed_budgets(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    runs, out = tmp_path / "runs", tmp_path / "demo.md"
    for cat, auc in (("brick", 0.9), ("grass", 0.8), ("gravel", 0.7)):
        _rec(runs, cat, "CutPaste", cat, {"pixel_auroc": auc, "pixel_ap": 0.5, "pro": 0.6},
             texture_source="dtd_mini")
    _failed(runs, "coin", "CutPaste", "demo", "coin", "Category 'coin' has no training images\n")

    def make(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(repo / "scripts" / "make_table.py"), "table=demo",
                               f"table.runs_dir={runs}", f"table.output={out}",
                               "table.expected=dataset_configs", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                                                 "HOME": str(tmp_path)})

    proc = make()
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "| CutPaste | 80.0* (3/4) | 50.0* (3/4) | 60.0* (3/4) |\n" in text  # coin from conf/dataset/demo.yaml
    assert "- CutPaste / demo: 3/4 runs; failed: coin (Category 'coin' has no training images)\n" in text
    assert "| CutPaste | demo | coin | failed | failed | failed |\n" in text
    assert "\nNote: DRAEM/GLASS used dtd_mini (300 textures), not the full DTD.\n" in text
    columns, rows = _read_csv(out.with_suffix(".csv"))  # the long table beside the markdown
    assert {r["category"]: r["status"] for r in rows} == {"brick": "finished", "grass": "finished",
                                                          "gravel": "finished", "coin": "failed"}
    assert {"status", "pixel_auroc", "texture_source", "run_dir", "reason"} <= set(columns)
    assert "demo.csv" in proc.stdout

    _rec(runs, "brick-cpu", "CutPaste", "brick", {"pixel_auroc": 0.5}, budget="cpu")
    mixed = make()
    assert mixed.returncode == 2 and "Traceback" not in mixed.stderr
    assert "mix budgets ['cpu', 'paper']" in mixed.stderr and "table.budget=cpu" in mixed.stderr
    assert make("table.budget=cpu").returncode == 0
    assert out.read_text().startswith("## Demo dataset: CAI-N beside CutPaste. A SMOKE CHECK, NOT EVIDENCE")
    assert out.read_text().splitlines()[0].endswith(" (selection: best; budget: cpu; detector: unet)")


def test_every_table_config_renders_with_no_runs(tmp_path):
    """Each conf/table/*.yaml builds a TableSpec (its keys match) and renders an empty table."""
    import importlib.util

    from omegaconf import open_dict

    from tests.conftest import REPO_ROOT, compose_config

    spec = importlib.util.spec_from_file_location("make_table", REPO_ROOT / "scripts" / "make_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path in sorted((REPO_ROOT / "conf" / "table").glob("*.yaml")):
        cfg = compose_config("make_table", [f"table={path.stem}"], tmp_path)
        (tmp_path / "none").mkdir(exist_ok=True)  # an empty sweep dir (a missing one stops make_table)
        with open_dict(cfg):
            cfg.table.runs_dir, cfg.table.output = str(tmp_path / "none"), str(tmp_path / f"{path.stem}.md")
        module.make_table(cfg)
        text = (tmp_path / f"{path.stem}.md").read_text()
        budget = cfg.table.get("budget") or "n/a"  # a table that keeps to one budget names it
        assert text.startswith(f"## {cfg.table.title} (selection: n/a; budget: {budget}; detector: n/a)\n"), path.stem
        assert _read_csv(tmp_path / f"{path.stem}.csv")[1] == []  # header only: no run dir


def test_two_finished_runs_of_one_cell_refuse_to_render(tmp_path):
    """A rerun with a changed config lands in a second dir (run-dir hash): the table must not average both."""
    _rec(tmp_path, "cp-brick-a", "CutPaste", "brick", {"pixel_auroc": 0.8})
    _rec(tmp_path, "cp-brick-b", "CutPaste", "brick", {"pixel_auroc": 0.6})
    with pytest.raises(ConfigError) as err:
        _table(tmp_path, rows=["CutPaste"])
    message = err.value.message
    assert "two finished runs for CutPaste / demo / brick seed 0" in message
    assert "cp-brick-a" in message and "cp-brick-b" in message


def test_runs_of_one_cell_with_different_configs_refuse_to_render(tmp_path):
    """Categories of one cell trained with different settings (a partial rerun with detector.epochs=2)
    must not be averaged as if they were one method's numbers; the path keys (category, seed) may differ."""
    def with_config(name: str, category: str, epochs: int, seed: int = 0, categories: str = "[brick, coin]") -> None:
        _rec(tmp_path, name, "CutPaste", category, {"pixel_auroc": 0.8}, seed=seed)
        (tmp_path / name / "resolved_config.yaml").write_text(
            f"seed: {seed}\ndataset:\n  name: demo\n  category: {category}\n  categories: {categories}\n"
            f"  image_size: 64\nsynthesizer:\n  name: cutpaste\ndetector:\n  epochs: {epochs}\n")

    with_config("brick", "brick", 1)
    with_config("coin", "coin", 1, seed=1, categories="[coin]")
    # category, seed and the sweep's category list differ: one config
    assert "| CutPaste |" in _table(tmp_path, rows=["CutPaste"])
    with_config("gravel", "gravel", 2)
    with pytest.raises(ConfigError) as err:
        _table(tmp_path, rows=["CutPaste"])
    assert "detector.epochs: 1 -> 2" in err.value.message and "gravel" in err.value.message


def test_values_built_from_the_seed_may_differ_between_seeds(tmp_path):
    """RealNet's synthesizer.params.seed is ${seed}: its three seeds' runs are one config (make bsdata's table
    refused to render over them), while a literal value that differs still refuses."""
    def run(name: str, seed: int, pool_seed: str, resolved_pool_seed: int) -> None:
        _rec(tmp_path, name, "RealNet", "brick", {"pixel_auroc": 0.8}, seed=seed)
        body = f"seed: {seed}\ndataset:\n  name: demo\n  category: brick\nsynthesizer:\n  name: realnet\n  params:\n"
        (tmp_path / name / "resolved_config.yaml").write_text(body + f"    seed: {resolved_pool_seed}\n")
        (tmp_path / name / ".hydra").mkdir()
        (tmp_path / name / ".hydra" / "config.yaml").write_text(body + f"    seed: {pool_seed}\n")

    run("s0", 0, "${seed}", 0)
    run("s1", 1, "${seed}", 1)
    assert "| RealNet |" in _table(tmp_path, rows=["RealNet"])
    run("s2", 2, "7", 7)  # a fixed pool seed in one run only: a different config
    with pytest.raises(ConfigError) as err:
        _table(tmp_path, rows=["RealNet"])
    assert "synthesizer.params.seed" in err.value.message


def test_a_dotted_metric_reads_label_fidelity_beside_auroc(tmp_path):
    """Tables can show metrics.json's label_fidelity next to AUROC / AP / PRO (issue #17)."""
    _rec(tmp_path, "a", "CAI-N", "brick", {"pixel_auroc": 0.9}, label_fidelity={"under": 0.25, "over": 0.05})
    _rec(tmp_path, "b", "CAI-N", "coin", {"pixel_auroc": 0.7}, label_fidelity={"under": 0.35, "over": None})
    text = _table(tmp_path, rows=["CAI-N"], metrics={"AUC": "pixel_auroc", "Under": "label_fidelity.under",
                                                      "Over": "label_fidelity.over"}, per_category=True)
    assert "| CAI-N | 80.0 ± 14.1 | 30.0 ± 7.1 | 5.0* (1/2) |\n" in text
    assert "| CAI-N | demo | coin | 70.0 | 35.0 | X |\n" in text


# --- the long CSV of a whole sweep (issue #15) ---

def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The CSV as pandas.read_csv would see it (header + rows), with the csv module (no pandas here)."""
    import csv

    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_runs_csv_has_one_row_per_run_dir_with_its_status(tmp_path):
    from omegaconf import OmegaConf

    from cai.report import RUNS_CSV_IDENTITY, write_runs_csv

    runs = tmp_path / "raw"
    choices = {"daad": "daad_mini", "budget": "cpu", "foreground": "otsu"}
    _rec(runs, "cai-brick", "CAI-N", "brick", {"pixel_auroc": 0.9125, "pixel_ap": 0.5, "pro": float("nan")},
         synthesizer="cai_n", seed=0, budget="cpu", selection="best", choices=choices,
         label_fidelity={"over": 0.05, "under": 0.25, "by_scale": {"small": {"over": 0.1}}},
         synthesis={"n": 40, "redrawn": 2}, n_pseudo=40)
    _rec(runs, "cp-coin", "CutPaste", "coin", {"pixel_auroc": 0.7, "pixel_ap": 0.25, "pro": 0.6,
                                               "image_ap": 0.8},  # a metric only this run has
         synthesizer="cutpaste", seed=1, budget="cpu", selection="val", choices={"budget": "cpu"})
    _failed(runs, "cp-gravel", "CutPaste", "demo", "gravel", "Category 'gravel' has no training images\n",
            seed=2, budget="cpu")
    unfinished = runs / "cai-grass"  # started (run_job wrote .hydra/config.yaml), never done nor failed
    (unfinished / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"dataset": {"name": "demo", "category": "grass"}, "seed": 0,
                                     "synthesizer": {"name": "cai_n", "display_name": "CAI-N"}}),
                   unfinished / ".hydra" / "config.yaml")
    (runs / "stray" / "metrics.json").parent.mkdir(parents=True)  # metrics without done, no .hydra: no run
    (runs / "stray" / "metrics.json").write_text("{}")

    out = tmp_path / "t.csv"
    assert write_runs_csv(out, runs) == 4
    columns, rows = _read_csv(out)
    assert columns[: len(RUNS_CSV_IDENTITY)] == list(RUNS_CSV_IDENTITY)
    assert columns[len(RUNS_CSV_IDENTITY):][:5] == ["image_ap", "pixel_ap", "pixel_auroc", "pro",  # metrics first
                                                    "label_fidelity.by_scale.small.over"]
    for col in ("label_fidelity.over", "label_fidelity.under", "synthesis.n", "n_pseudo", "choices.daad",
                "choices.foreground", "run_dir", "reason"):
        assert col in columns, col
    assert columns[-2:] == ["run_dir", "reason"] and len(columns) == len(set(columns))
    by_cat = {r["category"]: r for r in rows}
    assert [r["category"] for r in rows] == ["brick", "coin", "grass", "gravel"]  # sorted by dataset, category
    brick = by_cat["brick"]
    assert (brick["status"], brick["dataset"], brick["synthesizer"], brick["display_name"], brick["seed"],
            brick["budget"], brick["selection"]) == ("finished", "demo", "cai_n", "CAI-N", "0", "cpu", "best")
    assert float(brick["pixel_auroc"]) == 0.9125 and math.isnan(float(brick["pro"])) and brick["image_ap"] == ""
    assert float(brick["label_fidelity.under"]) == 0.25 and brick["synthesis.n"] == "40"
    assert brick["choices.daad"] == "daad_mini" and brick["run_dir"] == str(runs / "cai-brick")
    assert brick["reason"] == ""
    coin = by_cat["coin"]
    assert (coin["status"], coin["seed"], coin["selection"], float(coin["image_ap"])) == ("finished", "1", "val", 0.8)
    assert coin["choices.daad"] == "" and coin["label_fidelity.over"] == ""
    gravel = by_cat["gravel"]
    assert (gravel["status"], gravel["display_name"], gravel["seed"], gravel["budget"]) == ("failed", "CutPaste",
                                                                                             "2", "cpu")
    assert gravel["reason"] == "Category 'gravel' has no training images" and gravel["pixel_auroc"] == ""
    assert gravel["run_dir"] == str(runs / "cp-gravel")
    grass = by_cat["grass"]
    assert (grass["status"], grass["display_name"], grass["pixel_auroc"]) == ("unfinished", "CAI-N", "")

    # runs of another budget or detector share the dir (make bsdata's and table=bsdata_long's): a table's CSV
    # keeps to the table's budget and detector, as its markdown does; runs that never said stay
    _rec(runs, "cai-brick-long", "CAI-N", "brick", {"pixel_auroc": 0.95}, synthesizer="cai_n", seed=0,
         budget="cpu_long", selection="best")
    _rec(runs, "cai-brick-clip", "CAI-N", "brick", {"pixel_auroc": 0.8}, synthesizer="cai_n", seed=0,
         budget="cpu", selection="best", detector="headclip")
    assert write_runs_csv(out, runs) == 6
    assert write_runs_csv(out, runs, budget="cpu", detector="unet") == 4
    assert sorted(r["run_dir"] for r in _read_csv(out)[1]) == sorted(str(runs / d) for d in (
        "cai-brick", "cp-coin", "cp-gravel", "cai-grass"))
    assert write_runs_csv(out, runs, budget="cpu_long") == 2  # the cpu_long run and the one that never said
    assert {r["run_dir"] for r in _read_csv(out)[1]} == {str(runs / "cai-brick-long"), str(runs / "cai-grass")}


def test_runs_csv_joins_the_table_source_metrics(tmp_path):
    """Table 2's CSV: the detection metrics of metrics.json and fid.json's FID / KID as fid.<metric>."""
    from cai.report import write_runs_csv

    _fid_run(tmp_path, "a", "CAI-M", "mvtec", "bottle", 12.5)
    out = tmp_path / "t2.csv"
    assert write_runs_csv(out, tmp_path, source="fid.json") == 1
    columns, rows = _read_csv(out)
    assert {"pixel_auroc", "fid.fid", "fid.kid"} <= set(columns)
    assert (float(rows[0]["fid.fid"]), float(rows[0]["pixel_auroc"])) == (12.5, 0.9)


def test_rows_not_run_say_why_under_the_table(tmp_path):
    _rec(tmp_path, "a", "CAI-N", "brick", {"pixel_auroc": 0.9})
    text = _table(tmp_path, rows=["CAI-N", "CDM-5"], not_run={"CDM-5": "no LDM weights", "CAI-N": "unused"})
    assert "| CDM-5 | X |" in text
    assert "Not run here: CDM-5 (no LDM weights)" in text and "CAI-N (unused)" not in text  # CAI-N ran


def test_a_skipped_metric_family_is_marked_with_its_reason_not_shown_as_a_missing_run(tmp_path):
    """Runs without pixel ground truth skip the pixel metrics (metrics.json["skipped"]): their cells showed
    "X* (0/3)" (as if no run had finished) and the note "no AUC value". Now the cell says skipped with a note number,
    each distinct reason is one note under the table, and a mean that lacks skipped runs is marked incomplete."""
    all_masks = "no ground-truth masks for 3 of 3 anomalous test images"
    some = "no ground-truth masks for 2 of 5 anomalous test images"
    none = {"pixel_auroc": None, "pro": None}
    for cat, why, ap in (("bottle", all_masks, 0.5), ("cable", all_masks, 0.6), ("capsule", some, 0.7)):
        _rec(tmp_path, f"cp-{cat}", "CutPaste", cat, {**none, "image_ap": ap}, skipped={"pixel": why})
    _rec(tmp_path, "cai-bottle", "CAI-N", "bottle", {"pixel_auroc": 0.9, "pro": float("nan"), "image_ap": 0.6},
         skipped={})
    _rec(tmp_path, "cai-cable", "CAI-N", "cable", {**none, "image_ap": 0.8}, skipped={"pixel": all_masks})
    text = _table(tmp_path, metrics={"AUC": "pixel_auroc", "PRO": "pro", "AP-I": "image_ap"},
                  rows=["CutPaste", "CAI-N"], expected={"demo": ["bottle", "cable", "capsule"]}, per_category=True)
    assert "| CutPaste | skipped [1,2] | skipped [1,2] | 60.0 ± 10.0 |\n" in text
    assert "| CAI-N | 90.0* (1/3) [1] | X* (0/3) [1] | 70.0* (2/3) |\n" in text
    assert ("\n\nNot measured (metrics.json[\"skipped\"]: the runs skipped these metrics, so they have no value):\n"
            f"- [1] pixel metrics: {all_masks}\n- [2] pixel metrics: {some}\n") in text
    assert text.count(all_masks) == 1 and text.count(some) == 1  # once per distinct reason
    assert ("- CAI-N / demo: 2/3 runs; not run: capsule; AUC skipped [1]: cable; no PRO value: bottle; "
            "PRO skipped [1]: cable\n") in text
    assert "- CutPaste / demo" not in text  # every run finished; the pixel metrics were skipped by design
    assert "X = not run. skipped [n] = not measured by the runs, note [n] below says why." in text
    assert "| CutPaste | demo | capsule | skipped [2] | skipped [2] | 70.0 |\n" in text
    assert "| CAI-N | demo | bottle | 90.0 | X | 60.0 |\n" in text


def test_skipped_families_name_the_metrics_the_evaluation_skips():
    """report.py cannot import cai.metrics (torch) for make_table; its copy of the pixel family must not drift."""
    from cai.metrics import PIXEL_METRICS
    from cai.report import SKIPPED_FAMILIES

    assert SKIPPED_FAMILIES == {"pixel": PIXEL_METRICS}
