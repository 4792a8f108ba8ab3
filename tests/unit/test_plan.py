"""The planner: exact parameter counts from a meta-device model, and arithmetic that responds to
precision, sharding, activation checkpointing and the method."""

from __future__ import annotations

import json

import pytest

from conftest import TOKENIZER, build_tiny_model, tiny_config
from tunesmith.config import load_config
from tunesmith.estimate.memory import GIB, compare_methods, plan


def cfg_for(*extra):
    return load_config(
        None,
        [
            f"model.config={json.dumps(tiny_config('llama'))}",
            f"model.tokenizer={TOKENIZER}",
            *extra,
        ],
    )


def test_counts_match_a_real_model():
    real = build_tiny_model("llama")
    p = plan(cfg_for())
    assert p.shape.total_params == sum(t.numel() for t in real.parameters())
    assert p.weights == 4 * p.shape.total_params  # fp32 weights
    assert p.optimizer == 8 * p.shape.trainable_params  # two fp32 AdamW moments


def test_bf16_pure_halves_weights_and_sharding_divides():
    full = plan(cfg_for())
    pure = plan(cfg_for("train.precision=bf16-pure"))
    assert pure.weights == pytest.approx(full.weights / 2)
    from tunesmith.strategies import STRATEGIES

    if "fsdp" in STRATEGIES:  # FULL_SHARD divides weights, gradients and optimizer by the world
        sharded = plan(cfg_for("strategy.name=fsdp"), world=4)
        assert sharded.optimizer == pytest.approx(full.optimizer / 4)
        assert sharded.weights == pytest.approx(full.weights / 4)


def test_activation_checkpointing_and_adapters_cut_memory():
    base = plan(cfg_for(), seq_len=256)
    ckpt = plan(cfg_for("train.activation_checkpointing=true"), seq_len=256)
    assert ckpt.activations < base.activations
    lora = plan(cfg_for("method.name=lora"), seq_len=256)
    assert lora.shape.trainable_params < base.shape.trainable_params / 10
    assert lora.gradients + lora.optimizer < (base.gradients + base.optimizer) / 10
    assert lora.step_flops < base.step_flops  # no weight gradients of the frozen base


def test_compare_lists_every_method():
    from tunesmith.methods import METHODS

    plans = compare_methods(cfg_for(), list(METHODS))
    assert len(plans) == len(METHODS)
    assert all(not isinstance(p, Exception) for p in plans), plans
    assert all(p.total < 1 * GIB for p in plans)


def test_a_frozen_reference_copy_is_counted_only_where_one_is_held():
    sft = plan(cfg_for())
    dpo_full = plan(cfg_for("objective.name=dpo"))
    assert dpo_full.weights - sft.weights == 4 * sft.shape.total_params  # the fp32 copy
    precomputed = plan(cfg_for("objective.name=dpo", "objective.precompute_reference=true"))
    assert precomputed.weights == sft.weights
    lora, dpo_lora = (
        plan(cfg_for("method.name=lora")),
        plan(cfg_for("method.name=lora", "objective.name=dpo")),
    )
    assert dpo_lora.weights == lora.weights  # adapters disabled: no copy
