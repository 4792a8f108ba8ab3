"""Exact resume and signal stops on 2 processes (gloo, CPU), through torchrun for real.

For DDP (replicated checkpoint) and FSDP2 (sharded, torch.distributed.checkpoint): an
uninterrupted 2-process run; the same run with both ranks SIGKILLed after step 3 and then resumed
(bitwise equal to the uninterrupted one); the 2-process checkpoint resumed on one process, which
converts the data position and says what changed. For DDP also a run where only rank 1 receives
SIGTERM: both ranks agree on the stop and checkpoint the same step. The FSDP cases are marked
slow (three more launches).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, run_overrides
from tunesmith.config import load_config
from tunesmith.train.loop import train

pytestmark = pytest.mark.distributed
STEPS = 6
STRATEGIES = ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)]
ONE_PROCESS = {"ddp": "single", "fsdp": "fsdp"}  # where each strategy's checkpoint resumes


def ddp_overrides(tmp: Path, strategy: str = "ddp", **extra: object) -> list[str]:
    values = {
        "strategy.name": strategy,
        "train.batch_size": 4,  # per rank: a global batch of 8, like one process with 8
        "checkpoint.save_every": 2,
        "eval.run_validation": False,
        **extra,
    }
    return run_overrides(tmp, "llama", "full", STEPS, **values)


def torchrun(argv: list[str], log: Path, kill_at: str | None = None) -> int:
    """`tunesmith train <argv>` on 2 processes; returns torchrun's exit code."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT / "src"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("TUNESMITH_TEST_KILL_AT", None)
    if kill_at:
        env["TUNESMITH_TEST_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--master-port", str(_free_port()), "-m", "tunesmith", "train", *argv]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    log.write_text(proc.stdout + proc.stderr)
    return proc.returncode


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def losses_by_step(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module", params=STRATEGIES)
def strategy(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def reference(strategy, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp(f"{strategy}_reference")
    code = torchrun(ddp_overrides(tmp, strategy), tmp / "log.txt")
    assert code == 0, (tmp / "log.txt").read_text()[-3000:]
    return tmp / "run"


@pytest.fixture(scope="module")
def killed(strategy, tmp_path_factory) -> tuple[Path, list[str]]:
    """A 2-process run whose ranks both die by SIGKILL once step 3 is done."""
    tmp = tmp_path_factory.mktemp(f"{strategy}_killed")
    argv = ddp_overrides(tmp, strategy)
    assert torchrun(argv, tmp / "log.txt", kill_at="step:3") != 0
    return tmp / "run", argv


def test_two_processes_killed_and_resumed_equal_an_uninterrupted_run(reference, killed, tmp_path):
    run, argv = killed
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-2"
    assert not (run / "final").exists()
    # Resume a copy, so the one-process test below still finds the untouched checkpoint.
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    argv = [a for a in argv if not a.startswith("output_dir=")] + [f"output_dir={copy}"]
    code = torchrun([*argv, "resume=auto"], tmp_path / "log.txt")
    log = (tmp_path / "log.txt").read_text()
    assert code == 0, log[-3000:]
    assert "resumed from" in log and "step-2 at step 2" in log
    assert losses_by_step(copy) == losses_by_step(reference)
    a = load_file(copy / "final" / "model.safetensors")
    b = load_file(reference / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_on_one_rank_stops_both_at_the_same_checkpoint(tmp_path):
    argv = ddp_overrides(tmp_path, **{"train.max_steps": 40, "checkpoint.save_every": 0})
    code = torchrun(argv, tmp_path / "log.txt", kill_at="step:1:SIGTERM:1")
    log = (tmp_path / "log.txt").read_text()
    assert code != 0  # the ranks exit with 128 + SIGTERM; torchrun reports the failure
    # Rank 1 votes in step 2's all-reduce; both ranks stop after step 2 (none hangs).
    assert "stopped by a stop signal on another rank at step 2" in log, log[-3000:]
    run = tmp_path / "run"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-2"
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-2"]
    assert max(losses_by_step(run)) == 2


def test_a_two_process_checkpoint_resumes_on_one_process(
    strategy, reference, killed, tmp_path, capsys
):
    run, _ = killed
    one = ONE_PROCESS[strategy]
    values = {"strategy.name": one, "train.batch_size": 8, "eval.run_validation": False}
    argv = run_overrides(tmp_path, "llama", "full", STEPS, **values, resume=str(run))
    summary = train(load_config(None, argv))
    err = capsys.readouterr().err
    assert summary["resumed_from_step"] == 2
    assert f"written by 2 process(es) with strategy {strategy}; resuming on 1 with {one}" in err
    assert "2 micro-batches of 4 x 2 process(es) = 16 examples" in err
    assert "-> 2 micro-batches of 8 x 1" in err
    resumed, expected = losses_by_step(tmp_path / "run"), losses_by_step(reference)
    assert sorted(resumed) == [3, 4, 5, 6]
    for step, loss in resumed.items():
        assert loss == pytest.approx(expected[step], rel=1e-5)
