"""One process, one device (CUDA if present, else CPU)."""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.checkpoint import load_replicated, save_replicated
from tunesmith.config import option
from tunesmith.methods.base import Capabilities
from tunesmith.strategies.base import OptimizerFactory, autocast_context, default_device


@dataclass
class SingleOptions:
    name: str = option("single", "Train in one process on one device.")
    device: str | None = option(
        None, "Device to use (cuda, cuda:1, cpu); default: CUDA if present."
    )


class Single:
    """Train on one device; collectives are identities."""

    name = "single"
    Options = SingleOptions
    compiles_by_default = True

    def __init__(self, options: SingleOptions, train_cfg: Any) -> None:
        self.options = options
        self.precision = train_cfg.precision
        self.rank, self.world_size = 0, 1
        self.device = torch.device(options.device) if options.device else default_device()
        # fp16 gradients underflow without a loss scaler; bf16 and fp32 do not need one.
        self.scaler = (
            torch.amp.GradScaler(self.device.type) if self.precision == "fp16-mixed" else None
        )

    @property
    def is_main(self) -> bool:
        return True

    def check(self, capabilities: Capabilities, cfg: Any) -> list[str]:
        return []

    def model_init_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def setup(
        self, model: nn.Module, build_optimizer: OptimizerFactory
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        if not getattr(model, "is_quantized", False):  # bitsandbytes models are placed at load
            model.to(self.device)
        return model, build_optimizer(model)

    def place_frozen(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def micro_batch(self, is_last: bool) -> contextlib.AbstractContextManager:
        return autocast_context(self.precision, self.device)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, max_grad_norm: float | None) -> torch.Tensor:
        return clip_and_step(optimizer, max_grad_norm, self.scaler)

    def on_trainable_change(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        return model

    def reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    def reduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        return x

    def barrier(self) -> None:
        pass

    def full_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        from tunesmith.methods.base import unwrap

        return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}

    def save_resume(
        self,
        directory: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        names: Collection[str] | None = None,
    ) -> None:
        save_replicated(directory, model, optimizer, names, write=True)

    def load_resume(
        self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None
    ) -> None:
        load_replicated(directory, model, optimizer)

    def close(self) -> None:
        pass


def clip_and_step(
    optimizer: torch.optim.Optimizer,
    max_grad_norm: float | None,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """Unscale (fp16), clip, step and zero the gradients; returns the pre-clip gradient norm.

    Shared by the strategies whose gradients are plain local tensors after backward (single, DDP).
    A non-finite norm skips the update (see `Strategy.step`); the norm is returned as a tensor.
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if max_grad_norm:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    else:
        norm = (
            torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad.detach().float()) for p in params])
            )
            if params
            else torch.zeros(())
        )
    if scaler is None and not torch.isfinite(norm):
        # One host sync per step, worth it: a NaN/inf update would poison the weights and the
        # optimizer moments for good. (fp16's GradScaler skips such steps by itself.)
        optimizer.zero_grad(set_to_none=True)
        return norm
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm
