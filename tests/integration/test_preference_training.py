"""Preference objectives through the real loop on the tiny number-spelling pairs."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import preference_overrides, write_pairs
from tunesmith.config import load_config
from tunesmith.train.loop import train


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_dpo_with_lora_learns_the_preference(tmp_path):
    argv = preference_overrides(
        tmp_path, "lora", 30, **{"train.lr": 1e-2, "objective.beta": 0.5, "train.log_every": 5}
    )
    summary = train(load_config(None, argv))
    logged = [r for r in rows(tmp_path / "run") if "loss" in r]
    assert logged[-1]["loss"] < logged[0]["loss"]
    assert logged[-1]["reward_margin"] > logged[0]["reward_margin"]
    for key in ("reward_chosen", "reward_rejected", "reward_accuracy", "logps_chosen"):
        assert key in logged[-1] and key in summary
    # Validation: the same metrics with the val_ prefix, in metrics.jsonl and the summary.
    assert logged[-1]["reward_accuracy"] > 0.5
    assert "val_reward_accuracy" in summary and "val_reward_margin" in summary
    assert any("val_reward_margin" in r for r in rows(tmp_path / "run"))


def test_precomputed_reference_equals_the_frozen_copy_and_is_cached(tmp_path, capsys):
    pairs = write_pairs(tmp_path / "pairs.jsonl")  # one file: the cache key covers its path
    extra = {
        "data.cache_dir": str(tmp_path / "cache"),
        "data.train": str(pairs),
        "train.log_every": 1,
    }
    copy_run = train(load_config(None, preference_overrides(tmp_path / "a", "full", 4, **extra)))
    extra["objective.precompute_reference"] = True
    first = train(load_config(None, preference_overrides(tmp_path / "b", "full", 4, **extra)))
    assert "reference log-probs: computed" in capsys.readouterr().err
    second = train(load_config(None, preference_overrides(tmp_path / "c", "full", 4, **extra)))
    assert "reference log-probs: read from the cache" in capsys.readouterr().err
    losses = [[r["loss"] for r in rows(tmp_path / d / "run") if "loss" in r] for d in "abc"]
    assert max(abs(x - y) for x, y in zip(losses[0], losses[1])) < 1e-5
    assert losses[1] == losses[2]
    assert copy_run["steps"] == first["steps"] == second["steps"] == 4


def test_reward_model_reloads_as_a_sequence_classifier(tmp_path, tokenizer):
    from transformers import AutoModelForSequenceClassification

    argv = preference_overrides(
        tmp_path, "full", 20, **{"objective.name": "reward", "train.log_every": 5}
    )
    summary = train(load_config(None, argv))
    logged = [r for r in rows(tmp_path / "run") if "loss" in r]
    assert logged[-1]["loss"] < logged[0]["loss"]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "final").eval()
    assert model.config.num_labels == 1
    chosen = tokenizer("Spell 12 in words: twelve</s>", return_tensors="pt")
    with torch.no_grad():
        score = model(**chosen).logits
    assert score.shape == (1, 1) and torch.isfinite(score).all()
    assert "val_reward_accuracy" in summary


@pytest.mark.parametrize(
    "method,extra",
    [
        ("prefix", {"method.num_virtual_tokens": 4}),
        ("prompt", {"method.num_virtual_tokens": 4}),
        ("ia3", {}),
        ("llama_adapter", {}),
        ("freeze", {"method.train_top_layers": 1}),
        ("green", {}),
    ],
)
def test_dpo_runs_with_every_other_method(tmp_path, method, extra):
    """Adapter methods use the policy with adapters disabled as the reference, freeze and green
    a frozen copy; each trains two steps and logs finite preference metrics."""
    summary = train(load_config(None, preference_overrides(tmp_path, method, 2, **extra)))
    assert summary["steps"] == 2 and summary["final_loss"] == summary["final_loss"]
    assert all(summary[k] == summary[k] for k in ("reward_margin", "val_reward_accuracy"))
