"""Every epoch draws its own mixture and packs it anew, from (seed, epoch) alone: the packing
changes between epochs, holds every drawn example once, keeps the proportions, and stays exact
under rank sharding and resume."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from tunesmith.config import load_config
from tunesmith.data.loader import build_dataloaders


def write_rows(path, n, tag, words):
    """`n` records whose inputs vary in length (1..words words), so rows mix lengths."""
    rows = [{"input": " ".join([f"{tag}{i}"] * (i % words + 1)), "output": tag} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def packed_cfg(tmp_path, mixed=True, *extra):
    small = write_rows(tmp_path / "small.jsonl", 30, "a", 3)
    large = write_rows(tmp_path / "large.jsonl", 270, "b", 5)
    if mixed:
        train = json.dumps([{"path": small, "proportion": 0.4}, {"path": large, "proportion": 0.6}])
    else:
        train = json.dumps([small, large])
    return load_config(
        None,
        [
            f"data.train={train}",
            "data.cache=false",
            "data.packing=true",
            "data.max_seq_len=48",
            "train.batch_size=2",
            *extra,
        ],
    )


def row_keys(train, epoch):
    """Each row of an epoch as the sorted indices of its examples."""
    where = {id(e): i for i, e in enumerate(train.examples)}
    return [tuple(sorted(where[id(e)] for e in row)) for row in train.epoch_units(epoch)]


@pytest.mark.parametrize("mixed", [True, False], ids=["mixture", "natural"])
def test_each_epoch_packs_its_own_draw_once(tokenizer, tmp_path, mixed):
    train = build_dataloaders(packed_cfg(tmp_path, mixed), tokenizer, 0, 1, False).train
    rows = {}
    for epoch in (0, 1):
        rows[epoch] = row_keys(train, epoch)
        packed = Counter(i for row in rows[epoch] for i in row)
        # Every example of the epoch's draw sits in exactly one slot (an up-sampled one as often
        # as it was drawn), and no row overflows.
        assert packed == Counter(train._order_of(epoch))
        assert all(sum(len(e.input_ids) for e in r) <= 48 for r in train.epoch_units(epoch))
    if mixed:  # the down-sampled entry gives other examples in epoch 1
        assert Counter(train._order_of(0)) != Counter(train._order_of(1))
    multi = [set(r for r in rows[e] if len(r) > 1) for e in (0, 1)]
    shared = len(multi[0] & multi[1]) / len(multi[1])
    assert shared < 0.5, f"{100 * shared:.0f}% of epoch 1's rows repeat epoch 0's"
    # Cheap and deterministic: rebuilding an epoch from scratch gives the same rows.
    again = build_dataloaders(packed_cfg(tmp_path, mixed), tokenizer, 0, 1, False).train
    assert row_keys(again, 1) == rows[1]
    for epoch in (0, 1):
        packing = train.packing_of(epoch)
        assert packing.rows == len(rows[epoch]) and packing.efficiency > 0.85


def test_packed_mixture_holds_proportions_in_every_epoch(tokenizer, tmp_path):
    train = build_dataloaders(packed_cfg(tmp_path), tokenizer, 0, 1, False).train
    small = str(tmp_path / "small.jsonl")
    before = {k: 0 for k in train.source_labels}
    for epoch in range(3):
        for _ in range(train.micro_batches_in(epoch)):
            train.next_batch()
        assert train.epoch == epoch
        used = train.used_counts()
        this_epoch = {k: used[k] - before[k] for k in used}
        share = this_epoch[small] / sum(this_epoch.values())
        assert abs(share - 0.4) <= 0.02, (epoch, this_epoch)
        before = used


def test_two_ranks_equal_one_process_over_three_packed_epochs(tokenizer, tmp_path):
    """Same global batch (10 rows): one process accumulates 2 micro-batches of 5, two ranks take
    one each; every step sees the same rows, through epochs whose row counts differ."""
    cfg = packed_cfg(tmp_path, True, "train.batch_size=5", "train.global_batch_size=10")
    single = build_dataloaders(cfg, tokenizer, 0, 1, False).train
    ranks = [build_dataloaders(cfg, tokenizer, r, 2, False).train for r in range(2)]
    assert single.accum == 2 and ranks[0].accum == 1
    steps = sum(single.micro_batches_in(e) for e in range(3)) // 2
    assert len({single.packing_of(e).rows for e in range(3)}) > 1  # epochs differ in length
    for _ in range(steps):
        expected = [single.next_batch()["input_ids"] for _ in range(2)]
        got = [ranks[r].next_batch()["input_ids"] for r in range(2)]
        assert all(torch.equal(e, g) for e, g in zip(expected, got))
        assert single.epoch == ranks[0].epoch == ranks[1].epoch
    assert single.epoch == 2


def test_resume_mid_epoch_two_with_packing_and_mixing(tokenizer, tmp_path):
    cfg = packed_cfg(tmp_path)
    first = build_dataloaders(cfg, tokenizer, 0, 1, False).train
    for _ in range(first.micro_batches_in(0) + first.micro_batches_in(1) + 5):
        first.next_batch()
    state = first.state_dict()
    assert state == {"epoch": 2, "position": 5}
    resumed = build_dataloaders(cfg, tokenizer, 0, 1, False).train
    resumed.load_state_dict(state)
    for _ in range(first.micro_batches_in(2)):  # the rest of epoch 2 and into epoch 3
        a, b = first.next_batch(), resumed.next_batch()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.epoch == 3 and resumed.used_counts() == first.used_counts()


def test_num_epochs_ends_exactly_at_an_epoch_boundary(tokenizer, tmp_path):
    """Packed epochs differ by a row or two, so `num_epochs` counts each epoch's own batches."""
    train = build_dataloaders(packed_cfg(tmp_path), tokenizer, 0, 1, False).train
    counts = [train.micro_batches_in(e) for e in range(3)]
    assert len(set(counts)) > 1  # the packed epochs really differ in length
    for _ in range(train.steps_for_epochs(2) * train.accum):
        train.next_batch()
    assert (train.epoch, train.position) == (1, counts[1])  # epoch 1 just ended
    assert train.steps_for_epochs(2.5) == counts[0] + counts[1] + -(-counts[2] // 2)
