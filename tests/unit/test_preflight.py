"""Preflight: a recipe that cannot run fails with one line and exit 2 before its run folder exists,
so the same command, once fixed, is not refused for a folder the failure left behind."""

from __future__ import annotations

import json

import pytest

from conftest import run_overrides
from tunesmith.cli import main


def missing_tracker(tmp_path, monkeypatch):
    """`.[dev]` installs every tracker: the aim entry is pointed at a module nobody has."""
    import dataclasses

    from tunesmith.tracking import BACKENDS

    absent = dataclasses.replace(BACKENDS["aim"], module="aim_is_not_installed_here")
    monkeypatch.setitem(BACKENDS, "aim", absent)
    return ["tracking.backends=[aim]"]


def damaged_weights(tmp_path, monkeypatch):
    """A saved model folder whose safetensors file was cut short (a broken download)."""
    import transformers

    from conftest import TOKENIZER, tiny_config

    config = dict(tiny_config("llama"))
    config = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
    folder = tmp_path / "base"
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return ["model.config=null", f"model.name={folder}", f"model.tokenizer={TOKENIZER}"]


def bad_data(tmp_path, monkeypatch):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "1", "output": "one"}\n{not json\n', encoding="utf-8")
    return [f"data.train={path}"]


CASES = {
    "missing tracker": missing_tracker,
    "unknown tracker": lambda tmp_path, _: ["tracking.backends=[tensorbored]"],
    "unreadable data": bad_data,
    "missing data": lambda tmp_path, _: [f"data.train={tmp_path / 'nowhere.jsonl'}"],
    "template without input": lambda tmp_path, _: ["data.input_format='Spell it:'"],
    "unknown prompt template": lambda tmp_path, _: ["data.format=alpaca", "data.template=stanfrod"],
    "unknown chat template": lambda tmp_path, _: ["data.chat_template=chatmel"],
    "method x strategy": lambda tmp_path, _: ["model.quantization=nf4"],
    "examples over the limit": lambda tmp_path, _: ["data.cutoff_len=4", "data.overlong=error"],
    "damaged weights file": damaged_weights,
}


@pytest.mark.parametrize("case", list(CASES))
def test_failed_preflight_exits_2_with_one_line_and_leaves_no_folder(
    tmp_path, capsys, monkeypatch, case
):
    extra = CASES[case](tmp_path, monkeypatch)
    capsys.readouterr()  # what making the case printed (a save's progress bar)
    overrides = [*run_overrides(tmp_path, steps=1), "data.cache=false", *extra]
    code = main(["train", *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "run").exists()


def test_the_fixed_command_runs_after_a_failed_one(tmp_path, capsys):
    base = [*run_overrides(tmp_path, steps=1), "data.cache=false", "checkpoint.save_model=false"]
    assert main(["train", *base, "tracking.backends=[tensorbored]"]) == 2
    assert main(["train", *base]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 1


def test_a_typo_in_an_entry_overlong_is_refused_with_its_file_line(tmp_path, capsys):
    """`overlong` inside a `data.train` list entry is checked like `data.overlong`: a typo is a
    one-line error naming the key and its line, not a silent truncate."""
    from conftest import NUMBERS

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "data:\n  train:\n"
        f"    - path: {NUMBERS / 'train.jsonl'}\n"
        "      cutoff_len: 4\n"
        "      overlong: eror\n",
        encoding="utf-8",
    )
    overrides = [o for o in run_overrides(tmp_path, steps=1) if not o.startswith("data.train=")]
    code = main(["train", str(recipe), *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1
    assert f"{recipe}:5" in err[0] and "data.train[0].overlong='eror'" in err[0]
    assert "'error'" in err[0]  # the hint names the value meant
    assert not (tmp_path / "run").exists()

    # Spelled right, the same entry's `error` is the one that applies: the run is refused for length.
    recipe.write_text(recipe.read_text(encoding="utf-8").replace("eror", "error"), "utf-8")
    assert main(["train", str(recipe), *overrides]) == 2
    assert "longer than the limits" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
