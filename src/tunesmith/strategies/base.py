"""The strategy interface: how the model is placed, wrapped, and how gradients are synchronised.

The training loop never asks which strategy it runs; everything that differs between one device,
DDP, FSDP2 and DeepSpeed sits behind these methods. Strategies do not inherit from one another:
shared code is the free functions in this module.

Loss normalisation contract: the loop calls `backward(loss)` with
`loss = (sum of token losses of this micro-batch on this rank) / (target tokens of the whole
optimizer step summed over all micro-batches and ranks)`. Summed over micro-batches and ranks
that is the global mean token loss. A strategy whose engine averages gradients over ranks (DDP,
FSDP) or scales by 1/accumulation (DeepSpeed) multiplies the loss back so the gradient stays the
gradient of the global mean.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from tunesmith.methods.base import Capabilities

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


class Strategy(Protocol):
    """One way of running training (single, ddp, fsdp, deepspeed)."""

    name: ClassVar[str]
    Options: ClassVar[type]

    rank: int
    world_size: int
    device: torch.device
    # Whether `train.compile: auto` compiles under this strategy (optional; absent means False):
    # only where compiled training was measured (train/compile.py).
    compiles_by_default: ClassVar[bool]

    def __init__(self, options: Any, train_cfg: Any) -> None: ...

    @property
    def is_main(self) -> bool:
        """True on global rank 0 (logging, files, trackers)."""

    def check(self, capabilities: Capabilities, cfg: Any) -> list[str]:
        """Refusals (human-readable) for this method/config on this strategy; empty if fine."""

    def model_init_context(self) -> contextlib.AbstractContextManager:
        """Where the model is built (plain, meta device, DeepSpeed zero.Init)."""

    def setup(
        self, model: nn.Module, build_optimizer: OptimizerFactory
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Move/wrap the model and build its optimizer. Returns (model to call, optimizer)."""

    def place_frozen(self, model: nn.Module) -> nn.Module:
        """Place a frozen model that is only called forward (a preference objective's reference
        copy, `objectives/reference.py`) as the policy is placed: on the device, and sharded
        where the policy's parameters are (FSDP2, ZeRO-3). Returns the model to call."""

    def micro_batch(self, is_last: bool) -> contextlib.AbstractContextManager:
        """Wraps forward + backward of one micro-batch: precision (autocast) and gradient sync
        (DDP `no_sync` for all but the last micro-batch of an accumulation window)."""

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of a normalised loss (see the module docstring), with loss scaling."""

    def step(self, optimizer: torch.optim.Optimizer, max_grad_norm: float | None) -> torch.Tensor:
        """Unscale, clip, step, zero grads. Returns the pre-clip global gradient norm (a tensor).

        When the norm is not finite the update is skipped (gradients zeroed, weights and
        optimizer state untouched) on every rank; the loop counts such steps."""

    def on_trainable_change(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        """The trainable set changed (Green Trainer): rebuild what the wrapper needs, keeping the
        optimizer state of tensors that stay. Returns the model to call from now on."""

    def reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (returns a new tensor; identity on one process)."""

    def reduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over ranks."""

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank `src`'s tensor on every rank."""

    def barrier(self) -> None:
        """Wait for every rank."""

    def full_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The full (unsharded) state dict of the user's model, on CPU, on rank 0 (empty elsewhere)."""

    def save_resume(
        self,
        directory: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        names: Collection[str] | None = None,
    ) -> None:
        """Write model + optimizer state for exact resume into `directory` (every rank calls).

        `directory` exists (a temporary folder that tunesmith/checkpoint.py checksums and renames
        once every rank returns). `names`: the model state-dict entries to keep (the method's
        choice, `checkpoint.resume_state_names`; None = all). `optimizer` is None when
        `checkpoint.save_optimizer` is off. Weights go in safetensors; replicated strategies call
        `checkpoint.save_replicated`. Refuse (EmptyStateError) to write ungathered weights."""

    def load_resume(
        self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None
    ) -> None:
        """Restore what `save_resume` wrote (every rank calls), also at another world size when
        the format is sharded (log what changed). Pickles only via `weights_only=True`."""

    def close(self) -> None:
        """Tear down the process group, if this strategy made one."""


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """torch.autocast for the mixed precisions; a no-op for fp32 and bf16-pure."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def default_precision(device: str | None = None) -> str:
    """`train.precision: auto`: bf16-mixed where a CUDA GPU computes in bf16 (Ampere and later),
    fp32 elsewhere (a CPU, an older GPU, or `strategy.device: cpu`)."""
    on_gpu = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "fp32"


def default_device(local_rank: int = 0) -> torch.device:
    """The accelerator this process should use: CUDA if present (one per local rank), else CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def env_rank() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the torchrun environment; (0, 0, 1) when not launched."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("LOCAL_RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
    )
