"""What would fit when a recipe does not: the same run planned with one change at a time.

    tunesmith plan cfg.yaml --device l4-24gb     # ends with "What would fit" when it does not

Each candidate is a change a user can make with an override (activation checkpointing, a smaller
micro-batch with more accumulation, an adapter method, a 4-bit base, bf16 weights, sharding over
more processes); it is planned with the same arithmetic as the recipe (estimate/memory.py) and
kept when it fits with the planner's 15% headroom. Cheapest changes come first, so the first line
is the least disruptive one that works.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from tunesmith.estimate.memory import GIB, Plan, plan

PROCESS_COUNTS = (2, 4, 8, 16, 32, 64)


@dataclass
class Suggestion:
    """One change (as overrides, with the process count it needs) and its plan."""

    overrides: list[str]
    world: int
    plan: Plan

    def describe(self) -> str:
        return f"{' '.join(self.overrides)}: {self.plan.total / GIB:.2f} GiB per device"


def _method(cfg: Any, name: str, **options: Any) -> None:
    from tunesmith.methods import METHODS

    cfg.method = METHODS[name].Options(**options)


def _strategy(cfg: Any, name: str, **options: Any) -> None:
    from tunesmith.strategies import STRATEGIES

    cfg.strategy = STRATEGIES[name].Options(**options)


def _candidates(cfg: Any) -> list[tuple[list[str], Callable[[Any], None]]]:
    """Single changes, least disruptive first (only those that change something)."""
    t, out = cfg.train, []
    if not t.activation_checkpointing:
        out.append(
            (
                ["train.activation_checkpointing=true"],
                lambda c: setattr(c.train, "activation_checkpointing", True),
            )
        )
    batch = t.batch_size
    while batch > 1:
        batch //= 2
        accum = (t.grad_accum or 1) * t.batch_size // batch
        out.append(
            (
                [f"train.batch_size={batch}", f"train.grad_accum={accum}"],
                lambda c, b=batch, a=accum: (
                    setattr(c.train, "batch_size", b),
                    setattr(c.train, "grad_accum", a),
                ),
            )
        )
    if t.precision == "fp32":
        out.append(
            (
                ["train.precision=bf16-pure", "train.optimizer=adamw_kahan"],
                lambda c: (
                    setattr(c.train, "precision", "bf16-pure"),
                    setattr(c.train, "optimizer", "adamw_kahan"),
                ),
            )
        )
    if cfg.method.name != "lora":
        out.append((["method.name=lora"], lambda c: _method(c, "lora")))
    if cfg.model.quantization == "none":
        out.append(
            (
                ["method.name=lora", "model.quantization=nf4"],
                lambda c: (
                    _method(c, "lora"),
                    setattr(c, "model", replace(c.model, quantization="nf4")),
                ),
            )
        )
    return out


def what_would_fit(
    cfg: Any, device: str, world: int, seq_len: int, limit: int = 5
) -> list[Suggestion]:
    """Up to `limit` single changes (or a sharded run over more processes) that fit `device`."""
    out: list[Suggestion] = []
    for overrides, change in _candidates(cfg):
        variant = copy.deepcopy(cfg)
        change(variant)
        try:
            p = plan(variant, device=device, world=world, seq_len=seq_len)
        except Exception:  # a method that cannot apply to this model is no suggestion
            continue
        if p.fits:
            out.append(Suggestion(overrides, world, p))
    sharded = copy.deepcopy(cfg)
    if cfg.strategy.name not in ("fsdp", "deepspeed"):
        _strategy(sharded, "fsdp")
    for n in (k for k in PROCESS_COUNTS if k > world):
        p = plan(sharded, device=device, world=n, seq_len=seq_len)
        if p.fits:
            name = sharded.strategy.name
            out.append(Suggestion([f"strategy.name={name}", f"--nproc-per-node {n}"], n, p))
            break
    return out[:limit]
