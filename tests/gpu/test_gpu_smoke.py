"""GPU smoke suite: `make test-gpu` on a machine with CUDA (skipped without it).

nccl DDP, FSDP2 and ZeRO-2/3 in bf16 on 2 GPUs through the real loop, and QLoRA (4-bit NF4
base + LoRA) on one GPU. These paths have not been run on the CPU-only machines the project was
built on; this suite is how a user with GPUs checks them in one command.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
STRATEGIES = {
    "ddp": {"strategy.name": "ddp"},
    "fsdp": {"strategy.name": "fsdp"},
    "zero2": {"strategy.name": "deepspeed", "strategy.stage": 2},
    "zero3": {"strategy.name": "deepspeed", "strategy.stage": 3},
}


@pytest.fixture(scope="module")
def two_gpu_runs(tmp_path_factory) -> dict:
    from launches import launch, train_case, wide_targets

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    tmp = tmp_path_factory.mktemp("gpu")
    data = wide_targets(tmp)
    plan = [
        train_case(tmp, data, name, "full", 2, **{**overrides, "train.precision": "bf16-mixed"})
        for name, overrides in STRATEGIES.items()
    ]
    return launch(2, plan, tmp, "gpu")


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_bf16_on_two_gpus_with_nccl(two_gpu_runs, strategy):
    result = two_gpu_runs[strategy]
    assert "error" not in result, result.get("error")
    losses = result["losses"]
    assert result["world"] == 2 and all(loss == loss for loss in losses)
    assert losses[-1] < losses[0] + 0.1


def test_qlora_4bit_on_one_gpu(tmp_path):
    from conftest import TOKENIZER, build_tiny_model, run_overrides
    from tunesmith.config import load_config
    from tunesmith.train.loop import train

    base = tmp_path / "base"
    build_tiny_model("llama").save_pretrained(base)
    overrides = run_overrides(
        tmp_path,
        "llama",
        "lora",
        10,
        **{
            "model.config": "null",
            "model.name": str(base),
            "model.tokenizer": str(TOKENIZER),
            "model.quantization": "nf4",
            "train.precision": "bf16-mixed",
        },
    )
    summary = train(load_config(None, overrides))
    assert summary["final_loss"] is not None and summary["final_loss"] == summary["final_loss"]
    assert (Path(summary["output_dir"]) / "final" / "adapter_config.json").exists()
