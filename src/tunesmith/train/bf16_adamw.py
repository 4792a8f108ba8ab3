"""AdamW that keeps learning on bf16 weights: Kahan-compensated or stochastically rounded updates.

    tunesmith train cfg.yaml train.precision=bf16-pure train.optimizer=adamw_kahan

With pure-bf16 weights (no fp32 master copy) an update smaller than half a bf16 step of the
weight rounds away: bf16 has 8 significant bits, so at lr 1e-5 a weight of 0.02 (step 1.2e-4)
never changes and plain AdamW silently stops learning. Two remedies, both exact in expectation:

- Kahan summation (seed 002's `anyprecision` optimizer): a bf16 buffer per weight keeps what
  the rounding lost and adds it back into the next update (2 extra bytes per parameter).
- Stochastic rounding: round up or down at random with the probabilities that make the rounded
  weight equal the exact one on average (no extra memory).

Moments are kept in fp32. Parameters that are not bf16 get the ordinary AdamW update.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch


class BF16AdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) whose bf16 parameter updates do not round away."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        rounding: Literal["kahan", "stochastic"] = "kahan",
    ) -> None:
        if rounding not in ("kahan", "stochastic"):
            raise ValueError(f"rounding must be kahan or stochastic, not {rounding!r}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.rounding = rounding

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                    if p.dtype == torch.bfloat16 and self.rounding == "kahan":
                        state["compensation"] = torch.zeros_like(p)
                state["step"] += 1
                step = float(state["step"])
                grad = p.grad.float()
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
                update = (state["exp_avg"] / (1 - beta1**step)).div_(denom).mul_(-group["lr"])
                weight = p.float()
                if group["weight_decay"]:
                    update.add_(weight, alpha=-group["lr"] * group["weight_decay"])
                if p.dtype != torch.bfloat16:
                    p.add_(update.to(p.dtype))
                elif self.rounding == "kahan":
                    comp = state["compensation"]
                    wanted = update.add_(comp.float())  # this step's update + what was lost
                    p.copy_(weight + wanted)
                    comp.copy_(wanted - (p.float() - weight))
                else:
                    p.copy_(stochastic_round_bf16(weight + update))
        return loss


def stochastic_round_bf16(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 to bf16 up or down at random, unbiased: E[result] == x.

    bf16 is the top 16 bits of fp32; adding uniform random low bits before truncating rounds
    up with probability equal to the discarded fraction.
    """
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint_like(bits, 0, 1 << 16)
    rounded = (bits + noise) & -65536  # clear the low 16 bits (0xFFFF0000 as int32)
    return rounded.view(torch.float32).to(torch.bfloat16)


def memory_bytes_per_parameter(rounding: str) -> int:
    """Optimizer-state bytes per bf16 parameter (fp32 moments, plus Kahan's bf16 buffer)."""
    return 8 + (2 if rounding == "kahan" else 0)
