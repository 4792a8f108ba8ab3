"""LLaMA-Adapter: learned adaption prompts with zero-init gates in the top layers, via `peft`.

    tunesmith train configs/llama_adapter.yaml

The top `adapter_layers` attention layers also attend to `adapter_len` learned prompt tokens,
through a gate that starts at zero, so training starts from the base's exact function (PEFT's
"adaption prompt"). PEFT implements it for Llama-family attention (llama, mistral) and GPT-2;
compat refuses other models before any weights load.
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


def supported_model_types() -> tuple[str, ...]:
    """The model types PEFT's adaption prompt knows how to wrap."""
    from peft.tuners.adaption_prompt.config import TRANSFORMERS_MODEL_CONFIG

    return tuple(sorted(TRANSFORMERS_MODEL_CONFIG))


@dataclass
class LlamaAdapterOptions:
    name: str = option("llama_adapter", "LLaMA-Adapter: gated adaption prompts in the top layers.")
    adapter_len: int = option(10, "Adaption prompt tokens per adapted layer.")
    adapter_layers: int = option(30, "Adapted layers, counted from the top (capped at the depth).")

    def __post_init__(self) -> None:
        if self.adapter_len < 1 or self.adapter_layers < 1:
            raise UserError("method.adapter_len and adapter_layers must be at least 1")


class LlamaAdapter:
    """LLaMA-Adapter (adaption prompt) via peft."""

    name = "llama_adapter"
    Options = LlamaAdapterOptions
    capabilities = Capabilities(
        adapter_only_save=True,
        supports_encoder_decoder=False,
        model_types=supported_model_types(),
    )
    default_lr = 9e-3  # the LLaMA-Adapter paper's learning rate

    def __init__(self, options: LlamaAdapterOptions) -> None:
        self.options = options
        self.base_copy: nn.Module | None = None

    def apply(self, model: nn.Module, tokenizer: Any) -> nn.Module:
        import peft

        depth = model.config.num_hidden_layers
        config = peft.AdaptionPromptConfig(
            task_type=peft_common.task_type(model),
            adapter_len=self.options.adapter_len,
            adapter_layers=min(self.options.adapter_layers, depth),
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
