"""Packing: several examples per row of `max_seq_len` tokens, kept apart inside the model.

Rows carry `position_ids` that restart at 0 for every example and no `attention_mask`: from those,
transformers builds a block-diagonal causal mask (sdpa and eager; flash-attention uses the same
positions as varlen boundaries), so no token attends to another example. That path is taken only
when the model runs without a KV cache (`use_cache=False`, which the loader's caller sets: see
FACTS.md, "packing trap"). The first label of every example is ignored, because in a row it would
be predicted from the previous example's last token. Padding at the end of a row has position 0
at every slot (each slot its own one-token "document") and ignored labels.
"""

from __future__ import annotations

import bisect

import torch

from tunesmith.data.tokenize import IGNORE, Encoded


def pack(lengths: list[int], max_seq_len: int, bucket: int = 1) -> list[list[int]]:
    """Best-fit decreasing: indices of examples per row, each row at most `max_seq_len` tokens.

    Lengths are compared in buckets of `bucket` tokens and equal buckets keep their given order,
    so the result is deterministic for given lengths, and a shuffled input gives other neighbours
    in a row (the loader packs each epoch's shuffled draw with buckets of max_seq_len / 32: on the
    Alpaca demo set that changes most multi-example rows between epochs at the same efficiency).
    Examples longer than a row must be cut before packing.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-(lengths[i] // bucket), i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted
    for i in order:
        need = lengths[i]
        at = bisect.bisect_left(free, (need, -1))
        if at < len(free):
            room, row = free.pop(at)
        else:
            room, row = max_seq_len, len(rows)
            rows.append([])
        rows[row].append(i)
        if room - need > 0:
            bisect.insort(free, (room - need, row))
    return rows


def collate_packed(
    rows: list[list[Encoded]], pad_id: int, width: int | None = None
) -> dict[str, torch.Tensor]:
    """Tensors of packed rows: input_ids, labels and position_ids, padded to the longest row
    (or to `width`: a fixed shape for a compiled model)."""
    width = max([width or 0] + [sum(len(e.input_ids) for e in row) for row in rows])
    ids, labels, positions = [], [], []
    for row in rows:
        r_ids: list[int] = []
        r_labels: list[int] = []
        r_pos: list[int] = []
        for example in row:
            r_ids += example.input_ids
            r_labels += [IGNORE] + example.labels[1:]
            r_pos += range(len(example.input_ids))
        pad = width - len(r_ids)
        ids.append(r_ids + [pad_id] * pad)
        labels.append(r_labels + [IGNORE] * pad)
        positions.append(r_pos + [0] * pad)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.tensor(positions, dtype=torch.long),
    }


def padding_slots(position_ids: torch.Tensor) -> torch.Tensor:
    """Bool mask of row-end padding in a packed batch: position 0 followed by position 0 or by
    the end of the row (a real example has at least two tokens: its answer and EOS)."""
    zero = position_ids == 0
    next_zero = torch.ones_like(zero)
    next_zero[:, :-1] = zero[:, 1:]
    return zero & next_zero
