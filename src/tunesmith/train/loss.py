"""The loss the loop, evaluation and Green Trainer share: summed token cross-entropy.

It returns the *sum* over target tokens and the token count, so the caller can normalise by the
target tokens of a whole optimizer step across micro-batches and ranks. A per-micro-batch mean
would weight short answers more than long ones and make accumulation differ from a big batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.data.tokenize import IGNORE
from tunesmith.methods.base import unwrap


def token_loss(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token losses, number of target tokens) of one batch, computed in fp32 or wider."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    inner = unwrap(model)
    encoder_decoder = getattr(inner.config, "is_encoder_decoder", False)
    if encoder_decoder:
        base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
        inputs["decoder_input_ids"] = base.prepare_decoder_input_ids_from_labels(
            labels=labels.clamp(min=0)
        )
    logits = model(**inputs, use_cache=False).logits
    if logits.shape[1] > labels.shape[1]:
        # Prompt tuning prepends virtual-token positions to the output; they carry no target.
        logits = logits[:, logits.shape[1] - labels.shape[1] :]
    if not encoder_decoder:
        # Shift the labels left rather than slicing the logits: a slice of the (large) logits
        # would be copied to reshape it, and its gradient zero-filled, every step.
        labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # cross-entropy over a large vocabulary needs fp32 accumulation
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return loss_sum, (labels != IGNORE).sum()
