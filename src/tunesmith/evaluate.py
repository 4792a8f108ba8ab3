"""Validation: token-weighted loss and perplexity, reduced over ranks."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from tunesmith.data.loader import DataBundle
from tunesmith.train.loss import token_loss


@torch.no_grad()
def validation_metrics(
    model: nn.Module, data: DataBundle, strategy: Any, batch_size: int, max_batches: int | None
) -> dict[str, float]:
    """`val_loss` (mean nats per target token over the whole set) and `val_ppl`; {} if no data.

    Every rank evaluates its strided share; sums are reduced, so the result does not depend on the
    number of processes or the batch size.
    """
    if not data.validation:
        return {}
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=strategy.device)
    for batch in data.eval_batches(batch_size, strategy.rank, strategy.world_size, max_batches):
        batch = {k: v.to(strategy.device) for k, v in batch.items()}
        with strategy.micro_batch(is_last=True):
            loss_sum, tokens = token_loss(model, batch)
        totals += torch.stack([loss_sum.double(), tokens.double()])
    totals = strategy.reduce_sum(totals)
    model.train(was_training)
    loss = (totals[0] / totals[1].clamp(min=1)).item()
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
