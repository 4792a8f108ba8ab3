"""A rank that dies, raises or hangs ends the whole 2-process launch, promptly and clearly.

Each test starts `tunesmith train ... --nproc-per-node 2` (the command users run) for a long
run, waits until step 1 is logged, then breaks rank 1 from outside: SIGKILL (what the kernel's
out-of-memory killer does), an exception (from a user plugin, the product's extension point, so
no test hook is needed in tunesmith), or SIGSTOP (a rank that hangs, so only `train.dist_timeout`
can end the wait). Each asserts that the launcher exits non-zero in bounded time, that no
process is left behind, and that the last line names the rank that failed and how.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, run_overrides

pytestmark = pytest.mark.distributed
STARTUP_LIMIT = 300  # seconds until step 1 (imports on 2 busy cores)


class Launch:
    """`tunesmith train <overrides> --nproc-per-node 2` running in the background."""

    def __init__(self, tmp: Path, **extra: object) -> None:
        values = {
            "strategy.name": "ddp",
            "train.batch_size": 2,
            "eval.run_validation": False,
            **extra,
        }
        self.run = tmp / "run"
        self.log = tmp / "log.txt"
        overrides = run_overrides(tmp, "llama", "full", 100_000, **values)
        environ = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TOKENIZERS_PARALLELISM": "false"}
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "OMP_NUM_THREADS"):
            environ.pop(key, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunesmith", "train", *overrides, "--nproc-per-node", "2"],
            env=environ,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        self.family: list[psutil.Process] = []

    def rank_after_first_step(self, rank: int) -> psutil.Process:
        """Rank `rank`'s process, once rank 0 has logged step 1 (every process recorded)."""
        metrics = self.run / "metrics.jsonl"
        deadline = time.monotonic() + STARTUP_LIMIT
        while not (metrics.exists() and '"loss"' in metrics.read_text()):
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no step logged"
            time.sleep(0.2)
        self.family = psutil.Process(self.proc.pid).children(recursive=True)
        ranks = {int(p.environ()["RANK"]): p for p in self.family if "RANK" in p.environ()}
        assert sorted(ranks) == [0, 1]
        return ranks[rank]

    def wait(self, limit: float) -> tuple[int, float, str]:
        """(exit code, seconds it took, output); fails if any process outlives the launcher."""
        start = time.monotonic()
        try:
            code = self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.kill_all()
            pytest.fail(f"the launch still runs {limit} s after the failure")
        seconds = time.monotonic() - start
        time.sleep(0.5)  # orphans are re-parented and reaped
        alive = [p.pid for p in self.family if _alive(p)]
        self.kill_all()
        assert not alive, f"processes left behind: {alive}"
        return code, seconds, self.log.read_text()

    def kill_all(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        for p in self.family:
            if _alive(p):
                p.kill()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("error: ")]


def test_a_rank_killed_by_sigkill_ends_the_launch_with_one_clear_line(tmp_path):
    launch = Launch(tmp_path, **{"checkpoint.save_every": 1, "train.dist_timeout": 60})
    victim = launch.rank_after_first_step(1)
    latest_file = launch.run / "checkpoints" / "latest"
    deadline = time.monotonic() + 60  # step 1 is logged before its checkpoint is written
    while not latest_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    code, seconds, log = launch.wait(limit=60)
    assert code != 0
    [line] = error_lines(log)
    assert line.startswith(f"error: rank 1 (pid {victim.pid}) was killed by SIGKILL"), line
    assert "; rank 0 stopped too." in line
    latest = (launch.run / "checkpoints" / "latest").read_text().strip()
    assert f"Resume from {latest} with the same command and resume=auto" in line
    print(f"SIGKILL: launch ended {seconds:.1f} s after the kill")


def test_a_rank_that_raises_ends_the_launch_naming_the_exception(tmp_path):
    plugin = tmp_path / "fail_on_rank_1.py"
    plugin.write_text(
        "import os\n"
        "import torch\n\n"
        "calls = 0\n\n\n"
        "def fail_third_forward_on_rank_1(module, args, output):\n"
        "    global calls\n"
        "    if module.training and type(module).__name__.endswith('ForCausalLM'):\n"
        "        calls += 1\n"
        "        if calls == 3 and os.environ.get('RANK') == '1':\n"
        "            raise RuntimeError('disk on fire on rank 1')\n\n\n"
        "torch.nn.modules.module.register_module_forward_hook(fail_third_forward_on_rank_1)\n"
    )
    launch = Launch(tmp_path, **{"plugins": json.dumps([str(plugin)]), "train.dist_timeout": 60})
    start = time.monotonic()
    code, _, log = launch.wait(limit=STARTUP_LIMIT)
    assert code == 1, log[-3000:]
    [line] = error_lines(log)
    assert "error: rank 1 (pid " in line, line
    assert "failed: RuntimeError: disk on fire on rank 1" in line
    assert "[rank1]:" in log  # the traceback it points to
    assert "No resume checkpoint was written" in line
    print(f"exception: launch ended after {time.monotonic() - start:.1f} s in all")


@pytest.mark.slow  # mostly waiting: dist_timeout, then torchrun's 30 s grace before SIGKILL
def test_dist_timeout_ends_a_launch_whose_rank_hangs(tmp_path):
    timeout = 10
    launch = Launch(tmp_path, **{"train.dist_timeout": timeout})
    victim = launch.rank_after_first_step(1)
    victim.send_signal(signal.SIGSTOP)  # alive but silent: only the timeout can end the wait
    # Rank 0 gives up after `timeout`; torchrun then SIGTERMs rank 1, which a stopped process
    # cannot act on, and SIGKILLs it 30 s later (fixed for failed workers in torch 2.13).
    code, seconds, log = launch.wait(limit=timeout + 30 + 30)
    assert code != 0
    [line] = error_lines(log)
    assert line.startswith("error: rank 0 (pid "), line
    assert "gave up waiting for the other ranks after train.dist_timeout" in line
    assert "; rank 1 stopped too." in line
    assert seconds >= timeout - 1  # the collective waited for the timeout, not less
    print(f"hang: launch ended {seconds:.1f} s after the stop (dist_timeout {timeout} s)")


def failure(tmp: Path, rank: int, exitcode: int, message: str | None = None):
    """torchrun's record of a failed rank, with the error file a rank writes when it raises."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    error_file = tmp / f"error_{rank}.json"
    if message is not None:
        record = {"message": {"message": message, "extraInfo": {"timestamp": "100"}}}
        error_file.write_text(json.dumps(record))
    return ProcessFailure(
        local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(error_file)
    )


def test_report_when_only_a_peer_on_another_node_failed(tmp_path):
    from tunesmith.launch import failure_report

    lost = "RuntimeError: [pair.cc:553] Connection closed by peer [10.0.0.2]:4001"
    code, line = failure_report(
        {8: failure(tmp_path, 8, 1, lost), 9: failure(tmp_path, 9, -signal.SIGTERM)}, None
    )
    assert code == 1
    assert line.startswith("rank 8 (pid 1008) lost its connection to another rank (")
    assert "a rank on another node failed first" in line and "; rank 9 stopped too." in line


def test_no_report_when_every_rank_stopped_on_a_signal(tmp_path):
    from tunesmith.launch import failure_report

    stops = {r: failure(tmp_path, r, 128 + signal.SIGTERM) for r in (0, 1)}
    assert failure_report(stops, None) == (128 + signal.SIGTERM, None)
