"""The tokenised-data cache (hit, identical data, key changes, shared by processes) and preview."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from conftest import NUMBERS, run_overrides
from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.data.loader import build_dataloaders


def cached_cfg(cache_dir, *extra):
    return load_config(
        None,
        [
            f"data.train={NUMBERS / 'train.jsonl'}",
            f"data.validation={NUMBERS / 'validation.jsonl'}",
            "data.input_format='Spell __input__ in words:'",
            f"data.cache_dir={cache_dir}",
            "train.batch_size=4",
            *extra,
        ],
    )


def test_second_build_reads_the_cache_and_gets_identical_data(tokenizer, tmp_path):
    first = build_dataloaders(cached_cfg(tmp_path), tokenizer, 0, 1, False)
    second = build_dataloaders(cached_cfg(tmp_path), tokenizer, 0, 1, False)
    assert not first.from_cache and second.from_cache
    assert second.train.units == first.train.units
    assert second.validation == first.validation
    assert second.stats == first.stats
    changed = build_dataloaders(
        cached_cfg(tmp_path, "data.input_format='Say __input__:'"), tokenizer, 0, 1, False
    )
    assert not changed.from_cache and changed.train.units != first.train.units
    assert len(list(tmp_path.glob("*.lock"))) == 2


def _build_slowly(cache_dir: str, queue) -> None:
    import time

    from tunesmith.data.cache import cached_splits
    from tunesmith.data.tokenize import Encoded

    def build():
        time.sleep(0.5)  # long enough for the other process to reach the lock
        queue.put("built")
        return {"train": ([Encoded([5, 6, 2], [-100, 6, 2], False)], {"examples": 1})}

    splits, hit = cached_splits(Path(cache_dir), "k", build)
    queue.put((hit, splits["train"][0][0].input_ids))


def test_concurrent_processes_build_once(tmp_path):
    """Every rank calls the cache; the first builds, the others wait on the lock and read."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_slowly, args=(str(tmp_path), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    results = [queue.get(timeout=5) for _ in range(4)]
    assert results.count("built") == 1
    assert (
        sorted(r for r in results if r != "built") == [(False, [5, 6, 2])] + [(True, [5, 6, 2])] * 2
    )


def test_preview_shows_marked_examples_and_counts(tmp_path, capsys):
    overrides = run_overrides(tmp_path, steps=1) + [
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.max_input_tokens=6",
    ]
    assert main(["data", "preview", str(write_yaml(tmp_path, overrides))]) == 0
    out = capsys.readouterr().out
    assert "⟦ four hundred and thirty-nine</s>⟧" in out
    assert "train: 400 examples (" in out and "truncated" in out
    assert "validation: 40 examples" in out
    assert "== example lengths (tokens) ==" in out and "packing into" in out


def test_preview_exits_2_with_the_location_of_bad_data(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "1", "output": "one"}\n{"input": "2", "output": }\n')
    overrides = run_overrides(tmp_path) + [f"data.train={bad}", "data.validation=null"]
    assert main(["data", "preview", str(write_yaml(tmp_path, overrides))]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: invalid JSON line" in err and len(err.strip().splitlines()) == 1


def write_yaml(tmp_path, overrides):
    """A recipe file equivalent to key=value overrides."""
    import yaml

    from tunesmith.config import apply_override

    raw: dict = {}
    for item in overrides:
        apply_override(raw, item)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_generate_reads_a_split_folder_test_split(tmp_path):
    from tunesmith.data.sources import read_records

    folder = tmp_path / "d"
    for split, rows in (("train", [{"input": "1", "output": "one"}]), ("test", [{"input": "5"}])):
        (folder / split).mkdir(parents=True)
        (folder / split / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["input"] for r in read_records(str(folder), "test")] == ["5"]


def test_tokenising_in_worker_processes_gives_the_same_examples(tokenizer, monkeypatch):
    from tunesmith.data import tokenize

    monkeypatch.setattr(tokenize, "PARALLEL_MIN", 10)
    cfg = cached_cfg("unused", "data.cache=false")
    serial = build_dataloaders(cfg, tokenizer, 0, 1, False)
    cfg.data.num_workers = 2
    parallel = build_dataloaders(cfg, tokenizer, 0, 1, False)
    assert parallel.train.units == serial.train.units and parallel.stats == serial.stats
