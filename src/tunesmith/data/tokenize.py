"""Formatted examples -> token ids and labels.

Prompt and answer are tokenised separately and concatenated, so the loss mask is exact by
construction (it never depends on re-finding the prompt's tokens in the whole). EOS ends every
answer and is trained. When a prompt is too long, the raw input inside the template is cut, not
the template around it (a summarisation cue like "TL;DR:" at the end survives).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.data.formats import INPUT, Example

IGNORE = -100


@dataclass
class Limits:
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    cutoff_len: int | None = None
    train_on_inputs: bool = False
    overlong: str = "truncate"


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # decoder-only: same length as input_ids; seq2seq: the target ids
    truncated: bool


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def encode_prompt(
    tokenizer: Any, example: Example, max_tokens: int | None
) -> tuple[list[int], bool]:
    """Prompt ids (with the tokenizer's leading special tokens), cut inside the input if needed."""
    ids = _ids(tokenizer, example.prompt, special=True)
    if max_tokens is None or len(ids) <= max_tokens:
        return ids, False
    before, _, after = example.input_format.partition(INPUT)
    head = _ids(tokenizer, before, special=True) if before else _ids(tokenizer, "", special=True)
    tail = _ids(tokenizer, after, special=False) if after else []
    # Some tokenizers append EOS to every encoding (T5): keep those special ids at the very end.
    trailing = [i for i in head[len(head) - 1 :] if i == tokenizer.eos_token_id and after == ""]
    head = head[: len(head) - len(trailing)]
    body = _ids(tokenizer, example.input_text, special=False)
    room = max(max_tokens - len(head) - len(tail) - len(trailing), 0)
    ids = (head + body[:room] + tail + trailing)[:max_tokens]
    return ids, True


def encode_answer(tokenizer: Any, answer: str, max_tokens: int | None) -> tuple[list[int], bool]:
    """Answer ids followed by EOS; when cut, EOS is kept as the last token."""
    ids = _ids(tokenizer, answer, special=False)
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    if max_tokens is not None and len(ids) > max_tokens:
        return ids[: max_tokens - 1] + ids[-1:], True
    return ids, False


def encode(
    tokenizer: Any, example: Example, limits: Limits, encoder_decoder: bool
) -> Encoded | None:
    """Token ids and labels of one example; None when it is over-long and `overlong=drop`."""
    prompt, cut_prompt = encode_prompt(tokenizer, example, limits.max_input_tokens)
    answer, cut_answer = encode_answer(tokenizer, example.answer or "", limits.max_output_tokens)
    truncated = cut_prompt or cut_answer
    if encoder_decoder:
        if limits.cutoff_len and len(prompt) > limits.cutoff_len:
            prompt, truncated = prompt[: limits.cutoff_len], True
    elif limits.cutoff_len and len(prompt) + len(answer) > limits.cutoff_len:
        truncated = True
        # Shrink the prompt first (down to half the budget), then the answer, keeping its EOS.
        keep_prompt = max(limits.cutoff_len - len(answer), limits.cutoff_len // 2)
        prompt = prompt[:keep_prompt]
        room = limits.cutoff_len - len(prompt)
        if len(answer) > room:
            answer = answer[: room - 1] + answer[-1:] if room > 1 else answer[-1:]
    if truncated and limits.overlong == "drop":
        return None
    if encoder_decoder:
        return Encoded(input_ids=prompt, labels=answer, truncated=truncated)
    prompt_labels = prompt if limits.train_on_inputs else [IGNORE] * len(prompt)
    return Encoded(input_ids=prompt + answer, labels=prompt_labels + answer, truncated=truncated)
