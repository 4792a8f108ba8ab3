"""Starting many processes: re-exec under torchrun, and job scripts for Slurm and LSF.

    tunesmith train cfg.yaml strategy.name=fsdp --nproc-per-node 8
    tunesmith train cfg.yaml --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-endpoint host:29500
    tunesmith slurm cfg.yaml --nodes 2 --gpus-per-node 8 --partition gpu > job.sbatch
    tunesmith lsf cfg.yaml --nodes 2 --gpus-per-node 8 --queue x86_24h > job.bsub

`tunesmith train --nproc-per-node N` runs torchrun in its own process (`torch.distributed.run ...
-m tunesmith train <same arguments>`) and, when a rank fails, ends with one line naming it; the
same recipe also runs when `torchrun` or `deepspeed` starts the processes directly. On CPU every process gets cores / processes threads: torch
processes that together ask for more threads than there are cores slow each other many-fold.
The job scripts run one torchrun per node (srun / blaunch) with a c10d rendezvous on the first node.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import UserError

RDZV_PORT = 29500


def add_launch_flags(parser: argparse.ArgumentParser) -> None:
    """The torchrun flags of `tunesmith train`."""
    group = parser.add_argument_group("launch (torchrun)")
    group.add_argument(
        "--nproc-per-node", type=int, default=1, help="processes on this node (GPUs, or CPU ranks)"
    )
    group.add_argument("--nnodes", type=int, default=1, help="nodes taking part (multi-node)")
    group.add_argument(
        "--node-rank", type=int, default=None, help="this node's index (static rendezvous)"
    )
    group.add_argument(
        "--rdzv-endpoint",
        default=None,
        metavar="HOST:PORT",
        help="c10d rendezvous on the first node (needed for --nnodes > 1)",
    )


def under_launcher() -> bool:
    """Whether torchrun, deepspeed or Slurm+torchrun already started this process as a rank."""
    return "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ


def wants_relaunch(args: argparse.Namespace) -> bool:
    """True when `tunesmith train` should re-exec itself under torchrun."""
    return (args.nproc_per_node > 1 or args.nnodes > 1) and not under_launcher()


def threads_per_process(nproc: int) -> int:
    """CPU threads for each of `nproc` local processes: the usable cores split evenly."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    return max(cores // max(nproc, 1), 1)


def torchrun_args(
    nproc: int, nnodes: int, node_rank: int | None, rdzv_endpoint: str | None, run_id: str
) -> list[str]:
    """torchrun's arguments for one node of the job (before the script/module)."""
    if nproc < 1 or nnodes < 1:
        raise UserError("--nproc-per-node and --nnodes must be at least 1")
    out = ["--nproc-per-node", str(nproc), "--nnodes", str(nnodes)]
    if nnodes > 1:
        if not rdzv_endpoint:
            raise UserError(
                f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (the first node)",
                "run the same command on every node, e.g. --rdzv-endpoint node01:29500",
            )
        if node_rank is not None:
            # A static rendezvous: node ranks fixed by the user, the endpoint is rank 0's store.
            host, _, port = rdzv_endpoint.rpartition(":")
            out += ["--node-rank", str(node_rank), "--master-addr", host, "--master-port", port]
        else:
            out += ["--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", run_id]
    else:
        out += ["--standalone"]
    return out


def relaunch(args: argparse.Namespace, argv: list[str], output_dir: str | None = None) -> int:
    """Run `tunesmith <argv without launch flags>` on every rank under torchrun (in this process).

    torchrun starts the ranks, and when one fails stops the others. Its own report is a
    traceback and a table; this adds one line that names the rank that failed first and how,
    and how to continue (`output_dir`: where a resume checkpoint would be). Returns the exit code.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    command = [
        *torchrun_args(
            args.nproc_per_node,
            args.nnodes,
            args.node_rank,
            args.rdzv_endpoint,
            os.environ.get("TUNESMITH_RUN_ID", "tunesmith"),
        ),
        "-m",
        "tunesmith",
        *strip_launch_flags(argv),
    ]
    # The ranks inherit this environment; a default run folder is fixed here so they agree.
    if output_dir:
        os.environ.setdefault("TUNESMITH_RUN_DIR", output_dir)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_process(args.nproc_per_node)))
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if _has_cuda() else "cpu")
    print("launching: " + shlex.join(["-m", "torch.distributed.run", *command]), file=sys.stderr)
    try:
        torchrun(get_args_parser().parse_args(command))
    except ChildFailedError as exc:
        code, line = failure_report(exc.failures, output_dir)
        if line:
            print(f"error: {line}", file=sys.stderr)
        return code
    except SignalException as exc:
        # torchrun passed the signal on: the ranks checkpoint and stop, and have said so.
        print(f"stopped: the launcher received {exc.sigval.name}", file=sys.stderr)
        return 128 + int(exc.sigval)
    return 0


# What a rank's exit code means when it did not die by a signal.
STOP_CODES = {128 + signal.SIGTERM: "SIGTERM", 128 + signal.SIGINT: "SIGINT"}
# A rank whose peer vanished fails too; these phrases (gloo, nccl) mark it as a follower.
LOST_PEER = ("closed by peer", "reset by peer", "connection refused", "broken pipe")
TIMED_OUT = ("timed out", "timeout")


def failure_report(failures: dict[int, Any], output_dir: str | None) -> tuple[int, str | None]:
    """(exit code, one line) for torchrun's failed ranks ({rank: ProcessFailure}).

    The rank that failed first is the one not stopped by the launcher (SIGTERM) and not failing
    because its peer vanished, earliest first. Ranks that all stopped on a stop signal (they
    checkpoint and exit 128 + signal) need no report: they said so themselves.
    """
    if all(f.exitcode in STOP_CODES for f in failures.values()):
        return next(iter(failures.values())).exitcode, None

    def message(f: Any) -> str:
        text = f.message.get("message", "") if isinstance(f.message, dict) else ""
        return text.splitlines()[0] if text else ""

    def follower(f: Any) -> bool:
        text = message(f).lower()
        return f.exitcode == -signal.SIGTERM or any(p in text for p in LOST_PEER)

    causes = {r: f for r, f in failures.items() if not follower(f)} or failures
    rank, first = min(causes.items(), key=lambda item: (item[1].timestamp, item[0]))
    what = f"rank {rank} (pid {first.pid})"
    text = message(first)
    if first.exitcode < 0:
        name = first.signal_name()
        line = f"{what} was killed by {name}"
        if name == "SIGKILL":
            line += " (the kernel's out-of-memory killer sends SIGKILL: check `dmesg`)"
    elif any(p in text.lower() for p in LOST_PEER):
        line = (
            f"{what} lost its connection to another rank ({text}): a rank on another node "
            "failed first (see that node's log)"
        )
    elif any(p in text.lower() for p in TIMED_OUT):
        line = (
            f"{what} gave up waiting for the other ranks after train.dist_timeout ({text}): "
            "another rank hung or died"
        )
    elif text:
        line = f"{what} failed: {text} (its traceback is above, lines starting [rank{rank}]:)"
    else:
        line = f"{what} exited with code {first.exitcode} (its messages are above)"
    others = sorted(r for r in failures if r != rank)
    if others:  # failed after it: stopped by torchrun, or lost their peer
        line += f"; rank{'s' if len(others) > 1 else ''} {', '.join(map(str, others))} stopped too"
    code = first.exitcode if first.exitcode > 0 else 1
    return code, line + ". " + resume_hint(output_dir)


def resume_hint(output_dir: str | None) -> str:
    """How to continue after a failed run: from its newest checkpoint, if one was written."""
    from tunesmith.checkpoint import CHECKPOINTS, LATEST

    latest = Path(output_dir) / CHECKPOINTS / LATEST if output_dir else None
    if latest is not None and latest.is_file():
        step = latest.read_text(encoding="utf-8").strip()
        return f"Resume from {step} with the same command and resume=auto"
    return "No resume checkpoint was written (set checkpoint.save_every to make runs resumable)"


def strip_launch_flags(argv: list[str]) -> list[str]:
    """`argv` without --nproc-per-node/--nnodes/--node-rank/--rdzv-endpoint (and their values)."""
    flags = {"--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint"}
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        name = item.split("=", 1)[0]
        if name in flags:
            skip = "=" not in item
            continue
        out.append(item)
    return out


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


# ---------------------------------------------------------------- cluster job scripts


@dataclass
class JobSpec:
    """What a cluster job script needs; `train_argv` is `train <recipe> <overrides...>`."""

    train_argv: list[str]
    nodes: int
    gpus_per_node: int
    queue: str | None = None
    time: str | None = None
    job_name: str = "tunesmith"
    cpus_per_task: int | None = None
    python: str = sys.executable
    port: int = RDZV_PORT


def _train_command(spec: JobSpec, endpoint: str, run_id: str, nnodes: str) -> str:
    parts = [
        shlex.quote(spec.python),
        "-m torch.distributed.run",
        f"--nnodes {nnodes}",
        f"--nproc-per-node {spec.gpus_per_node}",
        f"--rdzv-id {run_id}",
        "--rdzv-backend c10d",
        f"--rdzv-endpoint {endpoint}",
        "-m tunesmith",
        " ".join(shlex.quote(a) for a in spec.train_argv),
    ]
    return " \\\n    ".join(parts)


def slurm_script(spec: JobSpec) -> str:
    """An sbatch script: one task per node, each running torchrun with a c10d rendezvous hosted
    on the job's first node. Submit unchanged with `sbatch`."""
    _check(spec)
    lines = [
        "#!/bin/bash",
        f"# Written by `tunesmith slurm`; submit with: sbatch {spec.job_name}.sbatch",
        f"#SBATCH --job-name={spec.job_name}",
        f"#SBATCH --nodes={spec.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={spec.gpus_per_node}",
        f"#SBATCH --cpus-per-task={spec.cpus_per_task or 8 * spec.gpus_per_node}",
        "#SBATCH --output=%x-%j.out",
    ]
    if spec.queue:
        lines.append(f"#SBATCH --partition={spec.queue}")
    if spec.time:
        lines.append(f"#SBATCH --time={spec.time}")
    lines += [
        "set -euo pipefail",
        "",
        "# The first node hosts the rendezvous; every node runs one torchrun.",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        'head_ip=$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address | '
        "awk '{print $1}')",
        f"export OMP_NUM_THREADS=$(( SLURM_CPUS_PER_TASK / {spec.gpus_per_node} ))",
        "export OMP_NUM_THREADS=$(( OMP_NUM_THREADS > 0 ? OMP_NUM_THREADS : 1 ))",
        "",
        "srun "
        + _train_command(spec, f'"$head_ip:{spec.port}"', '"$SLURM_JOB_ID"', '"$SLURM_NNODES"'),
        "",
    ]
    return "\n".join(lines)


def lsf_script(spec: JobSpec) -> str:
    """A bsub script: one slot per node (span[ptile=1]), `blaunch` runs torchrun on each host
    with a c10d rendezvous on the first one. Submit with `bsub < job.bsub`."""
    _check(spec)
    lines = [
        "#!/bin/bash",
        f"# Written by `tunesmith lsf`; submit with: bsub < {spec.job_name}.bsub",
        f"#BSUB -J {spec.job_name}",
        f"#BSUB -n {spec.nodes}",
        '#BSUB -R "span[ptile=1]"',
        f'#BSUB -gpu "num={spec.gpus_per_node}:mode=exclusive_process"',
        "#BSUB -o %J.out",
        "#BSUB -e %J.err",
    ]
    if spec.queue:
        lines.append(f"#BSUB -q {spec.queue}")
    if spec.time:
        lines.append(f"#BSUB -W {spec.time}")
    lines += [
        "set -euo pipefail",
        "",
        "# One host per line in the job's host file; the first hosts the rendezvous.",
        'mapfile -t hosts < <(sort -u "$LSB_DJOB_HOSTFILE")',
        'head_node="${hosts[0]}"',
        "",
        'blaunch -z "${hosts[*]}" '
        + _train_command(spec, f'"$head_node:{spec.port}"', '"$LSB_JOBID"', '"${#hosts[@]}"'),
        "",
    ]
    return "\n".join(lines)


def _check(spec: JobSpec) -> None:
    if spec.nodes < 1 or spec.gpus_per_node < 1:
        raise UserError("--nodes and --gpus-per-node must be at least 1")
    if not spec.train_argv:
        raise UserError("no recipe given", "write e.g. `tunesmith slurm cfg.yaml --nodes 2`")


def add_cluster_commands(sub: argparse._SubParsersAction) -> None:
    """`tunesmith slurm` and `tunesmith lsf`."""
    for name, queue_flag, helptext in (
        ("slurm", "--partition", "write an sbatch script for a multi-node run"),
        ("lsf", "--queue", "write a bsub script (LSF) for a multi-node run"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("config", help="recipe YAML (the path as the compute nodes see it)")
        p.add_argument("overrides", nargs="*", help="key=value overrides")
        p.add_argument("--nodes", type=int, required=True, help="nodes to allocate")
        p.add_argument(
            "--gpus-per-node", type=int, required=True, help="GPUs (processes) on each node"
        )
        p.add_argument(
            queue_flag, dest="queue", default=None, help=f"{name} {queue_flag[2:]} to submit to"
        )
        p.add_argument("--time", default=None, help="wall-clock limit (Slurm HH:MM:SS, LSF HH:MM)")
        p.add_argument("--job-name", default="tunesmith", help="job name shown by the scheduler")
        p.add_argument("--cpus-per-task", type=int, default=None, help="CPU cores per node")
        p.add_argument("--python", default=sys.executable, help="python on the compute nodes")
        p.add_argument("--port", type=int, default=RDZV_PORT, help="rendezvous port")
        p.add_argument("--output", "-o", default=None, help="write here (default: stdout)")
        p.set_defaults(func=cmd_job_script, scheduler=name)


def cmd_job_script(args: argparse.Namespace) -> int:
    spec = JobSpec(
        train_argv=["train", args.config, *args.overrides],
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        queue=args.queue,
        time=args.time,
        job_name=args.job_name,
        cpus_per_task=args.cpus_per_task,
        python=args.python,
        port=args.port,
    )
    text = slurm_script(spec) if args.scheduler == "slurm" else lsf_script(spec)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
