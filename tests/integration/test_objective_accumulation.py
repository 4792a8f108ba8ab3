"""Preference objectives: 4 micro-batches of 2 pairs equal 1 batch of 8 (loss and gradients),
because every loss sum is normalised by its unit's count over the whole optimizer step (pairs;
ORPO's supervised term by the step's chosen tokens), not per micro-batch."""

from __future__ import annotations

import pytest
import torch
from test_objectives_trl import encoded_pairs, pair_records

from conftest import build_tiny_model
from tunesmith.config import TrainConfig
from tunesmith.data.loader import collate
from tunesmith.objectives import OBJECTIVES
from tunesmith.objectives.reference import FrozenCopy
from tunesmith.strategies.single import Single, SingleOptions
from tunesmith.train.loop import forward_backward


@pytest.mark.parametrize("name", ["dpo", "orpo", "simpo"])
def test_four_micro_batches_of_two_pairs_equal_one_batch_of_eight(tokenizer, name):
    pairs = encoded_pairs(tokenizer, pair_records(8))
    pad = tokenizer.pad_token_id
    strategy = Single(SingleOptions(device="cpu"), TrainConfig())
    big = [collate(pairs, pad, False)]
    small = [collate(pairs[i : i + 2], pad, False) for i in range(0, 8, 2)]
    objective = OBJECTIVES[name]()
    reference = FrozenCopy(build_tiny_model("llama", seed=0).double())

    grads, losses = [], []
    for batches in (big, small):
        model = build_tiny_model("llama", seed=1).double().eval()
        totals = forward_backward(model, batches, strategy, objective, reference)
        losses.append((totals.sums / totals.counts).sum())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    assert torch.allclose(losses[0], losses[1], rtol=1e-10)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-9, atol=1e-12)
