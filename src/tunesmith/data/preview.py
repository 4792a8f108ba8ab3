"""`tunesmith data preview cfg.yaml [--n 5]`: what the model will be trained on, before training.

Shows the first formatted examples with the trained tokens marked ⟦like this⟧, the split sizes,
a histogram of example lengths, what was truncated or dropped, and the packing efficiency (or
what padding costs). Bad data stops it with the same one-line error a run would give.
"""

from __future__ import annotations

from typing import Any

from tunesmith.config import Config
from tunesmith.data.loader import DataBundle, build_dataloaders, describe_stats
from tunesmith.data.packing import pack
from tunesmith.data.tokenize import IGNORE, Encoded

OPEN, CLOSE = "⟦", "⟧"


def marked_segments(
    tokenizer: Any, example: Encoded, encoder_decoder: bool
) -> list[tuple[bool, str]]:
    """The example's text as (trained, text) runs, in order (special tokens shown)."""
    if encoder_decoder:
        return [
            (False, tokenizer.decode(example.input_ids) + "\n  -> "),
            (True, tokenizer.decode(example.labels)),
        ]
    pieces, run, trained = [], [], None
    for token, label in zip(example.input_ids, example.labels):
        is_trained = label != IGNORE
        if trained is not None and is_trained != trained:
            pieces.append((trained, run))
            run = []
        run.append(token)
        trained = is_trained
    if run:
        pieces.append((trained, run))
    return [(bool(t), tokenizer.decode(ids)) for t, ids in pieces]


def marked_text(tokenizer: Any, example: Encoded, encoder_decoder: bool) -> str:
    """The example's text with trained spans wrapped in ⟦ ⟧ (special tokens shown)."""
    return "".join(
        f"{OPEN}{text}{CLOSE}" if trained else text
        for trained, text in marked_segments(tokenizer, example, encoder_decoder)
    )


def histogram_bins(lengths: list[int], bins: int = 10) -> list[tuple[int, int, int]]:
    """(first, last, count) of up to `bins` equal-width bins of token lengths."""
    if not lengths:
        return []
    low, high = min(lengths), max(lengths)
    step = max(-(-(high - low + 1) // bins), 1)
    counts = [0] * bins
    for n in lengths:
        counts[min((n - low) // step, bins - 1)] += 1
    return [
        (low + i * step, low + i * step + step - 1, count)
        for i, count in enumerate(counts)
        if low + i * step <= high
    ]


def histogram(lengths: list[int], bins: int = 10, width: int = 40) -> list[str]:
    """Text histogram lines of token lengths."""
    found = histogram_bins(lengths, bins)
    if not found:
        return ["  (no examples)"]
    top = max(count for _, _, count in found)
    return [
        f"  {start:>6}-{end:<6} {count:>7} {'#' * max(round(width * count / top), 1 if count else 0)}"
        for start, end, count in found
    ]


def padding_efficiency(lengths: list[int], batch_size: int) -> float:
    """Real tokens / padded slots when batches of `batch_size` in this order are padded."""
    real = slots = 0
    for start in range(0, len(lengths), batch_size):
        chunk = lengths[start : start + batch_size]
        real += sum(chunk)
        slots += max(chunk) * len(chunk)
    return real / max(slots, 1)


def preview_text(
    cfg: Config, tokenizer: Any, encoder_decoder: bool, n: int = 5, context_len: int | None = None
) -> str:
    """The preview report of a config, as text (`context_len`: the model's, as a run caps it)."""
    bundle = build_dataloaders(cfg, tokenizer, 0, 1, encoder_decoder, context_len)
    return render(bundle, cfg, tokenizer, n)


def render(bundle: DataBundle, cfg: Config, tokenizer: Any, n: int) -> str:
    train = bundle.train
    examples: list[Encoded] = [
        e for unit in train.units for e in (unit if isinstance(unit, list) else [unit])
    ]
    out = [f"== first {min(n, len(examples))} training examples (trained tokens in ⟦ ⟧) =="]
    for i, example in enumerate(examples[:n]):
        kind = (
            ""
            if example.desirable is None
            else (", desirable" if example.desirable else ", undesirable")
        )
        out += [
            f"-- example {i} ({len(example.input_ids)} tokens{kind})",
            ("chosen:   " if example.rejected_ids is not None else "")
            + marked_text(tokenizer, example, bundle.encoder_decoder),
        ]
        if example.rejected_ids is not None:  # a pair: the rejected side with its own mask
            rejected = Encoded(example.rejected_ids, example.rejected_labels or [], False)
            out.append("rejected: " + marked_text(tokenizer, rejected, bundle.encoder_decoder))
    out.append("== splits ==")
    for split, stats in bundle.stats.items():
        out.append(describe_stats(split, stats))
    out.append(f"test: {len(bundle.test_examples)} examples")
    lengths = [len(e.input_ids) for e in examples]
    out.append("== example lengths (tokens) ==")
    out += histogram(lengths)
    out.append("== batching ==")
    b = cfg.train.batch_size
    ordered = (
        [len(train.units[i].input_ids) for i in train._order_of(0)] if not train.packed else []
    )
    if train.packed:
        stats = bundle.stats["train"]
        out.append(
            f"packing into {cfg.data.max_seq_len}-token rows: {stats.rows} rows, "
            f"efficiency {100 * (stats.packing_efficiency or 0):.1f}%, "
            f"{cfg.data.max_seq_len * b} token slots per micro-batch"
        )
    else:
        eff = padding_efficiency(ordered, b)
        out.append(f"padding (batch {b}, epoch-0 order): {100 * eff:.1f}% of slots are real tokens")
        row = cfg.data.max_seq_len or cfg.data.cutoff_len or max(lengths)
        fitting = [n for n in lengths if n <= row]
        rows = pack(fitting, row)
        out.append(
            f"packing into {row}-token rows would reach {100 * sum(fitting) / (len(rows) * row):.1f}%"
            f" ({len(rows)} rows)"
        )
    return "\n".join(out)
