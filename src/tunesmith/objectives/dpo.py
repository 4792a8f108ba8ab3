"""Direct Preference Optimization (DPO) and its IPO, hinge and robust variants.

    tunesmith train configs/dpo.yaml

With log-ratios against the reference, h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) -
log ref(y_l|x)), the per-pair losses are (as in TRL's DPOTrainer, which the tests compare with):
sigmoid -log sigmoid(beta h) (Rafailov et al. 2023); hinge relu(1 - beta h); ipo
(h_avg - 1 / (2 beta))^2 with the log-ratios averaged per response token (Azar et al. 2023, as the
IPO authors normalise); robust ((1 - e) -log sigmoid(beta h) + e log sigmoid(-beta h)) / (1 - 2e)
with e = label_smoothing (Chowdhury et al. 2024). Rewards are beta times the log-ratios.

`sft_weight` w adds w times the mean NLL of the chosen responses' tokens (TRL's
`loss_type=[..., "sft"]` with `loss_weights`; RPO, Pang et al. 2024). Plain DPO only asks the
chosen to gain on the rejected *relative to the reference*: when the two differ by a few words (an
edit and its source) both can lose likelihood while the margin grows, and greedy decoding drifts
to text neither side holds. The supervised term keeps the chosen likely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.config import option
from tunesmith.data.tokenize import IGNORE
from tunesmith.errors import UserError
from tunesmith.objectives.base import Metrics, Reference, Sums, pair_count, pair_mask, pair_metrics
from tunesmith.objectives.logps import response_logps, shifted


@dataclass
class DpoOptions:
    name: str = option("dpo", "Direct Preference Optimization on {prompt, chosen, rejected} pairs.")
    beta: float = option(0.1, "Strength of the pull towards the reference (KL weight).")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = option(
        "sigmoid", "sigmoid (DPO), ipo, hinge (SLiC) or robust (rDPO, uses label_smoothing)."
    )
    label_smoothing: float = option(0.0, "robust: assumed share of flipped preference labels.")
    sft_weight: float = option(
        0.0,
        "Add this weight times the supervised loss (mean NLL per chosen token), as TRL's "
        "loss_type [..., sft]: keeps the chosen likely when chosen and rejected are near-copies.",
    )
    precompute_reference: bool = option(
        False,
        "Compute the reference log-probs in one pass before training and cache them with the "
        "tokenised data, so training holds one model (needed for full/freeze on fsdp/deepspeed).",
    )

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise UserError(f"objective.beta={self.beta} must be positive", "e.g. 0.1")
        if not 0 <= self.label_smoothing < 0.5:
            raise UserError(
                f"objective.label_smoothing={self.label_smoothing} must be in [0, 0.5)", "e.g. 0.1"
            )
        if self.label_smoothing and self.loss_type != "robust":
            raise UserError(
                f"objective.label_smoothing is used by loss_type=robust, not {self.loss_type}",
                "set objective.loss_type=robust",
            )
        if self.sft_weight < 0:
            raise UserError(f"objective.sft_weight={self.sft_weight} must be 0 or more", "e.g. 1.0")


class Dpo:
    name = "dpo"
    Options = DpoOptions
    data_kind = "pairs"
    needs_reference = True
    head = "lm"
    loss_is_nll = False

    def __init__(self, options: Any = None) -> None:
        self.options = options or DpoOptions()

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, int]:
        n = pair_count(batch)
        if not self.options.sft_weight:
            return {"pairs": n}
        return {"pairs": n, "tokens": int((shifted(batch["labels"])[:n] != IGNORE).sum())}

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], reference: Reference | None
    ) -> tuple[Sums, Metrics]:
        o = self.options
        logps, lengths = response_logps(model, batch)
        assert reference is not None, "DPO needs a reference"
        ratios = logps - reference.logps(model, batch).to(logps.dtype)
        chosen, rejected = ratios.chunk(2)
        h = chosen - rejected
        if o.loss_type == "sigmoid":
            per_pair = -F.logsigmoid(o.beta * h)
        elif o.loss_type == "hinge":
            per_pair = torch.relu(1 - o.beta * h)
        elif o.loss_type == "ipo":
            n_chosen, n_rejected = lengths.clamp(min=1).to(ratios.dtype).chunk(2)
            per_pair = (chosen / n_chosen - rejected / n_rejected - 1 / (2 * o.beta)) ** 2
        else:
            e = o.label_smoothing
            per_pair = (-(1 - e) * F.logsigmoid(o.beta * h) + e * F.logsigmoid(-o.beta * h)) / (
                1 - 2 * e
            )
        valid = pair_mask(batch)
        chosen_logps, rejected_logps = logps.chunk(2)
        metrics = pair_metrics(
            valid, o.beta * chosen, o.beta * rejected, chosen_logps, rejected_logps
        )
        sums = {"pairs": (per_pair * valid).sum()}
        if o.sft_weight:
            sums["tokens"] = -o.sft_weight * (chosen_logps * valid).sum()
        return sums, metrics
