"""The one length rule: cutoff_len, max_seq_len and the model context cap every example.

Each case builds the same data without limits first, so the expected cut count is measured, not
written down: every example longer than the cap is cut (or refused), none is longer after.
"""

from __future__ import annotations

import json

import pytest

from conftest import NUMBERS, TOKENIZER, numbers_cfg, tiny_config
from tunesmith.data.loader import build_dataloaders, describe_stats
from tunesmith.errors import UserError


def lengths_without_limits(tokenizer):
    bundle = build_dataloaders(numbers_cfg(), tokenizer, 0, 1, False)
    return [len(e.input_ids) for e in bundle.train.examples]


def trained_lengths(bundle):
    units = bundle.train.epoch_units(0) if bundle.train.packed else bundle.train.examples
    return [len(e.input_ids) for u in units for e in (u if isinstance(u, list) else [u])]


CASES = {
    "cutoff only": ((("data.cutoff_len", 0),), None, "cutoff_len"),
    "max_seq_len only": ((("data.max_seq_len", 0),), None, "max_seq_len"),
    "max_seq_len packed": (
        (("data.max_seq_len", 0), ("data.packing", "true")),
        None,
        "max_seq_len",
    ),
    "both": ((("data.cutoff_len", 1), ("data.max_seq_len", 0)), None, "max_seq_len"),
    "model context shortest": (
        (("data.cutoff_len", 2), ("data.max_seq_len", 3)),
        0,
        "the model context",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_example_fits_the_smallest_limit_and_the_cut_are_counted(tokenizer, case):
    settings, context_offset, source = CASES[case]
    full = lengths_without_limits(tokenizer)
    median = max(full) - 2  # some examples are over the cap
    extra = [f"{k}={median + v if isinstance(v, int) else v}" for k, v in settings]
    context = None if context_offset is None else median + context_offset
    bundle = build_dataloaders(numbers_cfg(*extra), tokenizer, 0, 1, False, context)
    stats = bundle.stats["train"]
    cap = median
    assert stats.limit == cap and stats.limit_source == source
    assert max(trained_lengths(bundle)) <= cap
    assert stats.truncated == sum(n > cap for n in full) > 0
    assert stats.longest == max(full)
    assert stats.max_len == cap
    line = describe_stats("train", stats)
    assert f"{stats.truncated} truncated" in line and f"max {cap}" in line and source in line


def test_refuse_mode_names_the_count_before_anything_trains(tokenizer):
    full = lengths_without_limits(tokenizer)
    cap = max(full) - 2
    over = sum(n > cap for n in full)
    cfg = numbers_cfg(f"data.max_seq_len={cap}", "data.overlong=error")
    with pytest.raises(UserError) as caught:
        build_dataloaders(cfg, tokenizer, 0, 1, False)
    assert f"{over} of {len(full)} examples are longer" in str(caught.value)
    assert "max_seq_len" in str(caught.value)


def test_drop_mode_keeps_only_what_fits(tokenizer):
    full = lengths_without_limits(tokenizer)
    cap = max(full) - 2
    bundle = build_dataloaders(
        numbers_cfg(f"data.cutoff_len={cap}", "data.overlong=drop"), tokenizer, 0, 1, False
    )
    assert bundle.stats["train"].dropped == sum(n > cap for n in full)
    assert sorted(trained_lengths(bundle)) == sorted(n for n in full if n <= cap)


def test_preview_reports_lengths_and_the_model_context_cap(tmp_path, capsys):
    """`data preview` on a model with fewer positions than the examples: cut and said so."""
    from tunesmith.cli import main

    model = {**tiny_config("llama"), "max_position_embeddings": 12}
    code = main(
        [
            "data",
            "preview",
            "--n",
            "1",
            f"model.config={json.dumps(model)}",
            f"model.tokenizer={TOKENIZER}",
            f"data.train={NUMBERS / 'train.jsonl'}",
            "data.input_format='Spell __input__ in words:'",
            "data.output_format=' __output__'",
            "data.cache=false",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "cap 12 from the model context" in out and "p95" in out
    assert "train: 400 examples (0 truncated" not in out
