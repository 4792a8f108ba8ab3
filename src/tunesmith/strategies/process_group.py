"""The process group the multi-process strategies share: creation, collectives, teardown.

Free functions, not a base class: DDP, FSDP and DeepSpeed each call them. The backend follows
the device (nccl on CUDA, gloo on CPU). A process started without torchrun gets a one-process
group on a free local port, so every strategy also runs (and is tested) as one process.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

from tunesmith.errors import UserError
from tunesmith.strategies.base import default_device, env_rank

# Whether this module created the default group (a caller that made its own keeps it).
_owned = False


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
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(free_port())
    global _owned
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(
        backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s), **kwargs
    )
    _owned = True
    return rank, local_rank, world, device


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


def destroy_owned_group() -> None:
    """Leave the default group if `init_process_group` created it (safe to call twice)."""
    global _owned
    if _owned and dist.is_initialized():
        dist.destroy_process_group()
    _owned = False


def identical_on_all_ranks(mask: torch.Tensor) -> bool:
    """Whether every rank holds the same tensor (e.g. the Green Trainer trainable mask)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return True
    low, high = mask.detach().double().clone(), mask.detach().double().clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))
