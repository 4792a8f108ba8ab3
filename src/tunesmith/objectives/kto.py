"""Kahneman-Tversky Optimization (KTO, Ethayarajh et al. 2024) on unpaired {prompt, completion,
label} examples.

With r = log pi(y|x) - log ref(y|x) and a KL estimate z, desirable examples lose
w_d (1 - sigmoid(beta (r - z))) and undesirable ones w_u (1 - sigmoid(beta (z - r))); the loss is
the mean over examples. As in TRL's KTOTrainer, z is estimated on mismatched pairs made by rotating
the completions of each micro-batch by one ((x_i, y_(i-1))): the mean of their policy-minus-reference
log-ratio, clamped at 0 and not differentiated. That estimate depends on the micro-batch, so KTO's
gradient does not stay exactly equal across accumulation or world sizes (TRL's neither).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tunesmith.config import option
from tunesmith.objectives.base import Metrics, Reference, Sums, scored_rows
from tunesmith.objectives.logps import response_logps


@dataclass
class KtoOptions:
    name: str = option("kto", "KTO on unpaired examples labelled desirable or undesirable.")
    beta: float = option(0.1, "Strength of the pull towards the reference.")
    desirable_weight: float = option(1.0, "Weight of the desirable examples' losses.")
    undesirable_weight: float = option(1.0, "Weight of the undesirable examples' losses.")


def kl_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch's mismatched (prompt, completion) rows that the collator built for the KL term."""
    return {
        "input_ids": batch["kl_input_ids"],
        "attention_mask": batch["kl_attention_mask"],
        "labels": batch["kl_labels"],
        **({"ref_logps": batch["ref_kl_logps"]} if "ref_kl_logps" in batch else {}),
    }


class Kto:
    name = "kto"
    Options = KtoOptions
    data_kind = "unpaired"
    needs_reference = True
    head = "lm"
    loss_is_nll = False

    def __init__(self, options: Any = None) -> None:
        self.options = options or KtoOptions()

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, int]:
        return {"examples": int(scored_rows(batch).sum())}

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], reference: Reference | None
    ) -> tuple[Sums, Metrics]:
        o = self.options
        assert reference is not None, "KTO needs a reference"
        mismatched = kl_batch(batch)
        with torch.no_grad():
            kl_logps, _ = response_logps(model, mismatched)
        kl_ref = reference.logps(model, mismatched)
        kl = (kl_logps - kl_ref.to(kl_logps.dtype)).mean().clamp(min=0).detach()
        logps, _ = response_logps(model, batch)
        ratios = logps - reference.logps(model, batch).to(logps.dtype)
        valid = scored_rows(batch)
        desirable = batch["desirable"].bool()
        chosen_losses = 1 - torch.sigmoid(o.beta * (ratios - kl))
        rejected_losses = 1 - torch.sigmoid(o.beta * (kl - ratios))
        losses = torch.where(
            desirable, o.desirable_weight * chosen_losses, o.undesirable_weight * rejected_losses
        )
        rewards = (o.beta * ratios).detach().double()
        d = (desirable & valid).double()
        u = (~desirable & valid).double()
        n = torch.tensor(1.0, dtype=torch.float64, device=logps.device)
        metrics: Metrics = {
            "reward_chosen": ((rewards * d).sum(), d.sum()),
            "reward_rejected": ((rewards * u).sum(), u.sum()),
            "logps_chosen": ((logps.detach().double() * d).sum(), d.sum()),
            "logps_rejected": ((logps.detach().double() * u).sum(), u.sum()),
            "kl": (kl.double(), n),
        }
        return {"examples": (losses * valid).sum()}, metrics
