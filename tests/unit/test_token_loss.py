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


def loss_and_grads(model, batch, chunk_size):
    model.zero_grad(set_to_none=True)
    loss, n = token_loss(model, batch, chunk_size=chunk_size)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), n, grads


@pytest.mark.parametrize("kind", ["llama", "t5", "llama-prompt"])
def test_chunked_head_gives_the_unchunked_loss_and_gradients(kind):
    """Chunks of 3 target positions (recomputed in backward) against one pass over all of them:
    the same summed loss and the same gradient on every parameter, also for encoder-decoder and
    for prompt tuning (virtual tokens in front of the hidden states)."""
    model = build_tiny_model(kind.split("-")[0]).float().eval()
    if kind == "llama-prompt":
        from peft import PromptTuningConfig, get_peft_model

        model = get_peft_model(
            model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
        )
    batch = batch_with_prompts(512)
    whole, n_whole, grads_whole = loss_and_grads(model, batch, chunk_size=0)
    chunked, n_chunked, grads_chunked = loss_and_grads(model, batch, chunk_size=3)
    assert n_whole == n_chunked and n_whole > 3 * 3  # several chunks, one of them partial
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-6)
    assert grads_whole.keys() == grads_chunked.keys() and grads_whole
    for name, grad in grads_whole.items():
        diff = (grads_chunked[name] - grad).abs().max().item()
        assert diff <= 1e-5 * grad.abs().max().item() + 1e-7, (name, diff, grad.abs().max().item())
    expected, _ = (
        textbook_loss(model, batch, kind == "t5") if kind != "llama-prompt" else (whole, 0)
    )
    assert whole.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_summed_cross_entropy_equals_torchs_loss_and_gradient(dtype):
    """The lean cross-entropy (one n x V buffer in backward) against F.cross_entropy on the same
    logits (bf16 upcast to fp32 as before), with ignored rows and a non-unit upstream gradient."""
    from tunesmith.train.loss import SummedCrossEntropy

    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(64, 1000, generator=g, dtype=torch.float64)).to(dtype)
    labels = torch.randint(0, 1000, (64,), generator=g)
    labels[::5] = IGNORE
    ours_in = logits.clone().requires_grad_()
    ours = SummedCrossEntropy.apply(ours_in, labels)
    (1.7 * ours).backward()
    theirs_in = logits.clone().requires_grad_()
    wide = theirs_in.float() if dtype == torch.bfloat16 else theirs_in
    theirs = F.cross_entropy(wide, labels, ignore_index=IGNORE, reduction="sum")
    (1.7 * theirs).backward()
    assert (
        ours.dtype == theirs.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    )
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    assert ours_in.grad.dtype == dtype
    assert torch.allclose(ours_in.grad.double(), theirs_in.grad.double(), atol=1e-5, rtol=1e-3)
    assert ours_in.grad[::5].abs().sum() == 0  # ignored rows get no gradient
