"""Fully sharded data parallel on PyTorch FSDP2 (`fully_shard`), sharded per parameter.

    tunesmith train cfg.yaml strategy.name=fsdp strategy.sharding_strategy=FULL_SHARD \
        --nproc-per-node 8

Each transformer block (found generically: the repeated modules of a ModuleList) becomes one
FSDP unit, then the root. FSDP2 shards every parameter on its own, so one block may mix frozen
and trainable parameters (LoRA, prefix, freeze). The seed's sharding strategies map onto FSDP2:
FULL_SHARD reshards parameters after forward, SHARD_GRAD_OP keeps them until backward ends,
NO_SHARD replicates over a (world, 1) mesh (DDP-like), HYBRID_SHARD shards inside a group of
`hybrid_shard_size` processes (a node) and replicates across groups.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)

from tunesmith.config import option
from tunesmith.methods.base import Capabilities
from tunesmith.strategies import process_group as pg
from tunesmith.strategies.base import OptimizerFactory


@dataclass
class FSDPOptions:
    name: str = option("fsdp", "PyTorch FSDP2: parameters, gradients and optimizer state sharded.")
    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = option(
        "FULL_SHARD",
        "FULL_SHARD (least memory), SHARD_GRAD_OP (keep parameters gathered from forward to "
        "backward: less communication), NO_SHARD (replicate, like DDP), HYBRID_SHARD (shard "
        "within a node, replicate across nodes).",
    )
    hybrid_shard_size: int | None = option(
        None, "Processes per shard group for HYBRID_SHARD; default: processes per node."
    )
    cpu_offload: bool = option(
        False, "Keep sharded parameters, gradients and optimizer state in CPU memory."
    )
    checkpoint_type: Literal["SHARDED_STATE_DICT", "FULL_STATE_DICT"] = option(
        "SHARDED_STATE_DICT",
        "Resume checkpoints: SHARDED_STATE_DICT (torch.distributed.checkpoint, one file set per "
        "rank, reloads at another world size) or FULL_STATE_DICT (rank 0 gathers one file).",
    )
    init: Literal["every_rank", "rank0"] = option(
        "every_rank",
        "Where weights are loaded: every_rank, or rank0 (others build on the meta device and "
        "receive their shards after wrapping, so a big model is not materialised N times).",
    )
    wrap_modules: list = option(
        [], "Module class names that become FSDP units; default: the repeated transformer blocks."
    )


class FSDP:
    """FSDP2 on a 1-D (or, for HYBRID_SHARD and NO_SHARD, 2-D) device mesh."""

    name = "fsdp"
    Options = FSDPOptions

    def __init__(self, options: FSDPOptions, train_cfg: Any) -> None:
        self.options = options
        self.precision = train_cfg.precision
        self.rank, self.local_rank, self.world_size, self.device = pg.init_process_group(
            train_cfg.dist_timeout
        )
        self.mesh = build_mesh(options, self.device, self.world_size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check(self, capabilities: Capabilities, cfg: Any) -> list[str]:
        out = []
        if cfg.train.precision == "fp16-mixed":
            out.append("strategy fsdp does not run fp16-mixed: use train.precision=bf16-mixed")
        if cfg.model.quantization != "none":
            out.append(
                f"strategy fsdp cannot shard bitsandbytes-quantized weights "
                f"(model.quantization={cfg.model.quantization}): use strategy.name=ddp"
            )
        if capabilities.dynamic_trainable:
            out.append(
                f"method {cfg.method.name} changes its trainable set during training, which "
                "strategy fsdp does not follow yet: use strategy.name=ddp"
            )
        return out

    def model_init_context(self) -> contextlib.AbstractContextManager:
        if self.options.init == "rank0" and self.rank != 0:
            return torch.device("meta")
        return contextlib.nullcontext()

    def setup(
        self, model: nn.Module, build_optimizer: OptimizerFactory
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        model = self._shard(model)
        return model, build_optimizer(model)

    def place_frozen(self, model: nn.Module) -> nn.Module:
        # Sharded like the policy: each rank holds 1/world of the copy, gathered block by block
        # in its forward (no gradients, so nothing is reduced).
        return self._shard(model)

    def _shard(self, model: nn.Module) -> nn.Module:
        rank0_init = self.options.init == "rank0"
        if rank0_init and self.is_main:
            model.to(self.device)
            full = model.state_dict()
        elif not rank0_init:
            model.to(self.device)
        kwargs = self._shard_kwargs()
        for block in transformer_blocks(model, self.options.wrap_modules):
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        if rank0_init:
            self._receive_rank0_weights(model, full if self.is_main else {})
        return model

    def _shard_kwargs(self) -> dict[str, Any]:
        mp = MixedPrecisionPolicy()
        if self.precision == "bf16-mixed":
            # bf16 compute, fp32 gradient reduction and fp32 sharded master weights.
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        offload: OffloadPolicy = OffloadPolicy()
        if self.options.cpu_offload:
            offload = CPUOffloadPolicy(pin_memory=self.device.type == "cuda")
        return {
            "mesh": self.mesh,
            "reshard_after_forward": self.options.sharding_strategy
            in ("FULL_SHARD", "HYBRID_SHARD"),
            "mp_policy": mp,
            "offload_policy": offload,
        }

    def _receive_rank0_weights(self, model: nn.Module, full: dict[str, torch.Tensor]) -> None:
        """Meta ranks allocate their shards, then rank 0's full weights are scattered to them."""
        if not self.is_main:
            model.to_empty(device="cpu" if self.options.cpu_offload else self.device)
        set_model_state_dict(
            model,
            full,
            options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
        )
        # Buffers that are not in the state dict (rotary inv_freq) come from rank 0 too.
        for buffer in model.buffers():
            pg.broadcast_from(buffer.data, 0)

    def micro_batch(self, is_last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # precision is the mesh's MixedPrecisionPolicy

    def backward(self, loss: torch.Tensor) -> None:
        # FSDP divides reduced gradients by the world size; the loss is normalised by the
        # global token count already, so multiply back to get the gradient of the global mean.
        (loss * self.world_size).backward()

    def step(self, optimizer: torch.optim.Optimizer, max_grad_norm: float | None) -> torch.Tensor:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        # clip_grad_norm_ on DTensors reduces over the mesh: the norm is global (FSDP1's was not).
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm or float("inf"))
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        if not torch.isfinite(norm):  # the same global norm on every rank: all skip together
            optimizer.zero_grad(set_to_none=True)
            return norm
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    def on_trainable_change(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        return model  # refused in `check` for methods that change it

    def reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        return pg.all_reduce_sum(x)

    def reduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        return pg.all_reduce_sum(x) / self.world_size

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        return pg.broadcast_from(x, src)

    def barrier(self) -> None:
        pg.barrier()

    def full_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        # A collective: every rank takes part, rank 0 receives the full CPU tensors.
        state = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return state if self.is_main else {}

    def save_resume(
        self,
        directory: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        names: Collection[str] | None = None,
    ) -> None:
        """SHARDED_STATE_DICT: torch.distributed.checkpoint under directory/sharded (every rank
        writes its shards). FULL_STATE_DICT: rank 0 writes directory/full_state.pt."""
        import torch.distributed.checkpoint as dcp

        full = self.options.checkpoint_type == "FULL_STATE_DICT"
        options = StateDictOptions(full_state_dict=full, cpu_offload=full)
        state = {"model": get_model_state_dict(model, options=options)}
        if names is not None:
            state["model"] = {k: v for k, v in state["model"].items() if k in names}
        if optimizer is not None:
            state["optimizer"] = get_optimizer_state_dict(model, optimizer, options=options)
        if not full:
            dcp.save(state, checkpoint_id=directory / "sharded")
        elif self.is_main:
            directory.mkdir(parents=True, exist_ok=True)
            torch.save(state, directory / "full_state.pt")
        pg.barrier()

    def load_resume(
        self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None
    ) -> None:
        """Restore either format, at any world size (DCP reshards on load)."""
        import torch.distributed.checkpoint as dcp

        sharded = (directory / "sharded").is_dir()
        if sharded:
            state = {"model": get_model_state_dict(model)}
            if optimizer is not None:
                state["optimizer"] = get_optimizer_state_dict(model, optimizer)
            # Saved with a subset of names (a method's trainable state): load only those.
            saved = dcp.FileSystemReader(str(directory / "sharded")).read_metadata()
            keys = {k.split(".", 1)[1] for k in saved.state_dict_metadata if k.startswith("model.")}
            state["model"] = {k: v for k, v in state["model"].items() if k in keys}
            dcp.load(state, checkpoint_id=directory / "sharded")
            options = StateDictOptions(strict=False)
        else:
            state = (
                torch.load(directory / "full_state.pt", map_location="cpu", weights_only=True)
                if self.is_main
                else {"model": {}, "optimizer": {}}
            )
            options = StateDictOptions(
                full_state_dict=True, broadcast_from_rank0=True, strict=False
            )
        set_model_state_dict(model, state["model"], options=options)
        if optimizer is not None:
            set_optimizer_state_dict(model, optimizer, state.get("optimizer", {}), options=options)

    def close(self) -> None:
        pg.destroy_owned_group()


def build_mesh(options: FSDPOptions, device: torch.device, world: int) -> DeviceMesh:
    """The device mesh the sharding strategy asks for: 1-D shard, or 2-D (replicate, shard)."""
    kind = device.type
    if options.sharding_strategy == "NO_SHARD":
        return init_device_mesh(kind, (world, 1), mesh_dim_names=("replicate", "shard"))
    if options.sharding_strategy == "HYBRID_SHARD":
        import os

        size = options.hybrid_shard_size or int(os.environ.get("LOCAL_WORLD_SIZE", world))
        if size < 1 or world % size:
            from tunesmith.errors import UserError

            raise UserError(
                f"strategy.hybrid_shard_size={size} does not divide the {world} processes",
                "use the processes per node, or a divisor of the world size",
            )
        return init_device_mesh(kind, (world // size, size), mesh_dim_names=("replicate", "shard"))
    return init_device_mesh(kind, (world,), mesh_dim_names=("shard",))


def transformer_blocks(model: nn.Module, class_names: list[str]) -> list[nn.Module]:
    """The modules to shard as units: named classes, or every element of a ModuleList of >= 2
    modules of one class that own parameters (the decoder/encoder layers of any HF model)."""
    if class_names:
        return [m for m in model.modules() if type(m).__name__ in class_names]
    blocks: list[nn.Module] = []
    claimed: set[int] = set()
    for module in model.modules():
        if id(module) in claimed or not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        kinds = {type(m) for m in module}
        if len(kinds) == 1 and any(True for _ in module[0].parameters()):
            blocks.extend(module)
            for m in module:
                claimed.update(id(sub) for sub in m.modules())
    return blocks


def is_sharded(param: torch.Tensor) -> bool:
    """Whether a parameter is an FSDP2 DTensor split across ranks (not a replica)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(param, DTensor):
        return False
    mesh_sizes = param.device_mesh.shape
    return any(p.is_shard() and size > 1 for p, size in zip(param.placements, mesh_sizes))


def local_fraction(model: nn.Module) -> float:
    """This rank's share of the parameter elements (1.0 replicated, 1/N fully sharded)."""
    local = sum(getattr(p, "_local_tensor", p).numel() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    return local / max(total, 1)
