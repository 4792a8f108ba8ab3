"""One-GPU cases of `make test-gpu` (skipped without CUDA): the speed paths on a real device.

Every registered method trains a few steps in bf16 with train.compile on (auto on CUDA); packed
rows compiled; a trained model generates on the GPU; Liger-Kernel's fused linear cross-entropy
gives tunesmith's loss and gradients. (QLoRA on one GPU is in test_gpu_smoke.py.) None of this
has run on the CPU-only machines the project was built on: this suite is the check.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_model, run_overrides
from tunesmith.config import load_config
from tunesmith.methods import METHODS
from tunesmith.train.loop import train
from tunesmith.train.loss import token_loss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
OPTIONS = {"freeze": {"method.num_freeze_layers": 1}}


def gpu_run(tmp_path: Path, method: str, steps: int = 6, **extra: object) -> dict:
    overrides = run_overrides(
        tmp_path,
        "llama",
        method,
        steps,
        **{"eval.max_batches": 2, **OPTIONS.get(method, {}), **extra},
    )
    cfg = load_config(None, overrides)
    assert cfg.train.precision == "bf16-mixed" or not torch.cuda.is_bf16_supported()
    return train(cfg)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_compiled_in_bf16(tmp_path, method):
    summary = gpu_run(tmp_path, method)
    assert summary["compile"]["enabled"], summary["compile"]
    assert summary["compile"]["graph_breaks"] == 0  # none for any method on CPU (aot_eager)
    losses = [
        json.loads(line)["loss"]
        for line in (Path(summary["output_dir"]) / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    assert all(loss == loss for loss in losses) and losses[-1] < losses[0] + 0.1


def test_packed_rows_train_compiled_with_fixed_shapes(tmp_path):
    summary = gpu_run(tmp_path, "full", 8, **{"data.packing": True, "data.max_seq_len": 64})
    assert summary["compile"]["enabled"] and summary["compile"]["compiled_graphs"] == 1


def test_a_trained_model_generates_on_the_gpu(tmp_path):
    from tunesmith.data.formats import Example
    from tunesmith.generate import GenerationSettings, generate_texts, load_for_inference

    summary = gpu_run(tmp_path, "lora", 6)
    loaded = load_for_inference(Path(summary["output_dir"]) / "final")
    model = loaded.model.to("cuda")
    texts = generate_texts(
        model,
        loaded.tokenizer,
        [Example("Spell 12 in words:", None, "12", "Spell __input__ in words:", "gpu")],
        loaded.encoder_decoder,
        GenerationSettings(max_new_tokens=8),
        progress=False,
    )
    assert len(texts) == 1 and isinstance(texts[0], str)


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="needs liger-kernel")
def test_liger_fused_loss_equals_the_chunked_loss():
    from tunesmith.train.kernels import apply_kernels

    torch.manual_seed(0)
    reference = build_tiny_model("llama").cuda().float()
    patched = build_tiny_model("llama").cuda().float()
    fused = apply_kernels("liger", patched, torch.device("cuda"))
    ids = torch.randint(3, 512, (4, 32), device="cuda")
    labels = ids.clone()
    labels[:, :10] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        want, n = token_loss(reference, batch)
        got, m = token_loss(patched, batch, fused=fused)
    assert n == m and got.item() == pytest.approx(want.item(), rel=2e-2)
    want.backward()
    got.backward()
    for (name, a), (_, b) in zip(reference.named_parameters(), patched.named_parameters()):
        assert torch.allclose(a.grad.float(), b.grad.float(), rtol=5e-2, atol=5e-3), name
