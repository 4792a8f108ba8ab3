"""IA3: learned per-channel scaling of keys, values and feed-forward activations, via `peft`.

    tunesmith train configs/ia3.yaml

Vectors that start at one multiply the outputs of the attention key/value projections and the
input of the feed-forward output projection, so training starts from the base's exact function
and trains about 0.01-0.1% of the parameters. Mergeable: `tunesmith export --merge` scales the
base weights.
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
class Ia3Options:
    name: str = option("ia3", "IA3: learned scaling vectors on keys, values and feed-forward.")
    target_modules: Any = option(
        "default", "Module names to scale, or `default` (PEFT's choice for the architecture)."
    )
    feedforward_modules: Any = option(
        "default",
        "Which of target_modules are feed-forward (their input is scaled), or `default`.",
    )


def _defaults(mapping_name: str, model_type: str, key: str) -> list[str]:
    from peft.utils import constants

    found = getattr(constants, mapping_name).get(model_type)
    if not found:
        raise UserError(
            f"no default IA3 {key} for model type {model_type!r}",
            f"set method.{key} to module names",
        )
    return list(found)


class Ia3:
    """IA3 via peft."""

    name = "ia3"
    Options = Ia3Options
    capabilities = Capabilities(mergeable=True, adapter_only_save=True)
    default_lr = 3e-3  # the IA3 (T-Few) paper's learning rate

    def __init__(self, options: Ia3Options) -> None:
        self.options = options
        self.base_copy: nn.Module | None = None

    def apply(self, model: nn.Module, tokenizer: Any) -> nn.Module:
        import peft

        model_type = model.config.model_type
        targets, feedforward = self.options.target_modules, self.options.feedforward_modules
        if targets == "default":
            targets = _defaults(
                "TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING", model_type, "target_modules"
            )
        if feedforward == "default":
            feedforward = _defaults(
                "TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING",
                model_type,
                "feedforward_modules",
            )
        targets = [targets] if isinstance(targets, str) else list(targets)
        feedforward = [feedforward] if isinstance(feedforward, str) else list(feedforward)
        config = peft.IA3Config(
            task_type=peft_common.task_type(model),
            target_modules=targets,
            feedforward_modules=[f for f in feedforward if f in targets],
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
