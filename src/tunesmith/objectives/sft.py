"""Supervised fine-tuning: summed token cross-entropy, normalised by the step's target tokens.

The default objective; exactly the loss the loop computed before objectives existed
(`train/loss.py`), so every supervised recipe trains as it did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tunesmith.config import option
from tunesmith.data.tokenize import IGNORE
from tunesmith.objectives.base import Metrics, Reference, Sums
from tunesmith.train.loss import token_loss


@dataclass
class SftOptions:
    name: str = option("sft", "Supervised: next-token cross-entropy on the answer tokens.")


class Sft:
    name = "sft"
    Options = SftOptions
    data_kind = "tokens"
    needs_reference = False
    head = "lm"
    loss_is_nll = True

    def __init__(self, options: Any = None) -> None:
        self.options = options or SftOptions()
        self.token_loss = token_loss

    def use_token_loss(self, loss_fn: Any) -> None:
        """Compute with the run's configured token loss (chunked or fused, train.loss_*)."""
        self.token_loss = loss_fn

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, int]:
        """Target tokens (labels shifted for decoder-only rows; as they are for seq2seq)."""
        labels = batch["labels"] if "decoder_attention_mask" in batch else batch["labels"][:, 1:]
        return {"tokens": int((labels != IGNORE).sum())}

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], reference: Reference | None
    ) -> tuple[Sums, Metrics]:
        loss_sum, _ = self.token_loss(model, batch)
        return {"tokens": loss_sum}, {}
