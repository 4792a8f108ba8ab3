"""The loss the loop, evaluation and Green Trainer share: summed token cross-entropy.

It returns the *sum* over target tokens and the token count, so the caller can normalise by the
target tokens of a whole optimizer step across micro-batches and ranks. A per-micro-batch mean
would weight short answers more than long ones and make accumulation differ from a big batch.

The LM head runs on the positions that have a target only. Prompt tokens and padding carry no
loss (on Alpaca about half the positions), and the head over a large vocabulary is often the
biggest matrix multiply of the model: projecting only the target positions cut the head + loss
time by 44% in bench/README.md's measurement.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

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
    else:
        # Position t predicts token t + 1: shift the labels left (rather than slicing the large
        # logits, which would copy them and zero-fill their gradient).
        labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
    targets = labels != IGNORE
    with head_on_positions(model, targets) as gathered:
        logits = model(**inputs, use_cache=False).logits
    if gathered() and logits.dim() == 2:  # the head saw the target positions alone
        labels = labels[targets]
    elif logits.shape[1] > labels.shape[1]:
        # Prompt tuning prepends virtual-token positions to the output; they carry no target.
        logits = logits[:, logits.shape[1] - labels.shape[1] :]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # cross-entropy over a large vocabulary needs fp32 accumulation
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return loss_sum, targets.sum()


@contextlib.contextmanager
def head_on_positions(model: nn.Module, targets: torch.Tensor) -> Iterator[Callable[[], bool]]:
    """While active, the model's output layer sees only the hidden states where `targets` is
    True, flattened to (n, hidden). Yields a function telling whether that happened: a model
    that computes its logits without calling its output module, or a compiled model (a hook
    that changes every call would recompile it), keeps the full logits.
    """
    head = None if hasattr(model, "_orig_mod") else unwrap(model).get_output_embeddings()
    fired = []
    if head is None:
        yield lambda: False
        return

    def gather(module: nn.Module, args: tuple) -> tuple:
        hidden, mask = args[0], targets
        if hidden.dim() != 3 or hidden.shape[0] != mask.shape[0]:
            return args
        if hidden.shape[1] > mask.shape[1]:  # prompt tuning's virtual tokens come first
            mask = F.pad(mask, (hidden.shape[1] - mask.shape[1], 0), value=False)
        if hidden.shape[1] != mask.shape[1]:
            return args
        fired.append(True)
        return (hidden[mask], *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield lambda: bool(fired)
    finally:
        handle.remove()
