"""history.jsonl lists every epoch of a run dir once, whatever restarts it went through."""

from __future__ import annotations

import json

from cai.track import Tracker


def _steps(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_restart_from_scratch_and_resume_never_duplicate_epochs(tmp_path):
    first = Tracker(tmp_path)
    for epoch in (1, 2):
        first.log({"loss": 1.0 / epoch}, step=epoch)
    with (tmp_path / "history.jsonl").open("a") as f:
        f.write('{"step": 3, "lo')  # cut off by a kill mid-write
    restarted = Tracker(tmp_path)  # resume=false: training starts again at epoch 1
    for epoch in (1, 2, 3):
        restarted.log({"loss": 0.5}, step=epoch)
    assert _steps(tmp_path) == [1, 2, 3]
    resumed = Tracker(tmp_path)  # resumed from the checkpoint of epoch 2 (epoch 3 was not checkpointed)
    resumed.log({"loss": 0.4}, step=3)
    assert _steps(tmp_path) == [1, 2, 3]
    assert json.loads((tmp_path / "history.jsonl").read_text().splitlines()[-1])["loss"] == 0.4


def _strict(text: str) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_history_and_run_files_are_strict_json_with_null_for_nan(tmp_path):
    """A metric not measured (pixel metrics without masks: NaN) was written as a bare NaN, which jq, JavaScript and
    many JSON readers refuse; it is null now, in history.jsonl and in every file write_json writes."""
    import math

    import numpy as np
    import torch

    from cai.io import write_json

    Tracker(tmp_path).log({"pixel_auroc": math.nan, "image_auroc": np.float32(0.75), "pro": torch.tensor(math.inf),
                           "loss": torch.tensor(0.5)}, step=1)
    line = (tmp_path / "history.jsonl").read_text()
    assert _strict(line) == {"step": 1, "pixel_auroc": None, "image_auroc": 0.75, "pro": None, "loss": 0.5}
    write_json(tmp_path / "metrics.json", {"metrics": {"pixel_auroc": math.nan, "image_ap": 0.5},
                                           "thresholds": {"pixel": np.float64(math.nan), "image": 0.25},
                                           "fid": [np.float32(math.nan), -math.inf, 1.5], "n": 3, "name": "x"})
    assert _strict((tmp_path / "metrics.json").read_text()) == {
        "metrics": {"pixel_auroc": None, "image_ap": 0.5}, "thresholds": {"pixel": None, "image": 0.25},
        "fid": [None, None, 1.5], "n": 3, "name": "x"}
