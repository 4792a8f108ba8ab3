"""Exact resume on one process: a run killed with SIGKILL and resumed equals an uninterrupted one.

Every case trains the tiny Llama for N=8 steps with a checkpoint every 2 steps. The interrupted
runs die at a known point (TUNESMITH_TEST_KILL_AT, read by `die_here_for_tests`) in a forked
child, so the kill is a real SIGKILL of a real training process; the resumed run must start from
the checkpoint before the kill, log the same loss at every step and end with bitwise-identical
weights (CPU, fp32).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import NUMBERS, run_overrides
from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.errors import UserError
from tunesmith.methods import METHODS
from tunesmith.train.loop import train

STEPS = 8
METHODS_UNDER_TEST = ["full", "lora"]


def overrides(tmp: Path, method: str, **extra) -> list[str]:
    values = {"checkpoint.save_every": 2, "eval.eval_every": 2, **extra}
    return run_overrides(tmp, "llama", method, STEPS, **values)


def run_in_child(argv: list[str], kill_at: str, log: Path) -> int:
    """`tunesmith <argv>` in a forked process that signals itself at `kill_at`.

    Returns the child's exit code (negative: the signal that killed it). Its stderr goes to `log`.
    """
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.environ["TUNESMITH_TEST_KILL_AT"] = kill_at
            sys.stderr = open(log, "w", buffering=1)  # noqa: SIM115 (the child exits below)
            code = main(["train", *argv])
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def losses_by_step(run: Path) -> dict[int, float]:
    """The loss logged at each step; a resumed run's rows replace the killed run's."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file under final/ (model, or adapter and its base)."""
    out = {}
    for path in sorted((run / "final").rglob("*.safetensors")):
        for name, tensor in load_file(path).items():
            out[f"{path.relative_to(run)}:{name}"] = tensor
    return out


def assert_same_run(resumed: Path, reference: Path) -> None:
    assert losses_by_step(resumed) == losses_by_step(reference)
    assert len(losses_by_step(resumed)) == STEPS
    a, b = final_weights(resumed), final_weights(reference)
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module", params=METHODS_UNDER_TEST)
def reference(request, tmp_path_factory):
    """An uninterrupted run of STEPS steps: (method, run folder)."""
    if request.param not in METHODS:
        pytest.skip(f"method {request.param} is not registered yet")
    tmp = tmp_path_factory.mktemp(f"reference-{request.param}")
    summary = train(load_config(None, overrides(tmp, request.param)))
    assert summary["steps"] == STEPS and summary["resumed_from_step"] is None
    return request.param, tmp / "run"


def test_sigkill_after_step_5_resumes_from_step_4_exactly(reference, tmp_path, capsys):
    method, reference_run = reference
    argv = overrides(tmp_path, method)
    run = tmp_path / "run"
    code = run_in_child(argv, "step:5", tmp_path / "child.log")
    assert code == -signal.SIGKILL, (tmp_path / "child.log").read_text()
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-2", "step-4"]
    assert (checkpoints / "latest").read_text().strip() == "step-4"
    assert max(losses_by_step(run)) == 5 and not (run / "final").exists()

    summary = train(load_config(None, [*argv, "resume=auto"]))
    assert summary["resumed_from_step"] == 4 and summary["steps"] == STEPS
    assert "resumed from" in capsys.readouterr().err
    assert_same_run(run, reference_run)
    print(f"{method}: killed at step 5, resumed from step-4: losses and final weights identical")


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(reference, tmp_path):
    method, reference_run = reference
    argv = overrides(tmp_path, method)
    run = tmp_path / "run"
    assert run_in_child(argv, "checkpoint:4", tmp_path / "child.log") == -signal.SIGKILL
    checkpoints = run / "checkpoints"
    assert (checkpoints / ".tmp-step-4" / "model.safetensors").is_file()  # half written
    assert not (checkpoints / "step-4").exists()
    assert (checkpoints / "latest").read_text().strip() == "step-2"

    summary = train(load_config(None, [*argv, "resume=auto"]))
    assert summary["resumed_from_step"] == 2
    assert not (checkpoints / ".tmp-step-4").exists()
    assert_same_run(run, reference_run)


def test_corrupted_checkpoint_is_skipped_with_a_clear_message(reference, tmp_path, capsys):
    method, reference_run = reference
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    shutil.rmtree(run / "final")
    newest = run / "checkpoints" / "step-8"
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last weight: only the checksum can tell
    (newest / "model.safetensors").write_bytes(bytes(data))

    argv = overrides(tmp_path, method)
    with pytest.raises(UserError, match="model.safetensors does not match its checksum"):
        train(load_config(None, [*argv, f"resume={newest}"]))
    capsys.readouterr()
    summary = train(load_config(None, [*argv, "resume=auto", "train.max_steps=8"]))
    err = capsys.readouterr().err
    assert f"skipping checkpoint {newest}: model.safetensors does not match its checksum" in err
    assert summary["resumed_from_step"] == 6
    a, b = final_weights(run), final_weights(reference_run)
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_checkpoints_at_the_next_step_and_says_how_to_resume(tmp_path, sig):
    argv = overrides(tmp_path, "full", **{"train.max_steps": 50})
    log = tmp_path / "child.log"
    code = run_in_child(argv, f"step:3:{sig.name}", log)
    message = log.read_text()
    assert code == 128 + sig, message
    # The signal lands after step 3's stop vote; every rank sees it in step 4's vote.
    assert f"stopped by {sig.name} at step 4" in message and "resume=auto" in message
    run = tmp_path / "run"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-4"
    assert max(losses_by_step(run)) == 4 and not (run / "final").exists()

    summary = train(load_config(None, [*argv, "resume=auto", "train.max_steps=6"]))
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 6


def test_non_finite_steps_are_skipped_then_the_run_stops_keeping_the_last_good_checkpoint(
    tmp_path, capsys
):
    # lr=1e30: the first update is finite but sends activations past fp32, so from step 2 on
    # every loss and gradient norm is NaN/inf.
    argv = overrides(
        tmp_path,
        "full",
        **{"train.lr": 1e30, "checkpoint.save_every": 1, "train.max_bad_steps": 3},
    )
    with pytest.raises(UserError, match="training diverged: 4 steps in a row") as raised:
        train(load_config(None, argv))
    err = capsys.readouterr().err
    assert "update skipped (3 in a row" in err
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-1"]
    assert "checkpoints/step-1" in str(raised.value)
    weights = load_file(run / "checkpoints" / "step-1" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (run / "final").exists()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in logged if "loss" in r}
    assert losses[2] == losses[3] == losses[4] == "nan"  # skipped steps have no loss, not 0


def test_resume_auto_without_a_checkpoint_starts_fresh(tmp_path, capsys):
    argv = run_overrides(tmp_path, "llama", "full", 2, **{"eval.run_validation": False})
    summary = train(load_config(None, [*argv, "resume=auto"]))
    assert summary["resumed_from_step"] is None and summary["steps"] == 2
    assert "no checkpoint in" in capsys.readouterr().err


def test_resume_mid_epoch_2_with_packing_and_mixing(tmp_path):
    """Two entries mixed by proportion and packed: every epoch draws and packs anew from (seed,
    epoch), so a run killed in epoch 2 resumes on the same packed rows (3 micro-batches an epoch:
    step-8's checkpoint is epoch 2, micro-batch 2)."""
    lines = (NUMBERS / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "small.jsonl").write_text("".join(lines[:12]), encoding="utf-8")
    (tmp_path / "large.jsonl").write_text("".join(lines[12:60]), encoding="utf-8")
    mixture = [
        {"path": str(tmp_path / "small.jsonl"), "proportion": 0.5},
        {"path": str(tmp_path / "large.jsonl"), "proportion": 0.5},
    ]
    extra = {
        "data.train": json.dumps(mixture),
        "data.packing": True,
        "data.max_seq_len": 64,
        "data.cache": False,
        "train.batch_size": 4,
        "train.max_steps": 10,
    }
    (tmp_path / "ref").mkdir()
    train(load_config(None, overrides(tmp_path / "ref", "full", **extra)))
    argv = overrides(tmp_path, "full", **extra)
    code = run_in_child(argv, "step:9", tmp_path / "child.log")
    assert code == -signal.SIGKILL, (tmp_path / "child.log").read_text()
    run = tmp_path / "run"
    trainer = json.loads((run / "checkpoints" / "step-8" / "trainer_state.json").read_text())
    assert (trainer["data"]["epoch"], trainer["data"]["position"]) == (2, 2)

    summary = train(load_config(None, [*argv, "resume=auto"]))
    assert summary["resumed_from_step"] == 8 and summary["steps"] == 10
    reference = tmp_path / "ref" / "run"
    assert losses_by_step(run) == losses_by_step(reference) and len(losses_by_step(run)) == 10
    assert (
        summary["examples_used"]
        == json.loads((reference / "summary.json").read_text())["examples_used"]
    )
    a, b = final_weights(run), final_weights(reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_dpo_sigkill_and_resume_is_bitwise_equal(tmp_path, method):
    """objective.name=dpo: the reference (adapters disabled / frozen copy of the starting model)
    survives a kill -9, so the resumed run equals an uninterrupted one bit for bit."""
    from conftest import preference_overrides

    extra = {"checkpoint.save_every": 2, "eval.eval_every": 2}
    reference_argv = preference_overrides(tmp_path / "ref", method, STEPS, **extra)
    train(load_config(None, reference_argv))
    argv = preference_overrides(tmp_path, method, STEPS, **extra)
    code = run_in_child(argv, "step:5", tmp_path / "child.log")
    assert code == -signal.SIGKILL, (tmp_path / "child.log").read_text()
    summary = train(load_config(None, [*argv, "resume=auto"]))
    assert summary["resumed_from_step"] == 4
    assert_same_run(tmp_path / "run", tmp_path / "ref" / "run")
