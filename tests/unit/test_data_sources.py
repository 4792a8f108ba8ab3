"""Sources: every file form, split folders and zips, presets, and a one-line error for bad data."""

from __future__ import annotations

import json
import zipfile

import pytest

from tunesmith.config import load_config
from tunesmith.data.loader import load_examples
from tunesmith.data.sources import read_records
from tunesmith.errors import UserError

ROWS = [{"input": "1", "output": "one"}, {"input": "2", "output": "two"}]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def cfg_for(**data):
    return load_config(None, [f"data.{k}={json.dumps(v)}" for k, v in data.items()])


def test_every_file_form_gives_the_same_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_jsonl(tmp_path / "a.jsonl", ROWS)
    (tmp_path / "b.json").write_text(json.dumps(ROWS), encoding="utf-8")
    (tmp_path / "c.csv").write_text("input,output\n1,one\n2,two\n", encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    for name in ("a.jsonl", "b.json", "c.csv", "d.parquet"):
        records = read_records(str(tmp_path / name))
        assert [{k: r[k] for k in ("input", "output")} for r in records] == ROWS, name


def test_plain_text_is_one_record_per_paragraph(tmp_path):
    (tmp_path / "t.txt").write_text("first line\nstill first\n\n\nsecond\n", encoding="utf-8")
    records = read_records(str(tmp_path / "t.txt"))
    assert [r["text"] for r in records] == ["first line\nstill first", "second"]
    assert records[1]["_source"].endswith("t.txt:5")


def test_seed003_folder_concatenates_each_split(tmp_path):
    write_jsonl(tmp_path / "d" / "train" / "x.jsonl", ROWS)
    write_jsonl(tmp_path / "d" / "train" / "y.jsonl", ROWS[:1])
    write_jsonl(tmp_path / "d" / "val" / "v.jsonl", ROWS[1:])
    write_jsonl(tmp_path / "d" / "test" / "t.jsonl", [{"input": "7"}])
    cfg = cfg_for(train=str(tmp_path / "d"))
    assert len(load_examples(cfg, "train")) == 3
    assert [e.answer for e in load_examples(cfg, "validation")] == ["two"]
    test = load_examples(cfg, "test")
    assert [(e.prompt, e.answer) for e in test] == [("7", None)]


def test_zip_with_split_files(tmp_path):
    archive = tmp_path / "s.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("s/train.json", "\n".join(json.dumps(r) for r in ROWS))
        z.writestr("s/validation.json", json.dumps(ROWS[0]))
    assert len(read_records(str(archive), "train")) == 2
    assert len(read_records(str(archive), "validation")) == 1
    with pytest.raises(UserError, match="no test split"):
        read_records(str(archive), "test")


def test_line_aligned_pairs(tmp_path):
    (tmp_path / "dev.src").write_text("a b\nc d\n", encoding="utf-8")
    (tmp_path / "dev.ref0").write_text("A B\nC D\n", encoding="utf-8")
    (tmp_path / "dev.ref1").write_text("A b\nC d\n", encoding="utf-8")
    records = read_records(str(tmp_path))
    assert [(r["input"], r["target"], r["references"]) for r in records] == [
        ("a b", "A B", ["A B", "A b"]),
        ("c d", "C D", ["C D", "C d"]),
    ]


def test_preset_sets_mapping_and_prompt(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"dialogue": "A: hi\nB: yo", "summary": "greet"}])
    cfg = load_config(None, [f"data.train={path}", "data.preset=samsum"])
    (ex,) = load_examples(cfg, "train")
    assert ex.prompt == "Summarize this dialog:\nA: hi\nB: yo\n---\nSummary:\n"
    assert ex.answer == "greet"


# ---------------------------------------------------------------- bad data: one line each


def one_line_error(fn, *args):
    with pytest.raises(UserError) as info:
        fn(*args)
    text = info.value.one_line()
    assert "\n" not in text
    return text


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "1", "output": "one"}\n{"input": oops}\n', encoding="utf-8")
    assert f"{path}:2: invalid JSON line" in one_line_error(read_records, str(path))


def test_missing_field_names_field_and_what_the_record_has(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"question": "1", "output": "one"}])
    cfg = cfg_for(train=str(path))
    text = one_line_error(load_examples, cfg, "train")
    assert f"{path}:1: missing field 'input' (the record has: question, output)" in text


def test_empty_split(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    assert "the split is empty" in one_line_error(read_records, str(tmp_path / "empty.jsonl"))


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"input": "1", "output": "one"}\n{"input": "caf\xe9", "output": "x"}\n')
    assert f"{path}:2: not UTF-8" in one_line_error(read_records, str(path))


def test_template_without_input_placeholder(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", ROWS)
    cfg = cfg_for(train=str(path), input_format="Spell it:")
    assert "has no __input__" in one_line_error(load_examples, cfg, "train")


def test_chat_record_without_assistant_turn(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    cfg = cfg_for(train=str(path), format="chat")
    assert f"{path}:1: chat record without an assistant turn" in one_line_error(
        load_examples, cfg, "train"
    )


def test_unknown_preset_and_csv_with_extra_values(tmp_path):
    cfg = cfg_for(train="samsun")
    assert "did you mean the preset 'samsum'" in one_line_error(load_examples, cfg, "train")
    (tmp_path / "x.csv").write_text("input,output\n1,one,extra\n", encoding="utf-8")
    assert "x.csv:2: more values" in one_line_error(read_records, str(tmp_path / "x.csv"))
