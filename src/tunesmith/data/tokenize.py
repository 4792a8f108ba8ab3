"""Formatted examples -> token ids and labels.

Prompt and answer are tokenised separately and concatenated, so the loss mask is exact by
construction (it never depends on re-finding the prompt's tokens in the whole). EOS ends every
answer and is trained. When a prompt is too long, the raw input inside the template is cut, not
the template around it (a summarisation cue like "Summary:" at the end survives); which end of
the input goes is `truncation_side`. Chat examples are rendered with the tokenizer's chat
template turn by turn; the assistant turns are the trained segments.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from tunesmith.data.formats import INPUT, Example
from tunesmith.errors import UserError

IGNORE = -100
# Bumped whenever the same settings would give other ids (part of the tokenised-data cache key).
# 2: cutoff_len cuts the prompt inside the input on its truncation side, as max_input_tokens does.
# 3: the cut is the smallest of cutoff_len, max_seq_len and the model's context (also unpacked).
ENCODING_VERSION = 3


@dataclass
class Limits:
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    cutoff_len: int | None = None  # the length cap: min(cutoff_len, max_seq_len, model context)
    train_on_inputs: bool = False
    overlong: str = "truncate"
    truncation_side: str = "right"


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # decoder-only: same length as input_ids; seq2seq: the target ids
    truncated: bool
    source: int = 0  # index of the dataset entry it came from (mixing, per-entry counts)
    # Preference pairs: input_ids/labels hold prompt + chosen, these prompt + rejected.
    rejected_ids: list[int] | None = None
    rejected_labels: list[int] | None = None
    desirable: bool | None = None  # KTO: the completion is desirable (True) or not
    ref_logps: list[float] | None = None  # precomputed reference log-probs ([chosen, rejected])
    # Tokens before the length cap: statistics only, so not kept in the cache nor compared.
    full_length: int = field(default=0, compare=False)


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def _cut(ids: list[int], room: int, side: str) -> list[int]:
    if room <= 0:
        return []
    return ids[-room:] if side == "left" else ids[:room]


def encode_prompt(
    tokenizer: Any,
    example: Example,
    max_tokens: int | None,
    side: str = "right",
    ids: list[int] | None = None,
    body: list[int] | None = None,
) -> tuple[list[int], bool]:
    """Prompt ids (with the tokenizer's leading special tokens), cut inside the input if needed.

    `ids` and `body` may pass the prompt and the raw input already tokenised (batched encoding).
    A chat example that ends with an assistant turn (a record scored against its answer) is
    rendered without that turn; one that ends with the user (a conversation asking for the next
    reply: `chat`, the board) is rendered whole; both end with the generation prompt.
    """
    if example.messages is not None:
        turns = example.messages
        answered = bool(turns) and turns[-1]["role"] == "assistant"
        text = render_chat(tokenizer, turns[:-1] if answered else turns, generation_prompt=True)
        ids = _ids(tokenizer, text, special=False)
        return (
            (ids, False)
            if max_tokens is None or len(ids) <= max_tokens
            else (
                _cut(ids, max_tokens, "left"),
                True,
            )
        )
    if ids is None:
        ids = _ids(tokenizer, example.prompt, special=True)
    if max_tokens is None or len(ids) <= max_tokens:
        return ids, False
    head, tail, trailing = _template_ids(tokenizer, example.input_format)
    if body is None:
        body = _ids(tokenizer, example.input_text, special=False)
    room = max(max_tokens - len(head) - len(tail) - len(trailing), 0)
    ids = (head + _cut(body, room, side) + tail + trailing)[:max_tokens]
    return ids, True


@functools.lru_cache(maxsize=64)
def _template_ids(tokenizer: Any, template: str) -> tuple[list[int], list[int], list[int]]:
    """Ids of a template's text before and after the input, and trailing special ids."""
    before, _, after = template.partition(INPUT)
    head = _ids(tokenizer, before, special=True)
    tail = _ids(tokenizer, after, special=False) if after else []
    # Some tokenizers append EOS to every encoding (T5): keep those special ids at the very end.
    trailing = [i for i in head[len(head) - 1 :] if i == tokenizer.eos_token_id and after == ""]
    return head[: len(head) - len(trailing)], tail, trailing


def encode_answer(
    tokenizer: Any, answer: str, max_tokens: int | None, ids: list[int] | None = None
) -> tuple[list[int], bool]:
    """Answer ids followed by EOS; when cut, EOS is kept as the last token."""
    ids = _ids(tokenizer, answer, special=False) if ids is None else ids
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    if max_tokens is not None and len(ids) > max_tokens:
        return ids[: max_tokens - 1] + ids[-1:], True
    return ids, False


def encode(
    tokenizer: Any,
    example: Example,
    limits: Limits,
    encoder_decoder: bool,
    prompt_ids: list[int] | None = None,
    answer_ids: list[int] | None = None,
    body_ids: list[int] | None = None,
) -> Encoded | None:
    """Token ids and labels of one example; None when it is over-long and `overlong=drop`."""
    if example.rejected is not None or example.desirable is not None:
        return encode_preference(tokenizer, example, limits)
    if example.messages is not None:
        return encode_chat(tokenizer, example, limits, encoder_decoder)
    prompt, cut_prompt = encode_prompt(
        tokenizer, example, limits.max_input_tokens, limits.truncation_side, prompt_ids, body_ids
    )
    answer, cut_answer = encode_answer(
        tokenizer, example.answer or "", limits.max_output_tokens, answer_ids
    )
    truncated = cut_prompt or cut_answer
    # The cap applies to prompt + answer, or to the encoder's input alone (encoder-decoder).
    full_length = len(prompt) if encoder_decoder else len(prompt) + len(answer)
    side = limits.truncation_side
    if encoder_decoder:
        if limits.cutoff_len and len(prompt) > limits.cutoff_len:
            prompt, _ = encode_prompt(tokenizer, example, limits.cutoff_len, side, prompt, body_ids)
            truncated = True
    elif limits.cutoff_len and len(prompt) + len(answer) > limits.cutoff_len:
        truncated = True
        # Shrink the prompt first (down to half the budget), then the answer, keeping its EOS.
        # The prompt is cut like max_input_tokens cuts it: inside the input, on its side.
        keep_prompt = max(limits.cutoff_len - len(answer), limits.cutoff_len // 2)
        if len(prompt) > keep_prompt:
            prompt, _ = encode_prompt(tokenizer, example, keep_prompt, side, prompt, body_ids)
        room = limits.cutoff_len - len(prompt)
        if len(answer) > room:
            answer = answer[: room - 1] + answer[-1:] if room > 1 else answer[-1:]
    if truncated and limits.overlong == "drop":
        return None
    if encoder_decoder:
        return Encoded(prompt, answer, truncated, full_length=full_length)
    prompt_labels = prompt if limits.train_on_inputs else [IGNORE] * len(prompt)
    return Encoded(prompt + answer, prompt_labels + answer, truncated, full_length=full_length)


def encode_many(
    tokenizer: Any, examples: list[Example], limits: Limits, encoder_decoder: bool
) -> list[Encoded | None]:
    """`encode` over many examples, with prompts and answers tokenised in two batched calls
    (the fast tokenizer spreads a batch over its Rust threads)."""
    plain = [
        i
        for i, ex in enumerate(examples)
        if ex.messages is None and ex.rejected is None and ex.desirable is None
    ]
    prompts = _batch_ids(tokenizer, [examples[i].prompt for i in plain], special=True)
    answers = _batch_ids(tokenizer, [examples[i].answer or "" for i in plain], special=False)
    by_index = {i: (p, a) for i, p, a in zip(plain, prompts, answers)}
    limit = limits.max_input_tokens
    long = [i for i, p in zip(plain, prompts) if limit is not None and len(p) > limit]
    bodies = dict(zip(long, _batch_ids(tokenizer, [examples[i].input_text for i in long], False)))
    out = []
    for i, example in enumerate(examples):
        p, a = by_index.get(i, (None, None))
        out.append(encode(tokenizer, example, limits, encoder_decoder, p, a, bodies.get(i)))
    return out


PARALLEL_MIN = 2000  # examples below which extra processes cost more than they save
_shared: tuple[Any, Limits, bool] | None = None  # what forked workers inherit


def _encode_chunk(chunk: list[Example]) -> list[Encoded | None]:
    tokenizer, limits, encoder_decoder = _shared  # type: ignore[misc]
    return encode_many(tokenizer, chunk, limits, encoder_decoder)


def encode_parallel(
    tokenizer: Any, examples: list[Example], limits: Limits, encoder_decoder: bool, workers: int
) -> list[Encoded | None]:
    """`encode_many` split over `workers` forked processes for large sets (same result, same
    order). The workers inherit the tokenizer through fork instead of pickling it."""
    global _shared
    if workers <= 1 or len(examples) < PARALLEL_MIN:
        return encode_many(tokenizer, examples, limits, encoder_decoder)
    import multiprocessing

    size = -(-len(examples) // workers)
    chunks = [examples[i : i + size] for i in range(0, len(examples), size)]
    _shared = (tokenizer, limits, encoder_decoder)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_encode_chunk, chunks)
    finally:
        _shared = None
    return [encoded for part in parts for encoded in part]


def _batch_ids(tokenizer: Any, texts: list[str], special: bool) -> list[list[int]]:
    """Ids of many texts; straight through the Rust tokenizer when there is one (the Python
    wrapper's per-encoding conversion costs more than the tokenisation of short texts)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=special)]
    return tokenizer(texts, add_special_tokens=special)["input_ids"]


# ---------------------------------------------------------------- chat


def render_chat(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    """The tokenizer's chat template applied to `messages`, as text."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            "data.format=chat needs a chat template; this tokenizer has none",
            "set data.chat_template (chatml, llama3, mistral, gemma, phi, qwen, alpaca)",
        )
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def encode_chat(
    tokenizer: Any, example: Example, limits: Limits, encoder_decoder: bool
) -> Encoded | None:
    """Render turn by turn; text added by an assistant turn is trained, the rest is context.

    The segment of assistant turn k is render(turns[:k+1]) minus render(turns[:k], generation
    prompt), so template tokens that open the turn stay untrained and those that close it (end of
    turn) are trained. EOS follows the last assistant turn unless the template already put it there.
    """
    if encoder_decoder:
        raise UserError("data.format=chat is for decoder-only models", "use input_output for T5")
    messages = example.messages or []
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render_chat(tokenizer, messages[:k], generation_prompt=True)
        after = render_chat(tokenizer, messages[: k + 1], generation_prompt=False)
        if not (before.startswith(done) and after.startswith(before)):
            raise UserError(
                f"{example.source}: the chat template does not render turns as prefixes",
                "use a chat template that appends each turn",
            )
        context = _ids(tokenizer, before[len(done) :], special=False)
        turn = _ids(tokenizer, after[len(before) :], special=False)
        ids += context + turn
        labels += (context if limits.train_on_inputs else [IGNORE] * len(context)) + turn
        done = after
    eos = tokenizer.eos_token_id
    if eos is not None and ids[-1:] != [eos]:
        ids, labels = ids + [eos], labels + [eos]
    truncated, full_length = False, len(ids)
    if limits.cutoff_len and len(ids) > limits.cutoff_len:
        truncated = True
        ids, labels = ids[: limits.cutoff_len], labels[: limits.cutoff_len]
        if labels[-1] != IGNORE and eos is not None:
            ids[-1] = labels[-1] = eos
    if truncated and limits.overlong == "drop":
        return None
    return Encoded(ids, labels, truncated, full_length=full_length)


# ---------------------------------------------------------------- preference pairs


def _chat_segments(tokenizer: Any, example: Example, messages: list[dict[str, str]]) -> list[int]:
    """Ids of the text the last (assistant) turn of `messages` adds after the generation prompt."""
    before = render_chat(tokenizer, messages[:-1], generation_prompt=True)
    after = render_chat(tokenizer, messages, generation_prompt=False)
    if not after.startswith(before):
        raise UserError(
            f"{example.source}: the chat template does not render turns as prefixes",
            "use a chat template that appends each turn",
        )
    ids = _ids(tokenizer, after[len(before) :], special=False)
    eos = tokenizer.eos_token_id
    return ids + [eos] if eos is not None and ids[-1:] != [eos] else ids


def encode_preference(tokenizer: Any, example: Example, limits: Limits) -> Encoded | None:
    """A pair (prompt + chosen, prompt + rejected) or a KTO example, only the responses labelled.

    Every response ends in EOS. Over `cutoff_len` (prompt + the longer response), the prompt is
    cut first (inside the input, on its truncation side; chat prompts lose their oldest tokens),
    down to half the budget; only then are the responses cut, each keeping its EOS, so both
    responses of a pair always survive.
    """
    if example.messages is not None:
        context = render_chat(tokenizer, example.messages[:-1], generation_prompt=True)
        prompt = _ids(tokenizer, context, special=False)
        responses = [_chat_segments(tokenizer, example, example.messages)]
        if example.rejected_messages is not None:
            responses.append(_chat_segments(tokenizer, example, example.rejected_messages))
        truncated = False
        if limits.max_input_tokens is not None and len(prompt) > limits.max_input_tokens:
            prompt, truncated = _cut(prompt, limits.max_input_tokens, "left"), True
        if limits.max_output_tokens is not None:
            cut = [r[: limits.max_output_tokens - 1] + r[-1:] for r in responses]
            truncated |= cut != responses
            responses = [
                c if len(r) > limits.max_output_tokens else r for c, r in zip(cut, responses)
            ]
    else:
        prompt, truncated = encode_prompt(
            tokenizer, example, limits.max_input_tokens, limits.truncation_side
        )
        responses = []
        for text in [example.answer or "", *([example.rejected] if example.rejected else [])]:
            ids, cut = encode_answer(tokenizer, text, limits.max_output_tokens)
            responses.append(ids)
            truncated |= cut
    cutoff = limits.cutoff_len
    longest = max(len(r) for r in responses)
    full_length = len(prompt) + longest  # the longer row (statistics: the longest example)
    if cutoff and len(prompt) + longest > cutoff:
        truncated = True
        keep = max(cutoff - longest, cutoff // 2)
        if len(prompt) > keep:
            if example.messages is not None:
                prompt = _cut(prompt, keep, "left")
            else:
                prompt, _ = encode_prompt(tokenizer, example, keep, limits.truncation_side, prompt)
        room = max(cutoff - len(prompt), 1)
        responses = [r if len(r) <= room else r[: room - 1] + r[-1:] for r in responses]
    if truncated and limits.overlong == "drop":
        return None
    masked = [IGNORE] * len(prompt)
    encoded = Encoded(
        prompt + responses[0], masked + responses[0], truncated, full_length=full_length
    )
    if len(responses) > 1:
        encoded.rejected_ids, encoded.rejected_labels = prompt + responses[1], masked + responses[1]
    encoded.desirable = example.desirable
    return encoded
