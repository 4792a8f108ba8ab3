"""End to end through the `tunesmith` CLI on tiny models: the run folder, reload, generate, errors."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from conftest import NUMBERS, run_overrides
from tunesmith.cli import main
from tunesmith.config import load_config


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llama")
    overrides = run_overrides(tmp, "llama", steps=30, **{"eval.eval_every": 10})
    assert main(["train", "--", *overrides]) == 0
    return tmp / "run"


def test_run_folder_has_everything(llama_run):
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "final/model.safetensors",
        "final/tokenizer.json",
        "final/tunesmith.json",
    ):
        assert (llama_run / name).is_file(), name
    summary = json.loads((llama_run / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["trainable_params"] == summary["total_params"]


def test_loss_falls_and_validation_is_logged(llama_run):
    rows = read_metrics(llama_run)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(val) == 3 and val[-1] < val[0]
    assert all({"step", "lr", "tokens_per_s"} <= r.keys() for r in rows if "loss" in r)


def test_final_reloads_with_plain_transformers_to_identical_logits(llama_run):
    model = AutoModelForCausalLM.from_pretrained(llama_run / "final").eval()
    again = AutoModelForCausalLM.from_pretrained(llama_run / "final").eval()
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    record = json.loads((llama_run / "final" / "tunesmith.json").read_text())
    assert record["data"]["input_format"] == "Spell __input__ in words:"


def test_resolved_config_runs_again_unchanged(llama_run):
    cfg = load_config(llama_run / "config.yaml")
    assert cfg.train.max_steps == 30 and cfg.method.name == "full"


def test_generate_round_trip(llama_run, tmp_path):
    out = tmp_path / "preds.jsonl"
    code = main(
        [
            "generate",
            str(llama_run),
            "--input",
            str(NUMBERS / "test.jsonl"),
            "--output",
            str(out),
            "--max-new-tokens",
            "8",
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 20 and all("generated_text" in r and "input" in r for r in rows)
    # Decoder outputs exclude the prompt.
    assert not any(r["generated_text"].startswith("Spell") for r in rows)


def test_existing_output_dir_is_protected(llama_run, capsys):
    overrides = [o for o in run_overrides(llama_run.parent, "llama", steps=1)]
    assert main(["train", "--", *overrides]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (llama_run / "final" / "model.safetensors").is_file()


def test_typo_exits_2_with_a_suggestion(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  max_step: 5\n")
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'train.max_steps'" in err and "r.yaml:2" in err


def test_malformed_jsonl_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "1", "output": "one"}\n{"input": "2", "output": \n')
    overrides = run_overrides(tmp_path, "llama", steps=1, **{"data.train": str(bad)})
    assert main(["train", "--", *overrides]) == 2
    assert f"{bad}:2: invalid JSON line" in capsys.readouterr().err


def test_encoder_decoder_end_to_end(tmp_path):
    overrides = run_overrides(tmp_path, "t5", steps=25, **{"train.lr": 1e-2})
    assert main(["train", "--", *overrides]) == 0
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5])
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "run" / "final")
    assert model.config.is_encoder_decoder
    out = tmp_path / "t5.jsonl"
    assert (
        main(
            [
                "generate",
                str(tmp_path / "run"),
                "--input",
                str(NUMBERS / "test.jsonl"),
                "--output",
                str(out),
                "--max-new-tokens",
                "6",
            ]
        )
        == 0
    )
    assert len(out.read_text().splitlines()) == 20


# Golden per-step losses of a tiny Llama (seed 42, fp32, 5 steps), recorded with the pinned stack
# (constraints.txt). A silent change in numerics (loss, masking, init, data order) moves them.
GOLDEN_LLAMA = [6.2063437, 5.8522198, 5.6038389, 5.4459785, 5.2430029]


def test_golden_losses(tmp_path):
    overrides = run_overrides(tmp_path, "llama", steps=5, **{"eval.run_validation": False})
    assert main(["train", "--", *overrides]) == 0
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert losses == pytest.approx(GOLDEN_LLAMA, rel=1e-4)
