"""QLoRA on this CPU: a 4-bit NF4 (or 8-bit) base (bitsandbytes' CPU backend) trains LoRA adapters, and
`export --merge` folds them into the unquantized base."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import build_tiny_model, run_overrides
from tunesmith import load_config
from tunesmith.errors import UserError
from tunesmith.export import export
from tunesmith.train.loop import train


@pytest.fixture
def base_folder(tmp_path, tokenizer):
    model = build_tiny_model("llama")
    folder = tmp_path / "base"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def qlora_overrides(tmp_path, base_folder, quantization="nf4"):
    return run_overrides(
        tmp_path,
        "llama",
        "lora",
        12,
        **{
            "model.config": "null",
            "model.name": str(base_folder),
            "model.quantization": quantization,
            "method.target_modules": "all-linear",
            "train.lr": 3e-2,
            "data.validation": "null",
            "eval.run_validation": "false",
        },
    )


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_qlora_trains_and_merges_into_unquantized_base(quantization, tmp_path, base_folder):
    pytest.importorskip("bitsandbytes")
    summary = train(load_config(None, qlora_overrides(tmp_path, base_folder, quantization)))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0]
    # 4-bit weights are stored two per byte; the report counts weights, not bytes.
    lora_params = summary["trainable_params"]
    assert summary["total_params"] - lora_params == build_tiny_model("llama").num_parameters()

    merged_dir = export(tmp_path / "run", tmp_path / "merged", merge=True)
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not getattr(merged, "is_quantized", False)
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_quantization_refuses_full_fine_tuning(tmp_path, base_folder):
    overrides = qlora_overrides(tmp_path, base_folder) + ["method.name=full"]
    with pytest.raises(UserError, match="quantization"):
        train(load_config(None, [o for o in overrides if not o.startswith("method.target")]))
