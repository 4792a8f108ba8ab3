"""Optimizers and learning-rate schedules, by name."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from tunesmith.config import TrainConfig
from tunesmith.errors import UserError


def build_adamw(groups: list[dict[str, Any]], cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """torch AdamW, fused into one kernel where every parameter allows it.

    The fused kernel made the optimizer step 5.9x cheaper than the default (foreach) on a 33M
    model on CPU (bench/README.md); it needs plain floating-point tensors on CPU or CUDA, so
    sharded DTensor parameters (FSDP2) keep the foreach implementation.
    """
    params = [p for group in groups for p in group["params"]]
    fused = all(
        type(p.data) is torch.Tensor and p.is_floating_point() and p.device.type in ("cpu", "cuda")
        for p in params
    )
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)


def build_adamw_8bit(
    groups: list[dict[str, Any]], cfg: TrainConfig, lr: float
) -> torch.optim.Optimizer:
    """bitsandbytes' 8-bit AdamW: block-quantized moments, 2 bytes of state per parameter."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise UserError(
            "train.optimizer=adamw_8bit needs bitsandbytes", "pip install 'tunesmith[quant]'"
        ) from None
    return bnb.optim.AdamW8bit(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps)


def build_bf16_adamw(rounding: str) -> Callable[..., torch.optim.Optimizer]:
    """AdamW whose updates survive bf16 weights (train/bf16_adamw.py), by rounding remedy."""

    def build(groups: list[dict[str, Any]], cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
        from tunesmith.train.bf16_adamw import BF16AdamW

        return BF16AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, rounding=rounding)

    return build


OPTIMIZERS: dict[
    str, Callable[[list[dict[str, Any]], TrainConfig, float], torch.optim.Optimizer]
] = {
    "adamw": build_adamw,
    "adamw_8bit": build_adamw_8bit,
    "adamw_kahan": build_bf16_adamw("kahan"),
    "anyprecision": build_bf16_adamw("kahan"),  # seed 002's name for the same remedy
    "adamw_stochastic": build_bf16_adamw("stochastic"),
}


def build_optimizer(
    groups: list[dict[str, Any]], cfg: TrainConfig, lr: float
) -> torch.optim.Optimizer:
    """The optimizer `train.optimizer` names, over the method's parameter groups."""
    if cfg.optimizer not in OPTIMIZERS:
        raise UserError(
            f"train.optimizer={cfg.optimizer!r} is not known",
            f"choose one of {', '.join(sorted(OPTIMIZERS))}",
        )
    if not any(g["params"] for g in groups):
        raise UserError("no trainable parameters", "check the method's options")
    return OPTIMIZERS[cfg.optimizer](groups, cfg, lr)


def lr_multiplier(
    cfg: TrainConfig, total_steps: int, steps_per_epoch: int
) -> Callable[[int], float]:
    """Multiplier of the peak lr at each step: linear warmup, then the chosen decay."""
    warmup = cfg.warmup_steps
    floor = cfg.min_lr_ratio

    def at(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.lr_schedule == "constant":
            return 1.0
        if cfg.lr_schedule == "step":
            return cfg.gamma ** (step // max(steps_per_epoch, 1))
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        if cfg.lr_schedule == "linear":
            return floor + (1 - floor) * (1 - progress)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return at


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(cfg, total_steps, steps_per_epoch)
    )
