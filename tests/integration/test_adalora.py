"""AdaLoRA through the one loop: ranks are reallocated from gradient importance during training
(the optimizer post-step hook), saved in the adapter's rank_pattern, and the adapter reloads."""

from __future__ import annotations

import json

import torch

from conftest import run_overrides
from tunesmith import load_config
from tunesmith.generate import load_for_inference
from tunesmith.train.loop import train


def test_adalora_reallocates_ranks_and_reloads(tmp_path):
    overrides = run_overrides(
        tmp_path,
        "llama",
        "lora",
        8,
        **{
            "method.variant": "adalora",
            "method.total_step": 8,
            "method.tinit": 2,
            "method.tfinal": 2,
            "method.init_r": 6,
            "method.target_r": 5,
            "data.validation": "null",
            "eval.run_validation": "false",
            "train.lr": 3e-2,
        },
    )
    train(load_config(None, overrides))
    config = json.loads((tmp_path / "run" / "final" / "adapter_config.json").read_text())
    ranks = [sum(mask) for mask in config["rank_pattern"].values()]
    assert ranks and min(ranks) < 6  # some of the initial rank was pruned
    assert sum(ranks) <= 5 * len(ranks)  # to the target average budget
    model = load_for_inference(tmp_path / "run").model
    ids = torch.tensor([[1, 40, 41, 42]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
