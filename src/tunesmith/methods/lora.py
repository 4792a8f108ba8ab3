"""LoRA (and its variants rsLoRA, DoRA, AdaLoRA) through `peft`; QLoRA when the base is quantized.

    tunesmith train configs/lora.yaml
    tunesmith train configs/qlora.yaml          # model.quantization=nf4: the QLoRA recipe

Low-rank matrices A (r x in) and B (out x r) are added beside frozen linear layers:
W x + (alpha / r) B A x (alpha / sqrt(r) with rsLoRA). B starts at zero, so training starts from
the base's exact function. `final/` is a PEFT adapter folder; `tunesmith export --merge` folds the
adapter into the base weights.

AdaLoRA (`variant: adalora`, the Green Trainer paper's baseline) starts every target at rank
`init_r` and prunes towards an average of `target_r` between steps `tinit` and
`total_step - tfinal`, from importance scores of the gradients; it needs `total_step` (set it to
train.max_steps). Its orthogonality regulariser is not added: tunesmith computes the loss itself,
and PEFT only adds the term to a loss it computed from `labels`.
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
class LoraOptions:
    name: str = option("lora", "Low-rank adapters beside frozen linear layers (LoRA).")
    r: int = option(8, "Rank of the adapter matrices.")
    alpha: float = option(16, "Scale numerator: updates are scaled by alpha / r.")
    dropout: float = option(0.05, "Dropout on the adapter's input.")
    target_modules: Any = option(
        "default",
        "Module names to adapt (list or one name), `all-linear`, or `default` (PEFT's choice "
        "for the architecture, e.g. q_proj+v_proj on Llama).",
    )
    bias: Literal["none", "all", "lora_only"] = option(
        "none", "Also train biases: none, all, or only those of adapted layers."
    )
    use_rslora: bool = option(False, "rsLoRA: scale by alpha / sqrt(r) (stable at high rank).")
    use_dora: bool = option(False, "DoRA: learn a magnitude vector per output as well.")
    variant: Literal["lora", "adalora"] = option(
        "lora", "adalora: prune ranks adaptively during training (needs total_step)."
    )
    init_r: int = option(12, "AdaLoRA: starting rank of every adapted layer.")
    target_r: int = option(8, "AdaLoRA: average rank to prune down to.")
    tinit: int = option(0, "AdaLoRA: steps before pruning starts.")
    tfinal: int = option(0, "AdaLoRA: steps at the end with ranks fixed.")
    delta_t: int = option(1, "AdaLoRA: steps between two rank reallocations.")
    total_step: int | None = option(None, "AdaLoRA: total training steps (train.max_steps).")

    def __post_init__(self) -> None:
        if self.r < 1:
            raise UserError(f"method.r={self.r} must be at least 1", "try r: 8")
        if self.variant == "adalora":
            if self.total_step is None:
                raise UserError(
                    "method.variant=adalora needs method.total_step",
                    "set it to train.max_steps",
                )
            if self.use_dora:
                raise UserError("DoRA and AdaLoRA cannot be combined", "drop one of them")
            if self.tinit + self.tfinal >= self.total_step:
                raise UserError(
                    f"AdaLoRA: tinit + tfinal ({self.tinit + self.tfinal}) must be below "
                    f"total_step ({self.total_step})",
                    "leave room for the pruning phase",
                )


def resolve_targets(target_modules: Any, model_type: str) -> Any:
    """PEFT's `target_modules` value from the option (a name, a list, all-linear or default)."""
    if target_modules == "default":
        targets = peft_common.default_lora_targets(model_type)
        if targets is None:
            raise UserError(
                f"no default LoRA target modules for model type {model_type!r}",
                "set method.target_modules to module names, or all-linear",
            )
        return targets
    if target_modules == "all-linear":
        return "all-linear"
    if isinstance(target_modules, str):
        return [target_modules]
    return list(target_modules)


def peft_config(options: LoraOptions, model: nn.Module) -> Any:
    """The `peft` config object for these options on this model."""
    import peft

    common = {
        "task_type": peft_common.task_type(model),
        "lora_alpha": options.alpha,
        "lora_dropout": options.dropout,
        "target_modules": resolve_targets(options.target_modules, model.config.model_type),
        "bias": options.bias,
        "use_rslora": options.use_rslora,
    }
    if options.variant == "adalora":
        return peft.AdaLoraConfig(
            init_r=options.init_r,
            target_r=options.target_r,
            tinit=options.tinit,
            tfinal=options.tfinal,
            deltaT=options.delta_t,
            total_step=options.total_step,
            **common,
        )
    return peft.LoraConfig(r=options.r, use_dora=options.use_dora, **common)


class Lora:
    """LoRA adapters via peft; with a quantized base this is QLoRA."""

    name = "lora"
    Options = LoraOptions
    capabilities = Capabilities(mergeable=True, adapter_only_save=True)
    default_lr = 2e-4

    def __init__(self, options: LoraOptions) -> None:
        self.options = options
        self.base_copy: nn.Module | None = None
        self._hooked: torch.optim.Optimizer | None = None

    def apply(self, model: nn.Module, tokenizer: Any) -> nn.Module:
        if getattr(model, "is_quantized", False):
            from peft import prepare_model_for_kbit_training

            # Casts norms to fp32 and lets gradients reach the adapters through frozen 4/8-bit
            # layers; activation checkpointing was already chosen by models/load.py.
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model, self.base_copy = peft_common.wrap(model, peft_config(self.options, model))
        return model

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        return default_param_groups(model, weight_decay)

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return peft_common.adapter_state(unwrap(model))

    def on_step(self, ctx: StepContext) -> bool:
        if self.options.variant == "adalora" and self._hooked is not ctx.optimizer:
            # AdaLoRA scores importance from gradients after the update and before they are
            # zeroed; the loop zeroes them inside strategy.step, so the call rides on the
            # optimizer's own post-step hook.
            peft_model = unwrap(ctx.model)
            counter = {"step": ctx.step}

            def reallocate(*_: Any) -> None:
                peft_model.base_model.update_and_allocate(counter["step"])
                counter["step"] += 1

            ctx.optimizer.register_step_post_hook(reallocate)
            self._hooked = ctx.optimizer
        return False

    def save(
        self, model: nn.Module, tokenizer: Any, out_dir: Path, state_dict: dict[str, torch.Tensor]
    ) -> None:
        peft_common.save_adapter(model, tokenizer, out_dir, state_dict, self.base_copy)
