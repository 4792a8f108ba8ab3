"""Simple Preference Optimization (SimPO, Meng et al. 2024): a reference-free margin loss on the
length-normalised log-probs.

loss = -log sigmoid(beta (avg log pi(y_w|x) - avg log pi(y_l|x)) - gamma) per pair (with optional
label smoothing), as TRL's CPOTrainer computes it with loss_type="simpo" and cpo_alpha=0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.config import option
from tunesmith.objectives.base import Metrics, Reference, Sums, pair_count, pair_mask, pair_metrics
from tunesmith.objectives.logps import response_logps


@dataclass
class SimpoOptions:
    name: str = option("simpo", "SimPO: reference-free margin on per-token average log-probs.")
    beta: float = option(2.0, "Scale of the reward (the paper uses 2.0 - 2.5).")
    gamma: float = option(0.5, "Target reward margin between chosen and rejected.")
    label_smoothing: float = option(0.0, "Assumed share of flipped preference labels (cDPO).")


class Simpo:
    name = "simpo"
    Options = SimpoOptions
    data_kind = "pairs"
    needs_reference = False
    head = "lm"
    loss_is_nll = False

    def __init__(self, options: Any = None) -> None:
        self.options = options or SimpoOptions()

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, int]:
        return {"pairs": pair_count(batch)}

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], reference: Reference | None
    ) -> tuple[Sums, Metrics]:
        o = self.options
        sums, lengths = response_logps(model, batch)
        avg = sums / lengths.clamp(min=1).to(sums.dtype)
        chosen, rejected = avg.chunk(2)
        z = o.beta * (chosen - rejected - o.gamma / o.beta)
        e = o.label_smoothing
        per_pair = -F.logsigmoid(z) * (1 - e) - F.logsigmoid(-z) * e
        valid = pair_mask(batch)
        metrics = pair_metrics(valid, o.beta * chosen, o.beta * rejected, chosen, rejected)
        return {"pairs": (per_pair * valid).sum()}, metrics
