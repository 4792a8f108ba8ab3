"""`tunesmith train --nproc-per-node 2` re-executes itself under torchrun, and the job scripts
for Slurm and LSF are valid bash with a c10d rendezvous on the first node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_overrides
from tunesmith.launch import JobSpec, lsf_script, slurm_script, strip_launch_flags, torchrun_args


@pytest.mark.distributed
def test_train_relaunches_itself_under_torchrun(tmp_path):
    overrides = run_overrides(tmp_path, "llama", "full", 2, **{"strategy.name": "ddp"})
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("OMP_NUM_THREADS", None)  # the launcher sets cores / processes
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith", "train", *overrides, "--nproc-per-node", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "launching: -m torch.distributed.run --nproc-per-node 2" in proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2


def test_launch_flags_are_not_passed_on_to_the_ranks():
    argv = ["train", "cfg.yaml", "--nproc-per-node", "2", "--nnodes=1", "a.b=1"]
    assert strip_launch_flags(argv) == ["train", "cfg.yaml", "a.b=1"]


def test_multi_node_rendezvous_flags():
    c10d = torchrun_args(8, 2, None, "node01:29500", "job7")
    assert c10d[-6:] == [
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "node01:29500",
        "--rdzv-id",
        "job7",
    ]
    static = torchrun_args(8, 2, 1, "node01:29500", "job7")
    assert static[-6:] == ["--node-rank", "1", "--master-addr", "node01", "--master-port", "29500"]
    assert torchrun_args(2, 1, None, None, "x")[-1] == "--standalone"


@pytest.mark.parametrize("writer", [slurm_script, lsf_script])
def test_job_scripts_are_valid_bash_with_c10d_rendezvous(tmp_path, writer):
    spec = JobSpec(
        train_argv=["train", "recipes/my run.yaml", "strategy.name=fsdp"],
        nodes=2,
        gpus_per_node=8,
        queue="gpu",
        time="01:00:00",
        python="python",
    )
    text = writer(spec)
    path = tmp_path / "job.sh"
    path.write_text(text)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    assert "--rdzv-backend c10d" in text and "--nproc-per-node 8" in text
    assert "'recipes/my run.yaml'" in text  # quoted for the shell
    if writer is slurm_script:
        assert "#SBATCH --nodes=2" in text and "#SBATCH --partition=gpu" in text
        assert '--rdzv-endpoint "$head_ip:29500"' in text and "srun python" in text
        assert '--nnodes "$SLURM_NNODES"' in text
    else:
        assert '#BSUB -R "span[ptile=1]"' in text and "#BSUB -q gpu" in text
        assert 'blaunch -z "${hosts[*]}"' in text
        assert '--rdzv-endpoint "$head_node:29500"' in text


def test_cli_writes_a_slurm_script(tmp_path):
    from tunesmith.cli import main

    out = tmp_path / "job.sbatch"
    code = main(["slurm", "cfg.yaml", "--nodes", "2", "--gpus-per-node", "4", "-o", str(out)])
    assert code == 0 and "#SBATCH --gpus-per-node=4" in Path(out).read_text()
