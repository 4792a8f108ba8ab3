"""The method interface: what every fine-tuning method provides.

A method is surgery on a loaded Hugging Face model, applied before the strategy wraps it. Each method
is one module (or folder) registered by name in `methods/__init__.py`; its registry key, module name
and config `method.name` are the same string. Methods do not inherit from one another: shared code is
the free functions below.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from tunesmith.strategies.base import Strategy


@dataclass(frozen=True)
class Capabilities:
    """What a method can do; `compat` reads these to refuse impossible runs before loading weights."""

    mergeable: bool = False  # adapters can be folded into the base weights (LoRA, IA3)
    adapter_only_save: bool = False  # final/ holds an adapter, not a full model
    edits_inputs: bool = False  # adds virtual tokens / past key values (prefix, prompt)
    supports_packing: bool = True  # safe with packed rows (position ids restart per example)
    dynamic_trainable: bool = False  # the trainable set changes during training (Green Trainer)
    supports_encoder_decoder: bool = True
    model_types: tuple[str, ...] | None = None  # HF `config.model_type`s it works on; None = any


@dataclass
class StepContext:
    """What `Method.on_step` sees, once before every optimizer step.

    Attributes:
        step: optimizer steps completed so far (0 before the first update).
        epoch: current epoch (0-based), from the data loader's position.
        steps_per_epoch: optimizer steps in one epoch.
        model: the model as the strategy wrapped it.
        optimizer: the optimizer the strategy built.
        strategy: the running strategy (for collectives: broadcast, reduce).
        sample_batches: returns `n` micro-batches for side computations (e.g. importance), drawn
            from a separate iterator so the training data position is not disturbed.
        loss_fn: `loss_fn(model, batch)` -> (loss_sum, n_target_tokens), the loop's own loss.
    """

    step: int
    epoch: int
    steps_per_epoch: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    strategy: Strategy
    sample_batches: Callable[[int], list[dict[str, torch.Tensor]]]
    loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]
    log: Callable[[str], None] = print
    extra: dict[str, Any] = field(default_factory=dict)


class Method(Protocol):
    """A fine-tuning method. Instances are built from the method's own options dataclass."""

    name: ClassVar[str]
    Options: ClassVar[type]
    capabilities: ClassVar[Capabilities]
    default_lr: ClassVar[float]  # used when train.lr is not set

    def __init__(self, options: Any) -> None: ...

    def apply(self, model: nn.Module, tokenizer: Any) -> nn.Module:
        """Freeze / inject / wrap the model, before the strategy wraps it. Returns the model to train."""

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (usually `default_param_groups`)."""

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint must hold to restore this method's trained state."""

    def on_step(self, ctx: StepContext) -> bool:
        """Called before each optimizer step. Returns True if the trainable set changed."""

    def save(
        self, model: nn.Module, tokenizer: Any, out_dir: Path, state_dict: dict[str, torch.Tensor]
    ) -> None:
        """Write the method's natural final format (full HF model or PEFT adapter) into out_dir.

        `model` is the unwrapped user model; `state_dict` its full state as the strategy gathered
        it (sharded strategies cannot save from the local module)."""


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP / DeepSpeed / compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None or not isinstance(inner, nn.Module):
            return model
        model = inner


def _takes_no_decay(name: str, param: nn.Parameter) -> bool:
    # Biases and norm weights are 1-D; decaying them hurts and is what every reference recipe avoids.
    return param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups over trainable parameters: decay on matrices, none on norms and biases.

    Every parameter (trainable or not at this moment) is listed when `include_frozen` methods need
    it; here only `requires_grad` parameters are included.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if _takes_no_decay(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def all_param_groups(
    model: nn.Module, weight_decay: float, names: Collection[str] | None = None
) -> list[dict[str, Any]]:
    """Like `default_param_groups` but over every parameter (or every one in `names`), frozen
    ones included.

    For methods whose trainable set changes (Green Trainer): AdamW skips parameters whose `.grad`
    is None, so frozen tensors are neither updated nor decayed, and their moments survive.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if names is None or name in names:
            (no_decay if _takes_no_decay(name, param) else decay).append(param)
    return [
        g
        for g in (
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        )
        if g["params"]
    ]


def trainable_named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(name, parameter) for every parameter that currently requires grad."""
    return ((n, p) for n, p in model.named_parameters() if p.requires_grad)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied parameters are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        n = param.numel()
        if hasattr(param, "ds_numel"):  # DeepSpeed ZeRO-3 partitions; ds_numel is the full size
            n = param.ds_numel
        elif type(param).__name__ == "Params4bit":  # bitsandbytes packs 2 weights per byte
            n *= 2 * param.element_size()
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total
