"""token_loss projects only the target positions through the LM head, and gets the same loss as
the textbook computation over the full logits (shift, cross-entropy, sum)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import build_tiny_model
from tunesmith.data.tokenize import IGNORE
from tunesmith.train.loss import token_loss


def batch_with_prompts(vocab: int) -> dict[str, torch.Tensor]:
    """Three rows: long prompt + short answer, short prompt + long answer, right padding."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (3, 12), generator=g)
    labels = ids.clone()
    labels[0, :9] = IGNORE
    labels[1, :2] = IGNORE
    labels[2, :4] = IGNORE
    labels[2, 8:] = IGNORE
    attention = torch.ones_like(ids)
    attention[2, 8:] = 0
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def textbook_loss(model, batch, encoder_decoder):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    if encoder_decoder:
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(
            labels=labels.clamp(min=0)
        )
        logits = model(**inputs).logits
    else:
        logits, labels = model(**inputs).logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    ), (labels != IGNORE).sum()


@pytest.mark.parametrize("kind", ["llama", "gpt2", "t5"])
def test_the_head_sees_target_positions_only_and_the_loss_is_unchanged(kind):
    model = build_tiny_model(kind).float().eval()  # no dropout: two forwards must agree
    batch = batch_with_prompts(model.config.vocab_size)
    rows_seen = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: rows_seen.append(args[0].shape[:-1].numel())
    )
    loss, n = token_loss(model, batch)
    handle.remove()
    expected, expected_n = textbook_loss(model, batch, kind == "t5")
    assert n == expected_n and rows_seen[0] == n < batch["labels"].numel() / 2 + 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # Gradients flow to the head and the body as before.
    loss.backward()
    head = model.get_output_embeddings().weight
    assert head.grad is not None and head.grad.abs().sum() > 0
