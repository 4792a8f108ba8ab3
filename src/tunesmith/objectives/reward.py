"""Reward modelling: a Bradley-Terry loss on a scalar head over {prompt, chosen, rejected} pairs.

The model is loaded with a one-output sequence-classification head (`AutoModelForSequenceClassification`,
num_labels=1), which scores each row at its last non-padding token; the loss per pair is
-log sigmoid(r(x, y_w) - r(x, y_l)) (+ center_rewards_coefficient (r_w + r_l)^2, Eisenstein et al.
2023), as TRL's RewardTrainer computes it. `final/` loads with
`AutoModelForSequenceClassification.from_pretrained`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.config import option
from tunesmith.objectives.base import Metrics, Reference, Sums, pair_count, pair_mask, pair_metrics


@dataclass
class RewardOptions:
    name: str = option("reward", "Reward model: Bradley-Terry loss on a scalar head.")
    center_rewards_coefficient: float | None = option(
        None, "Pull rewards towards zero mean with this weight on (r_chosen + r_rejected)^2."
    )


class Reward:
    name = "reward"
    Options = RewardOptions
    data_kind = "pairs"
    needs_reference = False
    head = "score"
    loss_is_nll = False

    def __init__(self, options: Any = None) -> None:
        self.options = options or RewardOptions()

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, int]:
        return {"pairs": pair_count(batch)}

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], reference: Reference | None
    ) -> tuple[Sums, Metrics]:
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        )
        rewards = out.logits.squeeze(-1).float()
        chosen, rejected = rewards.chunk(2)
        per_pair = -F.logsigmoid(chosen - rejected)
        if self.options.center_rewards_coefficient is not None:
            per_pair = per_pair + self.options.center_rewards_coefficient * (chosen + rejected) ** 2
        valid = pair_mask(batch)
        return {"pairs": (per_pair * valid).sum()}, pair_metrics(valid, chosen, rejected)
