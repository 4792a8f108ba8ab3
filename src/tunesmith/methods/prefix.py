"""Prefix tuning: learned key/value prefixes for every attention layer, via `peft`.

    tunesmith train configs/prefix.yaml

Each layer attends to `num_virtual_tokens` extra key/value pairs that PEFT passes in as a
pre-filled KV cache (a `DynamicCache`/`EncoderDecoderCache` with transformers 5). With
`prefix_projection` the prefixes come from a small MLP over virtual-token embeddings (more
parameters while training, often more stable); without it they are trained directly. Logits keep
the input's length, so the loss needs no adjustment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.config import option
from tunesmith.errors import UserError
from tunesmith.methods import peft_common
from tunesmith.methods.base import Capabilities, StepContext, default_param_groups, unwrap


@dataclass
class PrefixOptions:
    name: str = option("prefix", "Prefix tuning: learned key/value prefixes in every layer.")
    num_virtual_tokens: int = option(20, "Prefix length (key/value pairs per layer).")
    prefix_projection: bool = option(
        False, "Produce the prefixes with a 2-layer MLP (reparameterisation) instead of directly."
    )
    encoder_hidden_size: int | None = option(
        None, "Hidden size of that MLP; default: the model's hidden size."
    )

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise UserError("method.num_virtual_tokens must be at least 1", "try 20")


class Prefix:
    """Prefix tuning via peft."""

    name = "prefix"
    Options = PrefixOptions
    capabilities = Capabilities(adapter_only_save=True, edits_inputs=True, supports_packing=False)
    default_lr = 1e-2

    def __init__(self, options: PrefixOptions) -> None:
        self.options = options
        self.base_copy: nn.Module | None = None

    def apply(self, model: nn.Module, tokenizer: Any) -> nn.Module:
        import peft

        kwargs: dict[str, Any] = {}
        if self.options.encoder_hidden_size is not None:
            kwargs["encoder_hidden_size"] = self.options.encoder_hidden_size
        config = peft.PrefixTuningConfig(
            task_type=peft_common.task_type(model),
            num_virtual_tokens=self.options.num_virtual_tokens,
            prefix_projection=self.options.prefix_projection,
            **kwargs,
        )
        model, self.base_copy = peft_common.wrap(model, config)
        return model

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        return default_param_groups(model, weight_decay)

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return peft_common.adapter_state(unwrap(model))

    def on_step(self, ctx: StepContext) -> bool:
        return False

    def save(
        self, model: nn.Module, tokenizer: Any, out_dir: Path, state_dict: dict[str, torch.Tensor]
    ) -> None:
        peft_common.save_adapter(model, tokenizer, out_dir, state_dict, self.base_copy)
