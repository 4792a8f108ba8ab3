"""Per-token and per-row log-probs of a causal LM, the quantity every preference loss is built on.

The LM head runs on the scored positions only (`head_on_positions`, shared with the token loss):
preference batches hold two rows per pair and most of each row is prompt, so projecting only the
response positions saves most of the head's matmul over a large vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.data.tokenize import IGNORE
from tunesmith.train.loss import head_on_positions


def shifted(labels: torch.Tensor) -> torch.Tensor:
    """Labels moved left by one: position t scores token t + 1 (the last position scores none)."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE)


def token_logps(
    model: nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the tokens `labels` (already shifted) names, flattened in row-major order, and
    the (rows, positions) mask of where they sit. Computed in fp32 or wider."""
    targets = labels != IGNORE
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with head_on_positions(model, targets) as gathered:
        logits = model(**inputs, use_cache=False).logits
    if not (gathered() and logits.dim() == 2):
        if logits.shape[1] > labels.shape[1]:  # prompt tuning's virtual tokens come first
            logits = logits[:, logits.shape[1] - labels.shape[1] :]
        logits = logits[targets]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return -F.cross_entropy(logits, labels[targets], reduction="none"), targets


def row_sums(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum flat per-token `values` (ordered like `mask`'s True entries) back into one per row."""
    rows = mask.nonzero()[:, 0]
    out = torch.zeros(mask.shape[0], dtype=values.dtype, device=values.device)
    return out.index_add(0, rows, values)


def response_logps(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob of each row's response tokens, response tokens per row)."""
    labels = shifted(batch["labels"])
    values, mask = token_logps(model, batch, labels)
    return row_sums(values, mask), mask.sum(dim=1)
