"""Full fine-tuning: every parameter trains; final/ is a complete Hugging Face model folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.config import option
from tunesmith.methods.base import Capabilities, StepContext, default_param_groups


@dataclass
class FullOptions:
    name: str = option("full", "Train every parameter of the model.")


class Full:
    """Train all parameters."""

    name = "full"
    Options = FullOptions
    capabilities = Capabilities()
    default_lr = 2e-5

    def __init__(self, options: FullOptions) -> None:
        self.options = options

    def apply(self, model: nn.Module, tokenizer: Any) -> nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        return default_param_groups(model, weight_decay)

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return model.state_dict()

    def on_step(self, ctx: StepContext) -> bool:
        return False

    def save(
        self, model: nn.Module, tokenizer: Any, out_dir: Path, state_dict: dict[str, torch.Tensor]
    ) -> None:
        save_full_model(model, tokenizer, out_dir, state_dict)


def save_full_model(
    model: nn.Module, tokenizer: Any, out_dir: Path, state_dict: dict[str, torch.Tensor]
) -> None:
    """A standard HF folder (safetensors + config + tokenizer) that from_pretrained loads."""
    model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
