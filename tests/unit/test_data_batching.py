"""Batching: packing keeps examples apart, mixing holds proportions, sharding and resume are exact."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import numbers_cfg, tiny_config
from tunesmith.config import load_config
from tunesmith.data.loader import build_dataloaders, collate, real_tokens
from tunesmith.data.packing import collate_packed, pack
from tunesmith.data.tokenize import IGNORE


def per_token_losses(model, batch):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits
    losses = F.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(),
        batch["labels"][:, 1:],
        ignore_index=IGNORE,
        reduction="none",
    )
    return losses


@pytest.mark.parametrize(
    "attn,compiled",
    [
        ("sdpa", False),
        ("eager", False),
        # Compiled blocks (inductor, as train.compile does it) keep documents apart too. Slow
        # on a cold inductor cache (one block's forward graph); seconds on a warm one.
        pytest.param("sdpa", True, marks=pytest.mark.slow),
    ],
)
def test_packed_rows_give_the_same_per_example_loss(tokenizer, attn, compiled, monkeypatch):
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunesmith.train.compile import compile_blocks

    cfg = tiny_config("llama")
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()
    model.config.use_cache = False
    examples = build_dataloaders(numbers_cfg(), tokenizer, 0, 1, False).train.units[:12]
    rows = [[examples[i] for i in row] for row in pack([len(e.input_ids) for e in examples], 48)]
    assert any(len(row) > 2 for row in rows)
    with torch.no_grad():
        alone = [per_token_losses(model, collate([e], 0, False)).sum().item() for e in examples]
        if compiled:  # after the references: one compiled shape, the packed batch's
            monkeypatch.setenv("TUNESMITH_COMPILE_BACKEND", "inductor")
            assert compile_blocks(model) == config.num_hidden_layers
        packed_losses = per_token_losses(model, collate_packed(rows, tokenizer.pad_token_id))
    got = {}
    for r, row in enumerate(rows):
        start = 0
        for example in row:
            n = len(example.input_ids)
            # losses[t] is the loss of predicting token t+1: this example's targets are start..+n-2
            got[id(example)] = packed_losses[r, start : start + n - 1].sum().item()
            start += n
    for example, expected in zip(examples, alone):
        assert got[id(example)] == pytest.approx(expected, abs=1e-5)


def test_packing_efficiency_and_real_tokens(tokenizer):
    cfg = numbers_cfg("data.packing=true", "data.max_seq_len=64")
    data = build_dataloaders(cfg, tokenizer, 0, 1, False)
    stats, train = data.stats["train"], data.train
    assert stats.packing_efficiency == pytest.approx(stats.tokens / (stats.rows * 64))
    assert stats.packing_efficiency > 0.95
    taken = train.epoch_units(0)[: train.micro_batches_per_epoch * 4]
    expected = sum(len(e.input_ids) for row in taken for e in row)
    seen = 0
    for _ in range(train.micro_batches_per_epoch):
        batch = train.next_batch()
        assert "attention_mask" not in batch and batch["input_ids"].shape[1] <= 64
        seen += real_tokens(batch)
    assert seen == expected


def write_rows(path, n, tag):
    path.write_text(
        "".join(json.dumps({"input": f"{tag}{i}", "output": tag}) + "\n" for i in range(n)),
        encoding="utf-8",
    )
    return str(path)


def mixed_cfg(tmp_path, *extra):
    small = write_rows(tmp_path / "small.jsonl", 30, "a")
    large = write_rows(tmp_path / "large.jsonl", 270, "b")
    train = json.dumps([{"path": small, "proportion": 0.4}, {"path": large, "proportion": 0.6}])
    return load_config(
        None, [f"data.train={train}", "data.cache=false", "train.batch_size=5", *extra]
    )


def test_mixing_holds_proportions_over_an_epoch(tokenizer, tmp_path):
    data = build_dataloaders(mixed_cfg(tmp_path), tokenizer, 0, 1, False)
    train = data.train
    assert data.stats["train"].per_epoch == {
        str(tmp_path / "small.jsonl"): 120,
        str(tmp_path / "large.jsonl"): 180,
    }
    for _ in range(train.micro_batches_per_epoch):
        train.next_batch()
    used = train.used_counts()
    total = sum(used.values())
    assert total == 300
    assert abs(used[str(tmp_path / "small.jsonl")] / total - 0.4) <= 0.02
    # The up-sampled entry shows every example in the epoch (4 passes over 30).
    order = train._order_of(0)
    small_ids = {tuple(train.units[i].input_ids) for i in order if train.units[i].source == 0}
    assert len(small_ids) == 30
    # Deterministic: the same seed gives the same order; another seed does not.
    again = build_dataloaders(mixed_cfg(tmp_path), tokenizer, 0, 1, False).train
    assert again._order_of(3) == train._order_of(3)
    other = build_dataloaders(mixed_cfg(tmp_path, "seed=7"), tokenizer, 0, 1, False).train
    assert other._order_of(0) != train._order_of(0)


@pytest.mark.parametrize(
    "extra", [(), ("data.packing=true", "data.max_seq_len=32"), ("data.group_by_length=true",)]
)
def test_two_ranks_see_what_one_process_sees(tokenizer, tmp_path, extra):
    """Rank r of W takes slots so that one optimizer step's union equals 1 process x W micro-batches."""
    cfg = mixed_cfg(tmp_path, *extra)
    single = build_dataloaders(cfg, tokenizer, 0, 1, False).train
    ranks = [build_dataloaders(cfg, tokenizer, r, 2, False).train for r in range(2)]
    for _ in range(7):  # crosses an epoch boundary for the packed case too
        expected = [single.next_batch()["input_ids"] for _ in range(2)]
        got = [ranks[r].next_batch()["input_ids"] for r in range(2)]
        for e, g in zip(expected, got):
            assert torch.equal(e, g)


def test_resume_position_is_exact(tokenizer, tmp_path):
    cfg = mixed_cfg(tmp_path, "data.packing=true", "data.max_seq_len=32")
    first = build_dataloaders(cfg, tokenizer, 0, 1, False).train
    for _ in range(first.micro_batches_per_epoch + 3):
        first.next_batch()
    state = first.state_dict()
    resumed = build_dataloaders(cfg, tokenizer, 0, 1, False).train
    resumed.load_state_dict(state)
    for _ in range(4):
        a, b = first.next_batch(), resumed.next_batch()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_group_by_length_cuts_padding(tokenizer, tmp_path):
    rows = [{"input": "9" * (i % 40 + 1), "output": "x"} for i in range(320)]
    path = tmp_path / "v.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def padded_slots(group):
        cfg = load_config(
            None,
            [
                f"data.train={path}",
                "data.cache=false",
                "train.batch_size=8",
                f"data.group_by_length={group}",
            ],
        )
        train = build_dataloaders(cfg, tokenizer, 0, 1, False).train
        batches = [train.next_batch() for _ in range(train.micro_batches_per_epoch)]
        assert sum(real_tokens(b) for b in batches) == sum(len(e.input_ids) for e in train.units)
        return sum(b["input_ids"].numel() for b in batches)

    assert padded_slots(True) < 0.8 * padded_slots(False)
