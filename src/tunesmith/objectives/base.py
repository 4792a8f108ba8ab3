"""The objective interface: a batch in, a loss sum (per normalising unit) and its metrics out.

An objective is the third axis beside the method and the strategy (ARCHITECTURE.md section 3). The
loop calls it where it would call the token loss, normalises each loss sum by the count of its unit
over the whole optimizer step on every rank (target tokens, preference pairs, examples), and never
asks which objective runs. Objectives do not inherit from one another; shared code is the free
functions here and in `logps.py`.

Loss contract: `loss(model, batch, reference)` returns `({unit: loss sum}, {metric: (sum, count)})`.
`counts(batch)` gives the host-side number of each unit in the batch, so the loop can reduce them
across micro-batches and ranks before the first backward. Summed over a step, sum / global count is
the mean loss of one big batch, whatever the accumulation or world size.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import nn

from tunesmith.data.tokenize import IGNORE

Sums = dict[str, torch.Tensor]
Metrics = dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (sum, count), both detached

# What a batch of an objective holds: tokens (supervised rows), pairs (chosen rows then rejected
# rows), unpaired (KTO: rows with a desirable flag).
DataKind = Literal["tokens", "pairs", "unpaired"]


class Reference(Protocol):
    """Log-probs of the reference policy (adapters disabled, a frozen copy, or a cache)."""

    def logps(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed response log-probs of every row of `batch` under the reference (no grad).

        `model` is the policy as the loop calls it (the adapter-disabled reference runs it)."""


class Objective(Protocol):
    """One training objective. Instances are built from the objective's own options dataclass."""

    name: ClassVar[str]
    Options: ClassVar[type]
    data_kind: ClassVar[DataKind]
    needs_reference: ClassVar[bool]  # DPO, KTO: log-ratios against a reference policy
    head: ClassVar[str]  # "lm" (causal LM) or "score" (a scalar head: reward models)
    loss_is_nll: ClassVar[bool]  # the loss is nats per token, so a perplexity means something

    def __init__(self, options: Any) -> None: ...

    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, int]:
        """How many of each normalising unit the batch holds (host-side, before the forward)."""

    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], reference: Reference | None
    ) -> tuple[Sums, Metrics]:
        """Loss sums keyed by unit and metrics as (sum, count), for one micro-batch."""


def pair_metrics(
    valid: torch.Tensor,
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    chosen_logps: torch.Tensor | None = None,
    rejected_logps: torch.Tensor | None = None,
) -> Metrics:
    """The preference metrics every pairwise objective logs, as (sum, count) over the real pairs
    (`valid`): rewards of both sides, their margin, the share of pairs ranked right, log-probs."""
    w = valid.double()
    n = w.sum()
    c, r = chosen_rewards.detach().double(), rejected_rewards.detach().double()
    out = {
        "reward_chosen": ((c * w).sum(), n),
        "reward_rejected": ((r * w).sum(), n),
        "reward_margin": (((c - r) * w).sum(), n),
        "reward_accuracy": (((c > r).double() * w).sum(), n),
    }
    if chosen_logps is not None and rejected_logps is not None:
        out["logps_chosen"] = ((chosen_logps.detach().double() * w).sum(), n)
        out["logps_rejected"] = ((rejected_logps.detach().double() * w).sum(), n)
    return out


def scored_rows(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(rows,) True where a row has a response to score. Validation tops a short rank's share up
    with a copy whose labels are all ignored; such rows add no loss, no count and no metric."""
    return (batch["labels"] != IGNORE).any(dim=1)


def pair_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(pairs,) True for the real pairs of a batch of chosen rows followed by rejected rows."""
    return scored_rows(batch)[: batch["input_ids"].shape[0] // 2]


def pair_count(batch: dict[str, torch.Tensor]) -> int:
    """Real pairs in a batch of chosen rows followed by rejected rows."""
    return int(pair_mask(batch).sum())
