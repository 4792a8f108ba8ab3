"""Odds Ratio Preference Optimization (ORPO, Hong et al. 2024): supervised loss plus a preference
term, with no reference model.

loss = NLL(chosen) - lambda * mean over pairs of log sigmoid(log odds(y_w) - log odds(y_l)), where
odds(y) = p / (1 - p) of the per-token average log-prob p. As in TRL's ORPOTrainer, the NLL covers
the chosen row's prompt and response (`nll_on_prompt`), and is a mean over those tokens; here it is
normalised by the chosen tokens of the whole optimizer step (all micro-batches and ranks) and the
odds term by the step's pairs, so accumulation and world size do not change the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.config import option
from tunesmith.data.tokenize import IGNORE
from tunesmith.objectives.base import Metrics, Reference, Sums, pair_count, pair_mask, pair_metrics
from tunesmith.objectives.logps import row_sums, shifted, token_logps


@dataclass
class OrpoOptions:
    name: str = option("orpo", "ORPO: supervised loss plus an odds-ratio preference term.")
    lambda_: float = field(
        default=0.1, metadata={"help": "Weight of the odds-ratio term (ORPO's lambda, TRL's beta)."}
    )
    nll_on_prompt: bool = option(
        True, "The supervised term also scores the prompt tokens (TRL's choice); false: response."
    )


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2."""
    return torch.where(
        x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x))
    )


class Orpo:
    name = "orpo"
    Options = OrpoOptions
    data_kind = "pairs"
    needs_reference = False
    head = "lm"
    loss_is_nll = False

    def __init__(self, options: Any = None) -> None:
        self.options = options or OrpoOptions()

    def _nll_labels(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.options.nll_on_prompt:
            return shifted(batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE))
        return shifted(batch["labels"])

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, int]:
        chosen = self._nll_labels(batch)[: pair_count(batch)]
        return {"tokens": int((chosen != IGNORE).sum()), "pairs": pair_count(batch)}

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], reference: Reference | None
    ) -> tuple[Sums, Metrics]:
        n = pair_count(batch)
        response = shifted(batch["labels"])
        nll_labels = self._nll_labels(batch)
        nll_labels[n:] = IGNORE  # only chosen rows are supervised
        # One forward over every position either term scores.
        scored = torch.where(response != IGNORE, response, nll_labels)
        values, mask = token_logps(model, batch, scored)
        in_response = (response != IGNORE)[mask]
        in_nll = (nll_labels != IGNORE)[mask]
        sums = row_sums(values * in_response, mask)
        lengths = (response != IGNORE).sum(dim=1).clamp(min=1)
        avg = sums / lengths.to(sums.dtype)
        chosen, rejected = avg.chunk(2)
        log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
        odds_term = F.logsigmoid(log_odds)
        lam = self.options.lambda_
        valid = pair_mask(batch)
        metrics = pair_metrics(valid, lam * chosen, lam * rejected, chosen, rejected)
        metrics["log_odds_ratio"] = (
            (odds_term.detach().double() * valid).sum(),
            metrics["reward_chosen"][1],
        )
        nll_sum = -(values * in_nll).sum()
        return {"tokens": nll_sum, "pairs": -lam * (odds_term * valid).sum()}, metrics
