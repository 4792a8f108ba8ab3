"""Prompt tuning (seed 003): learned virtual-token embeddings prepended to every input, via `peft`.

    tunesmith train configs/prompt.yaml

Only `num_virtual_tokens x hidden_size` numbers train. `prompt_tuning_init: TEXT` starts them from
the embeddings of `prompt_tuning_init_text` (repeated or cut to length), RANDOM from a random
init; TEXT without a text, or a text with RANDOM, is a config error. Decoder-only logits gain the
virtual positions in front; `train/loss.py` drops them. Encoder-decoder models get the tokens in
front of the encoder input, so the decoder's logits are unchanged in length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tunesmith.config import option
from tunesmith.errors import UserError
from tunesmith.methods import peft_common
from tunesmith.methods.base import Capabilities, StepContext, default_param_groups, unwrap


@dataclass
class PromptOptions:
    name: str = option("prompt", "Prompt tuning: learn virtual-token embeddings (seed 003).")
    num_virtual_tokens: int = option(20, "Virtual tokens prepended to every input.")
    prompt_tuning_init: Literal["TEXT", "RANDOM"] = option(
        "RANDOM", "Start the virtual tokens from a text's embeddings (TEXT) or at random."
    )
    prompt_tuning_init_text: str | None = option(
        None, "The text for prompt_tuning_init=TEXT, e.g. 'Classify the sentiment:'."
    )

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise UserError("method.num_virtual_tokens must be at least 1", "try 20")
        if self.prompt_tuning_init == "TEXT" and not self.prompt_tuning_init_text:
            raise UserError(
                "method.prompt_tuning_init=TEXT needs method.prompt_tuning_init_text",
                "give the text, or use prompt_tuning_init=RANDOM",
            )
        if self.prompt_tuning_init == "RANDOM" and self.prompt_tuning_init_text:
            raise UserError(
                "method.prompt_tuning_init_text is set but prompt_tuning_init=RANDOM ignores it",
                "set prompt_tuning_init=TEXT, or remove the text",
            )


def text_init_ids(tokenizer: Any, text: str, n: int) -> list[int]:
    """Token ids of `text`, repeated or cut to exactly `n` (PEFT's TEXT initialisation rule)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UserError(f"method.prompt_tuning_init_text {text!r} has no tokens", "give a text")
    return (ids * (n // len(ids) + 1))[:n]


class Prompt:
    """Soft prompt tuning via peft."""

    name = "prompt"
    Options = PromptOptions
    capabilities = Capabilities(adapter_only_save=True, edits_inputs=True, supports_packing=False)
    default_lr = 3e-2

    def __init__(self, options: PromptOptions) -> None:
        self.options = options
        self.base_copy: nn.Module | None = None

    def apply(self, model: nn.Module, tokenizer: Any) -> nn.Module:
        import peft

        n = self.options.num_virtual_tokens
        config = peft.PromptTuningConfig(
            task_type=peft_common.task_type(model), num_virtual_tokens=n
        )
        model, self.base_copy = peft_common.wrap(model, config)
        if self.options.prompt_tuning_init == "TEXT":
            # Done here rather than by PEFT, which would reload the tokenizer by name: ours may
            # have no name to reload (built in-process) and must match the one we train with.
            ids = text_init_ids(tokenizer, self.options.prompt_tuning_init_text, n)
            words = model.get_input_embeddings()
            encoder = model.prompt_encoder[model.active_adapter]
            with torch.no_grad():
                rows = words(torch.tensor(ids, device=words.weight.device))
                encoder.embedding.weight.copy_(rows.to(encoder.embedding.weight.dtype))
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
