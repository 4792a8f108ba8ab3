"""`tunesmith evaluate` on JFLEG: the preset's GLEU by default, scored against all 4 references."""

from __future__ import annotations

import json

import pytest

from conftest import build_tiny_model
from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.metrics import score
from tunesmith.train.run_dir import write_run_record


def test_evaluate_scores_jfleg_with_gleu_against_every_reference(
    shared_data, tokenizer, tmp_path, capsys
):
    jfleg = shared_data / "jfleg"
    cfg = load_config(None, [f"data.train={jfleg / 'dev'}", "data.preset=jfleg"])
    model_dir = tmp_path / "model"
    build_tiny_model("llama").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    write_run_record(cfg, model_dir, encoder_decoder=False)
    predictions = tmp_path / "predictions.jsonl"
    args = ["evaluate", str(model_dir), "--data", str(jfleg / "test"), "--limit", "6"]
    code = main([*args, "--max-new-tokens", "4", "--predictions", str(predictions)])
    assert code == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    printed = dict(words for words in lines if len(words) == 2)  # the score table
    assert set(printed) == {"gleu", "n_examples", "n_truncated"}  # no --metrics: the preset's

    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 6 and all(len(row["reference"]) == 4 for row in rows)
    sources = (jfleg / "test" / "test.src").read_text(encoding="utf-8").splitlines()[:6]
    expected = score(
        ["gleu"], [r["generated_text"] for r in rows], [r["reference"] for r in rows], sources
    )
    assert float(printed["gleu"]) == pytest.approx(expected["gleu"], abs=5e-5)
