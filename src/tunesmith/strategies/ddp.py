"""Data parallel with torch DDP: every rank holds the whole model, gradients are all-reduced.

    tunesmith train cfg.yaml strategy.name=ddp --nproc-per-node 2

Each rank reads a disjoint slice of every global batch (data/loader.py), so N processes with
batch_size B take the same optimizer steps as one process with batch_size N x B.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tunesmith.checkpoint import load_replicated, save_replicated
from tunesmith.config import option
from tunesmith.methods.base import Capabilities, unwrap
from tunesmith.strategies import process_group as pg
from tunesmith.strategies.base import OptimizerFactory, autocast_context
from tunesmith.strategies.single import clip_and_step


@dataclass
class DDPOptions:
    name: str = option("ddp", "torch DistributedDataParallel: a full replica per process.")
    bucket_cap_mb: int = option(25, "Gradient all-reduce bucket size in MiB.")
    find_unused_parameters: bool = option(
        False, "Tolerate trainable parameters that get no gradient in a step (slower)."
    )


class DDP:
    """A full model per rank; gradients averaged by DDP's reducer."""

    name = "ddp"
    Options = DDPOptions

    def __init__(self, options: DDPOptions, train_cfg: Any) -> None:
        self.options = options
        self.precision = train_cfg.precision
        self.rank, self.local_rank, self.world_size, self.device = pg.init_process_group(
            train_cfg.dist_timeout
        )
        self.scaler = (
            torch.amp.GradScaler(self.device.type) if self.precision == "fp16-mixed" else None
        )
        self._wrapped: DistributedDataParallel | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check(self, capabilities: Capabilities, cfg: Any) -> list[str]:
        return []

    def model_init_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def setup(
        self, model: nn.Module, build_optimizer: OptimizerFactory
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        if not getattr(model, "is_quantized", False):
            model.to(self.device)
        self._wrapped = self._wrap(model)
        return self._wrapped, build_optimizer(model)

    def _wrap(self, model: nn.Module) -> DistributedDataParallel:
        # DDP broadcasts rank 0's parameters and buffers here, so every replica starts equal.
        return DistributedDataParallel(
            model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            bucket_cap_mb=self.options.bucket_cap_mb,
            find_unused_parameters=self.options.find_unused_parameters,
        )

    def place_frozen(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)  # nothing to synchronise: a replica per rank

    def micro_batch(self, is_last: bool) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(autocast_context(self.precision, self.device))
        if not is_last and self._wrapped is not None and torch.is_grad_enabled():
            # Skip the all-reduce inside an accumulation window; the last backward syncs the sum.
            stack.enter_context(self._wrapped.no_sync())
        return stack

    def backward(self, loss: torch.Tensor) -> None:
        # DDP averages gradients over ranks; the loss is already divided by the global token
        # count, so multiplying by the world size makes the average a sum.
        loss = loss * self.world_size
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, max_grad_norm: float | None) -> torch.Tensor:
        # After the all-reduce every rank holds the same full gradients: the local norm is global.
        return clip_and_step(optimizer, max_grad_norm, self.scaler)

    def on_trainable_change(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        """Re-wrap: DDP's reducer registers hooks only on parameters trainable when it is built."""
        inner = unwrap(model)
        mask = torch.tensor([p.requires_grad for p in inner.parameters()], dtype=torch.float64)
        if not pg.identical_on_all_ranks(mask.to(self.device)):
            raise RuntimeError(
                "the trainable set differs between ranks; the method must decide it identically "
                "on every rank (broadcast its choice from rank 0)"
            )
        self._wrapped = self._wrap(inner)
        return self._wrapped

    def reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        return pg.all_reduce_sum(x)

    def reduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        return pg.all_reduce_sum(x) / self.world_size

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        return pg.broadcast_from(x, src)

    def barrier(self) -> None:
        pg.barrier()

    def full_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        if not self.is_main:
            return {}
        return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}

    def save_resume(
        self,
        directory: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        names: Collection[str] | None = None,
    ) -> None:
        """Replicas are identical: rank 0 writes the checkpoint module's replicated format."""
        save_replicated(directory, model, optimizer, names, write=self.is_main)

    def load_resume(
        self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None
    ) -> None:
        load_replicated(directory, model, optimizer)

    def close(self) -> None:
        pg.destroy_owned_group()
