"""The loss the loop, evaluation and Green Trainer share: summed token cross-entropy.

It returns the *sum* over target tokens and the token count, so the caller can normalise by the
target tokens of a whole optimizer step across micro-batches and ranks. A per-micro-batch mean
would weight short answers more than long ones and make accumulation differ from a big batch.

The LM head runs on the positions that have a target only, and in chunks of `chunk_size` of
them: batch x sequence x vocabulary logits never exist. Prompt tokens and padding carry no loss
(on Alpaca about half the positions), and the head over a large vocabulary is often the biggest
matrix multiply of the model: projecting only the target positions cut the head + loss time by
44% in bench/README.md's measurement. With more targets than one chunk, each chunk's logits are
recomputed in backward (activation checkpointing of the head), so at most one chunk's logits are
alive at a time: with
128k vocabulary and 16k target tokens that is 1 GiB of fp32 logits per 2,048-token chunk instead
of 8 GiB. A batch with fewer targets than one chunk pays nothing for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function
from torch.utils.checkpoint import checkpoint

from tunesmith.data.tokenize import IGNORE
from tunesmith.methods.base import unwrap

PROFILE_SCOPE = "tunesmith.cross_entropy"  # bench/_profile.py counts the ops under it as loss
CHUNK_SIZE = 2048  # target positions per LM-head chunk (train.loss_chunk_size)
# Config keys of models whose logits are not just head(hidden): soft-capping, scaling. Their
# head then runs on all target positions at once, through the model's own code.
POST_HEAD_KEYS = ("final_logit_softcapping", "logit_scale", "logits_scaling")

# (head weight, hidden (n, h), labels (n,), head bias) -> summed loss; e.g. Liger's fused kernel.
FusedLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def token_loss(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    chunk_size: int = CHUNK_SIZE,
    fused: FusedLoss | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token losses, number of target tokens) of one batch, computed in fp32 or wider.

    `chunk_size`: target positions per head chunk (0: all at once). `fused`: a fused linear
    cross-entropy used instead of the chunked head when the head is a plain nn.Linear.
    """
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
    # The head computes the loss itself (chunked) unless the model post-processes its logits.
    plain = not any(getattr(inner.config, k, None) not in (None, 1, 1.0) for k in POST_HEAD_KEYS)
    target_labels = labels[targets]

    def loss_of(head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return head_cross_entropy(head, hidden, target_labels, chunk_size, fused)

    with head_on_positions(model, targets, loss_of if plain else None) as gathered:
        logits = model(**inputs, use_cache=False).logits
    if gathered() and logits.dim() == 0:  # the head returned the summed loss (fp32 or wider)
        return logits, targets.sum()
    if gathered() and logits.dim() == 2:  # the head saw the target positions alone
        labels = target_labels
    elif logits.shape[1] > labels.shape[1]:
        # Prompt tuning prepends virtual-token positions to the output; they carry no target.
        logits = logits[:, logits.shape[1] - labels.shape[1] :]
    loss_sum = _cross_entropy_sum(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    return loss_sum, targets.sum()


def head_cross_entropy(
    head: nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = CHUNK_SIZE,
    fused: FusedLoss | None = None,
) -> torch.Tensor:
    """Summed cross-entropy of head(hidden) against labels, `chunk_size` rows at a time.

    Calls the head module itself (so a LoRA-wrapped or quantized head works), except with
    `fused` and a plain nn.Linear head, whose weight then goes straight to the fused kernel.
    """
    if fused is not None and type(head) is nn.Linear:
        return fused(head.weight, hidden, labels, head.bias)
    n = hidden.shape[0]
    if chunk_size <= 0 or n <= chunk_size:
        return _head_loss(head, hidden, labels)
    parts = [
        checkpoint(
            _head_loss,
            head,
            hidden[start : start + chunk_size],
            labels[start : start + chunk_size],
            use_reentrant=False,
        )
        for start in range(0, n, chunk_size)
    ]
    return torch.stack(parts).sum()  # in the chunks' dtype: fp32, or fp64 for an fp64 model


def _head_loss(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return _cross_entropy_sum(head(hidden), labels)


def _cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return SummedCrossEntropy.apply(logits, labels)


class SummedCrossEntropy(torch.autograd.Function):
    """F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum"), computed in fp32 (or
    the logits' wider dtype), with a backward that writes the gradient in one buffer.

    On a large vocabulary the rows x vocabulary passes around the head cost as much as the head's
    matmul (bench/README.md's profile: torch's cross-entropy zero-fills an n x V gradient for
    nll_loss, keeps an fp32 log-softmax for its backward and makes another n x V buffer there).
    Here forward keeps only the logits it was given and one logsumexp per row, and backward
    computes softmax - one_hot in place in a single fp32 buffer.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        with record_function(PROFILE_SCOPE):
            wide = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
            valid = labels != IGNORE
            safe = labels.masked_fill(~valid, 0)
            lse = torch.logsumexp(wide, dim=-1)
            picked = wide.gather(1, safe[:, None]).squeeze(1)
            ctx.save_for_backward(logits, lse, safe, valid)
            return ((lse - picked) * valid).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        with record_function(PROFILE_SCOPE):
            logits, lse, safe, valid = ctx.saved_tensors
            probs = logits.to(lse.dtype, copy=True).sub_(lse[:, None]).exp_()  # one n x V buffer
            probs[torch.arange(probs.shape[0], device=probs.device), safe] -= 1.0
            probs.mul_((grad * valid).to(probs.dtype)[:, None])  # ignored rows get no gradient
            return probs.to(logits.dtype), None


@contextlib.contextmanager
def head_on_positions(
    model: nn.Module,
    targets: torch.Tensor,
    loss_of: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[Callable[[], bool]]:
    """While active, the model's output layer sees only the hidden states where `targets` is
    True, flattened to (n, hidden); with `loss_of`, its call returns `loss_of(head, those hidden
    states)` (a 0-d tensor) instead of logits.

    The loss is computed inside the head's own call so that whatever wraps the model (DDP,
    FSDP2's root, DeepSpeed ZeRO-3's parameter hooks) sees the head used in its forward, as
    usual. Yields a function telling whether that happened: a model that computes its logits
    without calling its output module, or a whole-model torch.compile wrapper (a hook that
    changes every call would recompile it), keeps the full logits.
    """
    head = None if hasattr(model, "_orig_mod") else unwrap(model).get_output_embeddings()
    state: dict[str, torch.Tensor | bool | None] = {"hidden": None, "busy": False, "done": False}
    if head is None:
        yield lambda: False
        return

    def gather(module: nn.Module, args: tuple) -> tuple:
        hidden, mask = args[0], targets
        if state["busy"] or state["hidden"] is not None:
            return args  # loss_of calling the head on a chunk, or a second call
        if hidden.dim() != 3 or hidden.shape[0] != mask.shape[0]:
            return args
        if hidden.shape[1] > mask.shape[1]:  # prompt tuning's virtual tokens come first
            mask = F.pad(mask, (hidden.shape[1] - mask.shape[1], 0), value=False)
        if hidden.shape[1] != mask.shape[1]:
            return args
        picked = state["hidden"] = hidden[mask]
        return (picked[:0] if loss_of is not None else picked, *args[1:])

    def replace(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        hidden = state["hidden"]
        if loss_of is None or state["busy"] or state["done"] or hidden is None:
            return output
        state["busy"] = True
        try:
            return loss_of(module, hidden)  # type: ignore[arg-type]
        finally:
            state["busy"], state["done"] = False, True

    handles = [
        head.register_forward_pre_hook(gather),
        # prepend: before a wrapper's post-forward hook frees gathered parameters (ZeRO-3).
        head.register_forward_hook(replace, prepend=True),
    ]
    try:
        yield lambda: state["hidden"] is not None
    finally:
        for handle in handles:
            handle.remove()
