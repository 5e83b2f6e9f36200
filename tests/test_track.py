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
