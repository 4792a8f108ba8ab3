"""Gradient accumulation equals one big batch, because the loss is normalised per target token
of the whole optimizer step (a per-micro-batch mean would weight short answers more)."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import build_tiny_model
from tunesmith.config import TrainConfig
from tunesmith.data.formats import input_output
from tunesmith.data.loader import collate
from tunesmith.data.sources import DatasetEntry
from tunesmith.data.tokenize import Limits, encode
from tunesmith.strategies.single import Single, SingleOptions
from tunesmith.train.loop import forward_backward


def encoded_examples(tokenizer, encoder_decoder):
    rng = random.Random(0)
    entry = DatasetEntry(path="x", input_format="Q: __input__\nA:", output_format=" __output__")
    out = []
    for i in range(8):
        # Target lengths from 2 to ~60 tokens: a per-micro-batch mean would fail this test.
        words = " ".join(rng.choice(["one", "two", "three", "hundred"]) for _ in range(1 + 7 * i))
        record = {"input": str(i), "output": words}
        out.append(encode(tokenizer, input_output(record, entry), Limits(), encoder_decoder))
    return out


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_four_micro_batches_of_two_equal_one_batch_of_eight(tokenizer, kind):
    encoder_decoder = kind == "t5"
    examples = encoded_examples(tokenizer, encoder_decoder)
    pad = tokenizer.pad_token_id
    strategy = Single(SingleOptions(device="cpu"), TrainConfig())
    big = [collate(examples, pad, encoder_decoder)]
    small = [collate(examples[i : i + 2], pad, encoder_decoder) for i in range(0, 8, 2)]

    grads, losses = [], []
    for batches in (big, small):
        model = build_tiny_model(kind, seed=1).double().eval()  # eval: no dropout noise
        loss_sum = forward_backward(model, batches, strategy).sums
        losses.append(loss_sum)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    assert torch.allclose(losses[0], losses[1], rtol=1e-10)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-12)
