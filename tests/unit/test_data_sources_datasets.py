"""Sources read through `datasets`: files stream in bounded memory with exact file:line errors,
and a hub dataset (a local folder laid out like a hub repo) loads by config and split."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import test_data_sources as contract

from conftest import run_overrides
from tunesmith.cli import main
from tunesmith.data import readers
from tunesmith.data.readers import line_stream
from tunesmith.data.sources import DatasetEntry, read_entry, read_records, split_files
from tunesmith.errors import UserError


def peak_rss_growth(fn) -> tuple[object, int]:
    """`fn()` and how far the process's peak resident memory rose above its resident memory at
    the start (bytes; Linux: /proc/self/clear_refs resets the peak)."""

    def status(key: str) -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) * 1024

    Path("/proc/self/clear_refs").write_text("5")
    start = status("VmRSS")
    result = fn()
    return result, status("VmHWM") - start


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_a_large_jsonl_streams_in_bounded_memory_and_errors_name_the_exact_line(
    tmp_path, monkeypatch
):
    """80 MB of JSON lines: reading every record costs a fixed amount of memory (~14 MB measured,
    the same for 40 MB), not the file (the previous whole-file reader held the bytes and the
    decoded text, > 2x the file); a bad last line still names its exact line, 80 chunks in."""
    row = json.dumps({"input": "x" * 1400, "output": "y" * 600}) + "\n"
    n = 40_000
    path = tmp_path / "big.jsonl"
    path.write_text(row * n + '{"input": "last", "output": }\n', encoding="utf-8")
    size = path.stat().st_size
    monkeypatch.setattr(readers, "STREAM_MIN_BYTES", 0)  # the warm-up file streams too
    read_records(str(_small(tmp_path)))  # imports datasets' readers before measuring

    records = read_entry(DatasetEntry(path=str(path)))
    first = next(records)  # streamed: the bad last line is not reached yet
    assert first["_source"] == f"{path}:1" and len(first["input"]) == 1400

    def drain():
        count = 1
        with pytest.raises(UserError) as info:
            for _ in records:
                count += 1
        return count, info.value

    (count, error), growth = peak_rss_growth(drain)
    path.unlink()
    assert count == n
    assert f"{path}:{n + 1}: invalid JSON line" in str(error)
    measured = f"peak memory rose {growth / 1e6:.1f} MB reading a {size / 1e6:.0f} MB file"
    print(measured)
    assert growth < size / 4, measured


def _small(tmp_path: Path) -> Path:
    path = tmp_path / "small.jsonl"
    path.write_text('{"input": "1", "output": "one"}\n', encoding="utf-8")
    return path


# Every contract test of the file readers, re-run with every file (however small) read through
# `datasets`: records, file:line errors and one-line messages must not depend on the path. (The
# template check fails before any file is opened.)
CONTRACT = [n for n in dir(contract) if n.startswith("test_") and "placeholder" not in n]


@pytest.mark.parametrize("name", CONTRACT)
def test_the_reader_contract_holds_through_datasets(name, tmp_path, monkeypatch):
    import datasets

    opened = []
    load = datasets.load_dataset

    def recording_load(builder, *args, **kwargs):
        opened.append(builder)
        return load(builder, *args, **kwargs)

    monkeypatch.setattr(readers, "STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(datasets, "load_dataset", recording_load)
    getattr(contract, name)(tmp_path)
    assert opened, "no file went through datasets"


def test_records_are_the_lines_of_a_datasets_iterable_dataset(tmp_path):
    import datasets

    path = tmp_path / "mixed.jsonl"
    rows = [{"input": "01", "output": "one"}, {"input": 2, "output": None, "extra": [1]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\r\n\n", encoding="utf-8")
    (file,) = split_files(str(path))
    stream = line_stream(file)
    assert isinstance(stream, datasets.IterableDataset)
    lines = [row["text"] for row in stream]
    assert lines == [json.dumps(rows[0]) + "\n", json.dumps(rows[1]) + "\n", "\n"]
    # values exactly as written: no type unification across rows, no null filling
    records = read_records(str(path))
    assert [{k: v for k, v in r.items() if k != "_source"} for r in records] == rows
    assert [r["_source"] for r in records] == [f"{path}:1", f"{path}:2"]


def write_hub_repo(root: Path) -> Path:
    """A folder laid out like a hub dataset repo: two configs, the first with two splits."""
    for config, split, rows in (
        ("numbers", "train", [("1", "one"), ("2", "two"), ("3", "three"), ("4", "four")]),
        ("numbers", "dev", [("5", "five")]),
        ("letters", "train", [("a", "ay")]),
    ):
        folder = root / config
        folder.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"number": q, "words": a}) for q, a in rows]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: numbers\n  data_files:\n"
        "  - split: train\n    path: numbers/train.jsonl\n"
        "  - split: validation\n    path: numbers/dev.jsonl\n"
        "- config_name: letters\n  data_files:\n"
        "  - split: train\n    path: letters/train.jsonl\n"
        "---\n# numbers in words\n",
        encoding="utf-8",
    )
    return root


def test_hub_dataset_by_config_and_split_through_data_preview(tmp_path, capsys, monkeypatch):
    import datasets
    import yaml

    from tunesmith.config import apply_override

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    repo = str(write_hub_repo(tmp_path / "repo"))
    entry = {"hub": repo, "hub_config": "numbers", "fields": {"input": "number", "output": "words"}}
    raw: dict = {}
    for item in run_overrides(tmp_path, steps=1) + [f"data.cache_dir={tmp_path / 'cache'}"]:
        apply_override(raw, item)
    raw["data"]["train"] = [entry]
    raw["train"]["batch_size"] = 2
    raw["data"]["validation"] = [{**entry, "split": "validation"}]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw), encoding="utf-8")

    assert main(["data", "preview", str(recipe), "--n", "4"]) == 0
    out = capsys.readouterr().out
    assert "train: 4 examples (" in out and "validation: 1 examples (" in out
    for words in ("one", "two", "three", "four"):
        assert f"⟦ {words}</s>⟧" in out

    # another config of the same repo; a split it does not have is a one-line error (exit 2)
    letters = list(read_entry(DatasetEntry(hub=repo, hub_config="letters", split="train")))
    assert [(r["number"], r["_source"]) for r in letters] == [("a", f"hub:{repo}:letters train[0]")]
    raw["data"]["validation"] = [{**entry, "split": "test"}]
    recipe.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["data", "preview", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "(config 'numbers'), split 'test': cannot load" in err[-1] and "validation" in err[-1]
