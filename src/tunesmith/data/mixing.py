"""Mixing several training datasets by proportion (seed 003's `data_sampling_proportion`).

An epoch has as many examples as all entries together. Entry i contributes round(p_i x N) of
them (largest remainder, so the counts add up to N exactly), taken from its own endless stream of
shuffled passes: epoch e continues where epoch e-1 stopped, so a down-sampled entry still shows
every example over enough epochs and an up-sampled one repeats whole passes. The picks of all
entries are then shuffled together. Everything derives from (seed, epoch): any process can compute
any epoch's order, which is what makes sharding and resume exact.
"""

from __future__ import annotations

import random

from tunesmith.errors import UserError


def normalised(proportions: list[float | None], labels: list[str]) -> list[float] | None:
    """Proportions summing to 1, or None when no entry sets one (natural proportions).

    Raises:
        UserError: some entries set a proportion and others do not, or one is not positive.
    """
    if all(p is None for p in proportions):
        return None
    for p, label in zip(proportions, labels):
        if p is None:
            raise UserError(
                f"data.train: {label} has no proportion while other entries do",
                "give every entry a proportion, or none",
            )
        if p <= 0:
            raise UserError(f"data.train: {label} has proportion {p}", "use a positive number")
    total = float(sum(proportions))  # type: ignore[arg-type]
    return [float(p) / total for p in proportions]  # type: ignore[arg-type]


def epoch_counts(proportions: list[float], total: int) -> list[int]:
    """Examples per entry in one epoch of `total`, by largest remainder."""
    exact = [p * total for p in proportions]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _stream(size: int, start: int, count: int, seed: int, entry: int) -> list[int]:
    """Items [start, start+count) of an entry's endless sequence of shuffled passes."""
    out: list[int] = []
    position = start
    while len(out) < count:
        pass_index, offset = divmod(position, size)
        order = list(range(size))
        random.Random(f"{seed}/{entry}/{pass_index}").shuffle(order)
        take = order[offset : offset + count - len(out)]
        out.extend(take)
        position += len(take)
    return out


def mixture_order(sizes: list[int], proportions: list[float], seed: int, epoch: int) -> list[int]:
    """Global indices (into the entries' examples laid end to end) of one epoch, in order."""
    total = sum(sizes)
    counts = epoch_counts(proportions, total)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    picked: list[int] = []
    for i, (size, count) in enumerate(zip(sizes, counts)):
        if size == 0 or count == 0:
            continue
        picked += [offsets[i] + j for j in _stream(size, epoch * count, count, seed, i)]
    random.Random(f"{seed}/mix/{epoch}").shuffle(picked)
    return picked
