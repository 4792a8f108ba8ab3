"""Green Trainer: train the most important tensors whose backward fits a FLOPs budget.

    tunesmith train configs/green.yaml method.rho=0.5

`rho` is a fraction of a full fine-tuning step's FLOPs, forward pass included (green_trainer.md
§1). The forward pass is always paid, so rho has a floor, rho_min = forward / (forward + full
backward), about 1/3; a rho below it stops the run before the first step, naming the floor.

Every `select_every` epochs (or steps), before the step: the first-order Taylor importance of each
tensor is measured on `importance_batches` fresh micro-batches without side effects
(`importance.py`), the exact DP (`selection.py`) picks the most important set whose backward FLOPs
fit, and `requires_grad` follows the mask. Autograd then skips the weight gradients of frozen
tensors and stops below the earliest selected one, so the compute saved is real. The optimizer
holds every parameter (`all_param_groups`); AdamW skips tensors without a gradient, so a tensor
that leaves the set and comes back keeps its moments.

Under DDP every rank profiles the same batch shape, rank 0 measures importance and runs the DP,
and the mask is broadcast; the strategy re-wraps the model for the new trainable set.

Each selection logs one line, e.g.

    green step 0 (epoch 0): 14/21 tensors, 61.2% of parameters; planned backward 42.0% of full,
    step FLOPs 61.3% of full (1.63x); backward stops at model.layers.0.self_attn.v_proj.weight
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tunesmith.config import option
from tunesmith.errors import UserError
from tunesmith.estimate.flops import FlopsProfile, profile_flops
from tunesmith.methods import peft_common
from tunesmith.methods.base import Capabilities, StepContext, all_param_groups, unwrap
from tunesmith.methods.full import save_full_model
from tunesmith.methods.green.importance import reference_importance, tensor_importance
from tunesmith.methods.green.selection import (
    Selection,
    backward_budget,
    flops_speedup,
    select_grouped,
    selectable,
)
from tunesmith.methods.lora import Lora, LoraOptions, peft_config


@dataclass
class GreenOptions:
    name: str = option(
        "green", "Green Trainer: train the most important tensors within a FLOPs budget."
    )
    rho: float = option(
        0.5,
        "Per-step FLOPs as a fraction of full fine-tuning, forward included (floor about 1/3).",
    )
    select_every: int = option(2, "Re-select the trained tensors every this many epochs or steps.")
    select_unit: Literal["epoch", "step"] = option("epoch", "Unit of select_every.")
    importance_batches: int = option(1, "Micro-batches the importance of each tensor is taken on.")
    quant_levels: int = option(
        1000, "Minimum budget units of the selection DP (raised to 32 per tensor)."
    )
    gradient_at: Literal["start", "updated"] = option(
        "start",
        "Importance gradient at the current weights (one backward) or after the trial update "
        "(two, as the reference code).",
    )
    reference_compatible: bool = option(
        False,
        "Importance as the reference code: two real optimizer steps whose moments and step "
        "counts stay in the optimizer (weights are restored).",
    )
    importance: Literal["taylor", "random", "top"] = option(
        "taylor",
        "taylor: the paper's first-order Taylor importance; random and top are controls at the "
        "same budget: random scores, or the last tensors in execution order, as many as fit.",
    )
    trial_state: Literal["optimizer", "fresh"] = option(
        "optimizer",
        "Trial update of the Taylor importance: the optimizer's next step with its moments (the "
        "paper), or a first Adam step for every tensor (no bias toward never-trained tensors).",
    )
    adapter: Literal["none", "lora"] = option(
        "none",
        "lora: the budget picks which LoRA adapters train (base frozen, LoRA's memory); "
        "none: it picks model tensors.",
    )
    lora_r: int = option(8, "adapter=lora: rank of the adapter matrices.")
    lora_alpha: float = option(16, "adapter=lora: updates are scaled by alpha / r.")
    lora_dropout: float = option(0.05, "adapter=lora: dropout on the adapter's input.")
    lora_target_modules: Any = option(
        "all-linear",
        "adapter=lora: modules that get an adapter (as method.target_modules of lora).",
    )

    def __post_init__(self) -> None:
        if not 0 < self.rho <= 1:
            raise UserError(
                f"method.rho={self.rho} is not a fraction of a full step's FLOPs",
                "use a value in (0, 1]; the floor is about 0.34",
            )
        for key in ("select_every", "importance_batches"):
            if getattr(self, key) < 1:
                raise UserError(f"method.{key}={getattr(self, key)} must be at least 1")
        if self.quant_levels < 10:
            raise UserError(f"method.quant_levels={self.quant_levels} is too coarse", "use 1000")
        if self.lora_r < 1:
            raise UserError(f"method.lora_r={self.lora_r} must be at least 1", "try lora_r: 8")

    def lora_options(self) -> LoraOptions:
        """The LoRA method's options these green options describe (adapter=lora)."""
        return LoraOptions(
            r=self.lora_r,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            target_modules=self.lora_target_modules,
        )


class Green:
    """Adaptive backpropagation (Huang et al., ICLR 2024) with tunesmith's fixes."""

    name = "green"
    Options = GreenOptions
    capabilities = Capabilities(dynamic_trainable=True)
    default_lr = 2e-5

    def __init__(self, options: GreenOptions) -> None:
        self.options = options
        self.base_copy: nn.Module | None = None  # adapter=lora on a base built from a config
        # Parameter names the selection may choose from; None = every parameter.
        self.candidates: set[str] | None = None
        if options.adapter == "lora":  # LoRA's economy: optimizer state and saves are adapters
            self.capabilities = Capabilities(dynamic_trainable=True, adapter_only_save=True)
            self.default_lr = Lora.default_lr
        self.profile: FlopsProfile | None = None
        self.budget = 0.0
        self.mask: tuple[bool, ...] | None = None  # named_parameters() order
        self._mask_in_order: list[bool] = []  # the profile's execution order
        self.selections: list[tuple[int, Selection]] = []  # (step, selection), for reports
        self._epoch_seen: int | None = None
        self._planned_flops = 0.0
        self._full_flops = 0.0
        self._shape: tuple[int, int, int] | None = None  # the profiled (batch, length, decoder)
        self._restore_pending = False

    def state_dict(self) -> dict[str, Any]:
        """What exact resume needs: the mask in force, the profiled shape and the FLOPs tally.

        Without it a resumed run would select again at its first step, mid-interval, and its
        trajectory would leave the uninterrupted one's.
        """
        return {
            "mask": None if self.mask is None else list(self.mask),
            "shape": self._shape,
            "epoch_seen": self._epoch_seen,
            "planned_flops": self._planned_flops,
            "full_flops": self._full_flops,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mask = None if state["mask"] is None else tuple(state["mask"])
        self._shape = None if state["shape"] is None else tuple(state["shape"])
        self._epoch_seen = state["epoch_seen"]
        self._planned_flops, self._full_flops = state["planned_flops"], state["full_flops"]
        self._restore_pending = self.mask is not None

    def apply(self, model: nn.Module, tokenizer: Any) -> nn.Module:
        # Every candidate may train; the first selection runs before the first step.
        if self.options.adapter == "lora":
            config = peft_config(self.options.lora_options(), model)
            model, self.base_copy = peft_common.wrap(model, config)
            self.candidates = {n for n, p in model.named_parameters() if p.requires_grad}
        else:
            for param in model.parameters():
                param.requires_grad_(True)
        stop_forcing_input_grads(model)
        return model

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        return all_param_groups(model, weight_decay, self.candidates)

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        if self.candidates is not None:
            return peft_common.adapter_state(unwrap(model))
        return model.state_dict()  # any tensor may have trained at some point

    def save(
        self, model: nn.Module, tokenizer: Any, out_dir: Path, state_dict: dict[str, torch.Tensor]
    ) -> None:
        if self.candidates is not None:  # a standard PEFT adapter folder, as method lora writes
            peft_common.save_adapter(model, tokenizer, out_dir, state_dict, self.base_copy)
        else:
            save_full_model(model, tokenizer, out_dir, state_dict)

    def on_step(self, ctx: StepContext) -> bool:
        changed = False
        if self._restore_pending:  # resumed: put the saved mask back instead of selecting anew
            inner = unwrap(ctx.model)
            self._profile_at(inner, *self._shape)
            for (_, param), selected in zip(self._named(inner), self.mask, strict=True):
                param.requires_grad_(selected)
            self._mask_in_order = self._in_order(ctx)
            self._restore_pending, changed = False, True
        if self._due(ctx):
            inner = unwrap(ctx.model)
            is_main = ctx.strategy.is_main
            batches = ctx.sample_batches(self.options.importance_batches) if is_main else []
            if self.profile is None:
                self._plan(inner, ctx, batches)
            started = time.perf_counter()
            mask = self._decide(inner, ctx, batches)
            named = self._named(inner)
            changed = mask != tuple(p.requires_grad for _, p in named)
            for (_, param), selected in zip(named, mask, strict=True):
                param.requires_grad_(selected)
            self.mask = mask
            self._mask_in_order = self._in_order(ctx)
            self._log(ctx, time.perf_counter() - started)
        self._account(ctx)
        return changed

    def _account(self, ctx: StepContext) -> None:
        """Planned FLOPs of the step about to run, against full fine-tuning's (§7 accounting)."""
        profile = self.profile
        assert profile is not None and self.mask is not None
        self._planned_flops += profile.t_fp + profile.backward_flops(self._mask_in_order)
        self._full_flops += profile.t_fp + profile.t_bp_full

    def _due(self, ctx: StepContext) -> bool:
        every = self.options.select_every
        if self.options.select_unit == "step":  # mask None: a resumed run selects at once
            return self.mask is None or ctx.step % every == 0
        new_epoch = ctx.epoch != self._epoch_seen
        self._epoch_seen = ctx.epoch
        return self.mask is None or (new_epoch and ctx.epoch % every == 0)

    def _plan(self, model: nn.Module, ctx: StepContext, batches: list[dict]) -> None:
        """Profile the FLOPs at rank 0's batch shape (sent to every rank) and check rho."""
        shape = torch.zeros(3, dtype=torch.int64, device=ctx.strategy.device)
        if batches:
            batch = batches[0]
            shape[0], shape[1] = batch["input_ids"].shape
            if getattr(model.config, "is_encoder_decoder", False):
                shape[2] = batch["labels"].shape[1]
        batch_size, length, decoder_length = (int(v) for v in ctx.strategy.broadcast(shape))
        self._profile_at(model, batch_size, length, decoder_length)
        if not any(selectable(self.profile.t_dw, self.profile.t_dy, self.budget)):
            cheapest = min(
                dw + sum(self.profile.t_dy[k:]) for k, dw in enumerate(self.profile.t_dw)
            )
            full = self.profile.t_fp + self.profile.t_bp_full
            needed = (self.profile.t_fp + cheapest) / full
            raise UserError(
                f"method.rho={self.options.rho:g} leaves no tensor trainable for this model "
                f"(rho_min={self.profile.rho_min:.3f}, the cheapest tensor needs {needed:.3f})",
                f"use method.rho >= {math.ceil(needed * 1000) / 1000:.3f}",  # rounded up
            )
        ctx.log(f"green: {self.profile.describe()}; budget rho={self.options.rho:g}")

    def _profile_at(self, model: nn.Module, batch_size: int, length: int, decoder: int) -> None:
        self._shape = (batch_size, length, decoder)
        self.profile = profile_flops(model, batch_size, length, decoder if decoder else None)
        self.budget = backward_budget(self.options.rho, self.profile)

    def _decide(self, model: nn.Module, ctx: StepContext, batches: list[dict]) -> tuple[bool, ...]:
        """Rank 0 measures importance and runs the DP; every rank receives its mask."""
        profile = self.profile
        assert profile is not None
        n = len(profile.tensors)
        flags = torch.zeros(n, dtype=torch.float32, device=ctx.strategy.device)
        if ctx.strategy.is_main:
            candidates = {
                t.name
                for t, ok in zip(
                    profile.tensors,
                    selectable(profile.t_dw, profile.t_dy, self.budget),
                    strict=True,
                )
                if ok and t.used and (self.candidates is None or t.name in self.candidates)
            }
            importance = self._importance(model, ctx, batches, candidates)
            groups = adapter_groups(profile.names)

            def solve(values: list[float]) -> Selection:
                return select_grouped(
                    values, profile.t_dw, profile.t_dy, self.budget, groups,
                    self.options.quant_levels,
                )  # fmt: skip

            selection = solve([importance.get(name, 0.0) for name in profile.names])
            if not any(selection.mask):  # no positive importance: train the best that fits
                best = max(candidates, key=lambda name: importance.get(name, 0.0))
                selection = solve([1.0 if name == best else 0.0 for name in profile.names])
            self.selections.append((ctx.step, selection))
            flags = torch.tensor(selection.mask, dtype=torch.float32, device=ctx.strategy.device)
        flags = ctx.strategy.broadcast(flags)
        by_name = dict(zip(profile.names, (bool(f) for f in flags.tolist()), strict=True))
        return tuple(by_name[name] for name, _ in self._named(model))

    def _importance(
        self, model: nn.Module, ctx: StepContext, batches: list[dict], candidates: set[str]
    ) -> dict[str, float]:
        names = self.profile.names if self.profile is not None else []
        if self.options.importance == "random":  # control: the same budget, chosen blindly
            generator = torch.Generator().manual_seed(7919 * (ctx.step + 1))
            scores = torch.rand(len(names), generator=generator).tolist()
            return {n: v + 1e-6 for n, v in zip(names, scores, strict=True) if n in candidates}
        if self.options.importance == "top":  # control: the longest suffix of tensors that fits
            profile = self.profile
            for start in range(len(names)):
                mask = [k >= start and n in candidates for k, n in enumerate(names)]
                if any(mask) and profile.backward_flops(mask) <= self.budget:
                    return {n: 1.0 for n, m in zip(names, mask, strict=True) if m}
            return {}
        if self.options.reference_compatible:
            return reference_importance(model, ctx.optimizer, batches[0], ctx.loss_fn, candidates)
        return tensor_importance(
            model,
            ctx.optimizer,
            batches,
            ctx.loss_fn,
            candidates,
            self.options.gradient_at,
            fresh=self.options.trial_state == "fresh",
        )

    def _log(self, ctx: StepContext, seconds: float) -> None:
        profile = self.profile
        assert profile is not None
        mask = self._mask_in_order
        chosen = [t for t, m in zip(profile.tensors, mask, strict=True) if m]
        total = sum(t.numel for t in profile.tensors)
        backward = profile.backward_flops(mask)
        step_share = (profile.t_fp + backward) / (profile.t_fp + profile.t_bp_full)
        line = (
            f"green step {ctx.step} (epoch {ctx.epoch}): {len(chosen)}/{len(mask)} tensors, "
            f"{100 * sum(t.numel for t in chosen) / total:.1f}% of parameters; planned backward "
            f"{100 * backward / profile.t_bp_full:.1f}% of full, step FLOPs "
            f"{100 * step_share:.1f}% of full ({flops_speedup(mask, profile):.2f}x); "
            f"backward stops at {chosen[0].name if chosen else '-'}; took {seconds:.2f}s"
        )
        if self._full_flops:
            saved = 1 - self._planned_flops / self._full_flops
            line += f"; {saved * 100:.1f}% of full fine-tuning FLOPs saved so far"
        ctx.log(line)
        ctx.log("green selected: " + ", ".join(t.name for t in chosen))

    def _in_order(self, ctx: StepContext) -> list[bool]:
        """The current mask in the profile's execution order."""
        assert self.profile is not None and self.mask is not None
        flags = dict(zip((n for n, _ in self._named(unwrap(ctx.model))), self.mask, strict=True))
        return [flags[name] for name in self.profile.names]

    @staticmethod
    def _named(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return list(model.named_parameters())


def adapter_groups(names: list[str]) -> list[list[int]]:
    """Positions (execution order) of the tensors that are selected together.

    A LoRA adapter's A and B matrices form one unit: at the first selection B is zero, so A's
    gradient is zero and A alone would never look important, while B without A trains a fixed
    random projection. PEFT runs B right after A, so the pair is consecutive and costs exactly
    the sum of its two tensors. Every other tensor is its own unit.
    """
    groups: list[list[int]] = []
    k = 0
    while k < len(names):
        partner = names[k].replace(".lora_A.", ".lora_B.")
        if ".lora_A." in names[k] and k + 1 < len(names) and names[k + 1] == partner:
            groups.append([k, k + 1])
            k += 2
        else:
            groups.append([k])
            k += 1
    return groups


def stop_forcing_input_grads(model: nn.Module) -> None:
    """Remove the hook that makes the input embeddings' output require grad.

    transformers (5.x) installs it whenever activation checkpointing is enabled on a text model,
    reentrant or not. It makes backward run down to the embeddings whatever is trainable, which
    is the whole saving of Green Trainer (spec §7). Only reentrant checkpoints need it, so it is
    kept when a checkpointed layer uses them.
    """
    if not getattr(model, "_require_grads_hooks", None):
        return
    for module in model.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        checkpointed = getattr(module, "gradient_checkpointing", False) and func is not None
        if checkpointed and getattr(func, "keywords", {}).get("use_reentrant", True):
            return
    model.disable_input_require_grads()
