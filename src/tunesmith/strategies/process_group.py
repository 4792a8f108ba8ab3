"""The process group the multi-process strategies share: creation, collectives, teardown.

Free functions, not a base class: DDP, FSDP and DeepSpeed each call them. The backend follows
the device (nccl on CUDA, gloo on CPU). A process started without torchrun gets a one-process
group on a free local port, so every strategy also runs (and is tested) as one process.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from datetime import timedelta
from types import TracebackType

import torch
import torch.distributed as dist

from tunesmith.errors import UserError
from tunesmith.strategies.base import default_device, env_rank

# Whether this module created the default group (a caller that made its own keeps it).
_owned = False
# Launcher variables this module set for a one-process group (removed again on teardown, so a
# later run in the same process is not mistaken for a rank of a launched job).
_env_set: list[str] = []


def init_process_group(timeout_s: int) -> tuple[int, int, int, torch.device]:
    """Join (or create) the default process group. Returns (rank, local_rank, world, device).

    `timeout_s` bounds every collective: when a rank dies, the others fail after it instead of
    waiting forever (torchrun also stops the remaining workers when one exits with an error).
    """
    rank, local_rank, world = env_rank()
    device = default_device(local_rank)
    if dist.is_initialized():
        return dist.get_rank(), local_rank, dist.get_world_size(), device
    if "MASTER_ADDR" not in os.environ:
        if world > 1:
            raise UserError(
                f"WORLD_SIZE={world} but MASTER_ADDR is not set",
                "start with `tunesmith train --nproc-per-node N` or torchrun",
            )
        # What a launcher would have set (DeepSpeed asserts LOCAL_RANK even on one process).
        launcher_env = {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "RANK": str(rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(world),
        }
        for key, value in launcher_env.items():
            if key not in os.environ:
                os.environ[key] = value
                _env_set.append(key)
    global _owned
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(
        backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s), **kwargs
    )
    _owned = True
    report_uncaught_exceptions_to_launcher()
    return rank, local_rank, world, device


def report_uncaught_exceptions_to_launcher() -> None:
    """Under torchrun, write an uncaught exception to the rank's error file as well.

    torchrun reads `$TORCHELASTIC_ERROR_FILE` when a rank fails; with it, the launcher's report
    (launch.py) names the exception instead of only an exit code, and tells a rank that failed
    first from one that lost its peer or timed out waiting for it. The traceback still prints.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    previous = sys.excepthook
    if not path or getattr(previous, "writes_error_file", False):
        return

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        try:
            record = {
                "message": {
                    "message": f"{kind.__name__}: {value}",
                    "extraInfo": {
                        "py_callstack": "".join(traceback.format_exception(kind, value, tb)),
                        "timestamp": str(int(time.time())),
                    },
                }
            }
            with open(path, "w", encoding="utf-8") as f:
                json.dump(record, f)
        except OSError:
            pass  # the report is a courtesy; the traceback below is what matters
        previous(kind, value, tb)

    hook.writes_error_file = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def free_port() -> int:
    """A TCP port nobody listens on right now (for one-process groups)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """A summed copy of `x` over every rank."""
    out = x.detach().clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_from(x: torch.Tensor, src: int) -> torch.Tensor:
    """Rank `src`'s `x` on every rank (in place; returned for chaining)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(x, src=src)
    return x


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def owns_default_group() -> bool:
    """Whether `init_process_group` created the default group (and so may tear it down)."""
    return _owned and dist.is_initialized()


def destroy_owned_group() -> None:
    """Leave the default group if `init_process_group` created it (safe to call twice)."""
    global _owned
    if _owned and dist.is_initialized():
        dist.destroy_process_group()
    _owned = False
    while _env_set:
        os.environ.pop(_env_set.pop(), None)


def identical_on_all_ranks(mask: torch.Tensor) -> bool:
    """Whether every rank holds the same tensor (e.g. the Green Trainer trainable mask)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return True
    low, high = mask.detach().double().clone(), mask.detach().double().clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))
