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


def real_bytes(model, trainable: bool | None = None) -> int:
    return sum(
        p.numel() * p.element_size()
        for p in model.parameters()
        if trainable is None or p.requires_grad == trainable
    )


def test_model_dtype_sets_the_weight_bytes_as_a_real_model_stores_them():
    """LoRA on a bf16 base: the base in bf16, the adapters as PEFT keeps them (issue 16)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunesmith.methods import METHODS

    cfg = cfg_for("method.name=lora", "model.dtype=bf16", "train.precision=bf16-mixed")
    p = plan(cfg)
    tiny = tiny_config("llama")
    config = AutoConfig.for_model(tiny.pop("model_type"), **tiny)
    real = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    real = METHODS["lora"](cfg.method).apply(real, None)
    assert p.weights == real_bytes(real)
    assert p.gradients == real_bytes(real, trainable=True)
    fp32 = plan(cfg_for("method.name=lora"))
    assert p.weights < 0.6 * fp32.weights  # the frozen base dominates


def test_mixed_precision_counts_the_16bit_copy_of_fp32_matmul_weights():
    import torch

    real = build_tiny_model("llama")
    linear = sum(m.weight.numel() for m in real.modules() if isinstance(m, torch.nn.Linear))
    assert plan(cfg_for("train.precision=bf16-mixed")).autocast_copy == 2 * linear
    assert plan(cfg_for()).autocast_copy == 0
    assert plan(cfg_for("train.precision=bf16-pure")).autocast_copy == 0


def test_current_gpus_are_known():
    from tunesmith.estimate.memory import DEVICES

    for name in ("h100-80gb", "h200-141gb", "b200-180gb", "mi300x-192gb", "l40s-48gb"):
        assert DEVICES[name]["memory_gib"] == int(name.split("-")[1].removesuffix("gb"))


def test_what_would_fit_names_changes_whose_plans_fit():
    """A 1B-parameter full fp32 run on a 16 GB T4 does not fit; each suggestion, applied as the
    overrides it prints, plans to fit."""
    from tunesmith.estimate.fit import what_would_fit

    big = {**tiny_config("llama"), "hidden_size": 2048, "intermediate_size": 5504}
    big.update(num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16)
    base = [f"model.config={json.dumps(big)}", f"model.tokenizer={TOKENIZER}"]
    cfg = load_config(None, [*base, "train.batch_size=8"])
    assert not plan(cfg, device="t4-16gb", seq_len=512).fits
    suggestions = what_would_fit(cfg, "t4-16gb", 1, 512)
    assert suggestions
    for s in suggestions:
        settings = [o for o in s.overrides if "=" in o]
        again = plan(
            load_config(None, [*base, "train.batch_size=8", *settings]),
            device="t4-16gb",
            world=s.world,
            seq_len=512,
        )
        assert again.fits and again.total == pytest.approx(s.plan.total)


def test_plan_matches_the_measured_peak_of_a_real_run(tmp_path):
    """Planned peak within 15% of the live-tensor peak of a real (tiny) run, fp32 and mixed."""
    from conftest import run_overrides
    from tunesmith.estimate.measure import LiveTensorBytes
    from tunesmith.train.loop import train

    model = {**tiny_config("llama"), "hidden_size": 128, "intermediate_size": 344}
    for extra in ([], ["train.precision=bf16-mixed"]):
        overrides = run_overrides(
            tmp_path,
            steps=2,
            **{
                "model.config": json.dumps(model),
                "data.packing": "true",
                "data.max_seq_len": 128,
                "data.train_on_inputs": "true",
                "data.cache": "false",
                "eval.run_validation": "false",
                "checkpoint.save_model": "false",
            },
        )
        args = [*overrides, *extra]
        planned = plan(load_config(None, args), seq_len=128)
        with LiveTensorBytes() as live:
            train(load_config(None, args), overwrite=True)
        assert planned.total == pytest.approx(live.peak, rel=0.15), (extra, live.peak)


def test_a_frozen_reference_copy_is_counted_only_where_one_is_held():
    sft = plan(cfg_for())
    dpo_full = plan(cfg_for("objective.name=dpo"))
    assert sft.reference == 0 and dpo_full.reference == 4 * sft.shape.total_params  # fp32 copy
    assert dpo_full.total - sft.total == dpo_full.reference
    precomputed = plan(cfg_for("objective.name=dpo", "objective.precompute_reference=true"))
    assert precomputed.reference == 0
    lora, dpo_lora = (
        plan(cfg_for("method.name=lora")),
        plan(cfg_for("method.name=lora", "objective.name=dpo")),
    )
    assert dpo_lora.reference == 0 and dpo_lora.total == lora.total  # adapters disabled
    # Sharded like the policy's weights: half per process on 2-way FSDP2 and ZeRO-3.
    for strategy in (["strategy.name=fsdp"], ["strategy.name=deepspeed", "strategy.stage=3"]):
        sharded = plan(cfg_for("objective.name=dpo", *strategy), world=2)
        assert sharded.reference == dpo_full.reference / 2, strategy
    zero2 = plan(
        cfg_for("objective.name=dpo", "strategy.name=deepspeed", "strategy.stage=2"), world=2
    )
    assert zero2.reference == dpo_full.reference  # stage 2 keeps whole weights on every rank
