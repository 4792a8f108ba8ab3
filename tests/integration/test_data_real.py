"""Real data sets from ../shared/data through presets, and a packed training run end to end."""

from __future__ import annotations

import json

import tunesmith
from conftest import run_overrides
from tunesmith.config import load_config
from tunesmith.data.loader import build_dataloaders, load_examples
from tunesmith.data.sources import read_records


def cfg_for(tmp_path, train, *extra):
    return load_config(
        None,
        [
            f"data.train={json.dumps(train)}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "train.batch_size=4",
            *extra,
        ],
    )


def test_jfleg_through_the_grammar_preset(shared_data, tokenizer, tmp_path):
    train = {"preset": "grammar", "path": str(shared_data / "jfleg" / "dev")}
    cfg = cfg_for(tmp_path, train, f"data.test={shared_data / 'jfleg' / 'test'}")
    cfg.data.preset = "grammar"  # the test entry uses the same preset
    data = build_dataloaders(cfg, tokenizer, 0, 1, False)
    assert data.stats["train"].examples == 754
    first = load_examples(cfg, "train")[0]
    assert first.prompt.startswith("Correct this to standard English: So I think we can not live")
    assert first.prompt.endswith("\n---\nCorrected: ")
    assert first.answer.startswith("So I think we would not be alive")
    assert len(data.test_examples) == 747 and len(data.test_examples[0].reference) == 4


def test_samsum_zip_splits(shared_data, tokenizer, tmp_path):
    """The zip's three splits by name; tokenised on its validation split (the 14,732 training
    dialogues take a minute with the 512-piece test tokenizer)."""
    zip_path = str(shared_data / "samsum" / "samsum.zip")
    sizes = {split: len(read_records(zip_path, split)) for split in ("train", "validation", "test")}
    assert sizes == {"train": 14732, "validation": 818, "test": 819}
    train = {"preset": "samsum", "path": zip_path, "split": "validation"}
    cfg = cfg_for(
        tmp_path, train, "data.max_input_tokens=256", "data.max_output_tokens=64", "data.test=null"
    )
    data = build_dataloaders(cfg, tokenizer, 0, 1, False)
    stats = data.stats["train"]
    assert stats.examples == 818 and stats.truncated > 0  # long dialogues are cut, and counted
    assert all(len(e.input_ids) <= 256 + 64 for e in data.train.units)
    first = data.train.units[0]
    prompt = tokenizer.decode([t for t, lab in zip(first.input_ids, first.labels) if lab == -100])
    assert prompt.startswith("Summarize this dialog:\n") and prompt.endswith("\n---\nSummary:\n")


def test_alpaca_demo_and_quotes(shared_data, tokenizer, tmp_path):
    alpaca = build_dataloaders(
        cfg_for(
            tmp_path, str(shared_data / "alpaca" / "alpaca_en_demo.json"), "data.preset=alpaca"
        ),
        tokenizer,
        0,
        1,
        False,
    )
    assert alpaca.stats["train"].examples == 999
    examples = load_examples(
        cfg_for(
            tmp_path, str(shared_data / "alpaca" / "alpaca_en_demo.json"), "data.preset=alpaca"
        ),
        "train",
    )
    assert sum("### Input:" in e.prompt for e in examples) == 412
    quotes = {"preset": "english_quotes", "path": str(shared_data / "quotes" / "tfortunes.jsonl")}
    data = build_dataloaders(cfg_for(tmp_path, quotes), tokenizer, 0, 1, False)
    assert data.stats["train"].examples == 204
    assert all(e.labels == e.input_ids for e in data.train.units)  # completion: all trained


def test_mixed_real_sets_report_per_entry_counts(shared_data, tokenizer, tmp_path):
    train = [
        {"preset": "grammar", "path": str(shared_data / "jfleg" / "dev"), "proportion": 1},
        {
            "preset": "english_quotes",
            "path": str(shared_data / "quotes" / "tfortunes.jsonl"),
            "proportion": 1,
        },
    ]
    data = build_dataloaders(cfg_for(tmp_path, train), tokenizer, 0, 1, False)
    per_epoch = list(data.stats["train"].per_epoch.values())
    assert per_epoch == [479, 479]  # (754 + 204) split evenly: quotes up-sampled


def test_packed_training_run_on_quotes(shared_data, tmp_path):
    overrides = run_overrides(
        tmp_path,
        steps=3,
        **{
            "data.train": str(shared_data / "quotes" / "tfortunes.jsonl"),
            "data.validation": "null",
            "data.preset": "english_quotes",
            "data.packing": "true",
            "data.max_seq_len": 256,
            "data.cache_dir": str(tmp_path / "cache"),
            "train.batch_size": 2,
        },
    )
    summary = tunesmith.train(load_config(None, overrides))
    assert summary["steps"] == 3 and summary["tokens_per_s"] > 0
    used = summary["examples_used"][str(shared_data / "quotes" / "tfortunes.jsonl")]
    assert used > 3 * 2  # several quotes per packed row


def test_generate_reads_the_test_split_of_a_seed003_folder(shared_data, tmp_path):
    """A run trained on a split folder; `generate` given the folder uses its test/ split and the
    run's preset prompt."""
    from tunesmith.generate import GenerationSettings, generate_file

    folder = tmp_path / "jfleg"
    src = (shared_data / "jfleg" / "dev" / "dev.src").read_text(encoding="utf-8").splitlines()
    ref = (shared_data / "jfleg" / "dev" / "dev.ref0").read_text(encoding="utf-8").splitlines()
    for split, lines in (("train", range(0, 40)), ("val", range(40, 48)), ("test", range(48, 53))):
        (folder / split).mkdir(parents=True)
        rows = [{"input": src[i], "target": ref[i]} for i in lines]
        (folder / split / "part.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
        )
    overrides = run_overrides(
        tmp_path,
        steps=2,
        **{
            "data.train": str(folder),
            "data.validation": "null",
            "data.preset": "grammar",
            "data.max_input_tokens": 48,
            "data.cache_dir": str(tmp_path / "cache"),
        },
    )
    cfg = load_config(None, overrides)
    tunesmith.train(cfg)
    out = tmp_path / "preds.jsonl"
    n = generate_file(
        cfg.output_dir, str(folder), out, GenerationSettings(max_new_tokens=4, batch_size=5)
    )
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert n == 5 and [r["input"] for r in rows] == src[48:53]
    record = json.loads((tmp_path / "run" / "final" / "tunesmith.json").read_text())
    assert record["data"]["input_format"].startswith("Correct this to standard English:")
    assert record["data"]["max_input_tokens"] == 48
