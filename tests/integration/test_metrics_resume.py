"""A resumed run's metrics.jsonl holds every step once, and its plot shows the whole run."""

from __future__ import annotations

import json
import signal

from test_resume import overrides, run_in_child

from tunesmith.config import load_config
from tunesmith.train.loop import train


def test_resume_drops_the_rows_logged_after_the_checkpoint(tmp_path):
    argv = overrides(tmp_path, "full", **{"train.max_steps": 6, "tracking.plot": True})
    assert run_in_child(argv, "step:5", tmp_path / "child.log") == -signal.SIGKILL
    metrics = tmp_path / "run" / "metrics.jsonl"
    with metrics.open("a") as f:  # what a kill in the middle of a write leaves
        f.write('{"step": 5, "lo')
    killed = [json.loads(line)["step"] for line in metrics.read_text().splitlines()[:-1]]
    assert killed.count(5) >= 1  # the killed run logged step 5 after its step-4 checkpoint

    train(load_config(None, [*argv, "resume=auto"]))
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    loss_steps = [r["step"] for r in rows if "loss" in r]
    assert loss_steps == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
