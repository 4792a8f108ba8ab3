"""Green Trainer resumes exactly: the mask in force is part of the checkpoint, so a run killed
between two selections continues with the same trainable set as the uninterrupted run."""

from __future__ import annotations

import signal

from test_resume import STEPS, assert_same_run, losses_by_step, overrides, run_in_child

from tunesmith.config import load_config
from tunesmith.train.loop import train

GREEN = {"method.rho": 0.6, "method.select_unit": "step", "method.select_every": 3}


def test_green_killed_between_selections_resumes_exactly(tmp_path, capsys):
    reference = tmp_path / "reference"
    reference.mkdir()
    summary = train(load_config(None, overrides(reference, "green", **GREEN)))
    assert summary["steps"] == STEPS

    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    argv = overrides(interrupted, "green", **GREEN)
    # Selections happen before steps 0, 3 and 6; the kill after step 5 resumes from step-4,
    # where the mask chosen before step 3 must still be in force.
    assert run_in_child(argv, "step:5", interrupted / "child.log") == -signal.SIGKILL
    assert max(losses_by_step(interrupted / "run")) == 5
    capsys.readouterr()
    resumed = train(load_config(None, [*argv, "resume=auto"]))
    assert resumed["resumed_from_step"] == 4
    log = capsys.readouterr().err
    # The saved mask is put back: no selection at step 4, the next one at step 6 as scheduled.
    assert "green step 4 " not in log and "green step 6 " in log
    assert_same_run(interrupted / "run", reference / "run")
