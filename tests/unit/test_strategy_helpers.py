"""Pure parts of the scale-out strategies: DeepSpeed config building, FSDP unit discovery, and
the compatibility table in docs/compatibility.md being the one `compat` generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import ROOT, build_tiny_model
from tunesmith.config import TrainConfig
from tunesmith.errors import UserError
from tunesmith.strategies.deepspeed import DeepSpeedOptions, build_config
from tunesmith.strategies.fsdp import transformer_blocks

CPU = torch.device("cpu")


def test_deepspeed_config_follows_train_settings():
    train = TrainConfig(batch_size=4, grad_accum=3, max_grad_norm=0.5, precision="bf16-mixed")
    options = DeepSpeedOptions(stage=3, offload_optimizer="cpu", offload_param="cpu")
    config = build_config(options, train, world=2, device=CPU)
    assert config["train_batch_size"] == 4 * 3 * 2
    assert config["gradient_accumulation_steps"] == 3 and config["gradient_clipping"] == 0.5
    assert config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu"


def test_raw_deepspeed_json_merges_and_conflicts_name_both(tmp_path):
    train = TrainConfig(batch_size=4, grad_accum=2)
    raw = tmp_path / "ds.json"
    raw.write_text(json.dumps({"train_batch_size": "auto", "zero_optimization": {"stage": 1}}))
    config = build_config(DeepSpeedOptions(stage=2, deepspeed_config=str(raw)), train, 2, CPU)
    assert config["zero_optimization"]["stage"] == 1  # the raw JSON wins on engine knobs
    assert config["zero_optimization"]["contiguous_gradients"]  # merged, not replaced
    raw.write_text(json.dumps({"gradient_accumulation_steps": 8}))
    with pytest.raises(UserError, match=r"gradient_accumulation_steps=8 .*train.grad_accum"):
        build_config(DeepSpeedOptions(deepspeed_config=str(raw)), train, 2, CPU)
    raw.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(UserError, match="optimizer"):
        build_config(DeepSpeedOptions(deepspeed_config=str(raw)), train, 2, CPU)


@pytest.mark.parametrize("kind,expected", [("llama", 2), ("gpt2", 2), ("t5", 4)])
def test_fsdp_units_are_the_repeated_transformer_blocks(kind, expected):
    blocks = transformer_blocks(build_tiny_model(kind), [])
    assert len(blocks) == expected
    assert len({type(b) for b in blocks}) == 1  # T5: encoder and decoder blocks, one class


def test_compatibility_doc_shows_the_generated_table():
    from tunesmith.compat import method_strategy_table, objective_table

    doc = (ROOT / "docs" / "compatibility.md").read_text(encoding="utf-8")
    assert method_strategy_table() in doc, "regenerate: python -m tunesmith.compat --markdown"
    assert objective_table() in doc, "regenerate: python -m tunesmith.compat --markdown"


def test_unsupported_cell_is_refused_before_loading(tmp_path):
    from conftest import run_overrides
    from tunesmith.config import load_config
    from tunesmith.train.loop import train

    overrides = run_overrides(tmp_path, "llama", "green", 1, **{"strategy.name": "deepspeed"})
    with pytest.raises(UserError, match="method green .* use strategy.name=ddp"):
        train(load_config(None, overrides))
    assert not (Path(tmp_path) / "run" / "final").exists()
