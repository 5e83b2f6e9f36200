import json
from pathlib import Path

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
    assert "| CutPaste | 85.0 ± 7.1 / 89.6 | 42.5 ± 3.5 / 38.5 | X / 71.9 |" in text
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
    assert text.startswith("## Table 2 (selection: best; budget: paper)\n\nCells: ours (mean ± std over categories) / paper. X = not run. "
                           "Lower is better.\n\n")
    assert "| method | mvtec FID | visa FID | ksdd2 FID |\n|---|---|---|---|\n" in text
    assert "| CutPaste | 155.0 ± 7.1 / 153.4 | X / 98.5 | X / 201.9 |\n" in text
    assert "| CAI-M | X / 107.0 | 40.3 / 37.9 | X / 147.9 |\n" in text
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
