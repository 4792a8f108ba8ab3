"""The hardware limit a training benchmark is measured against: matmul peak and model FLOPs.

Not a benchmark itself (the leading underscore keeps `run_all.py` from running it).

- `matmul_peak`: achieved FLOP/s of bf16 and fp32 matrix multiplies of the model's own GEMM
  shapes (attention projections, MLP, LM head) with the torch thread count of the process; the
  best shape per dtype is the peak (the most any training step could get from its matmuls).
- `flops_per_token`: model FLOPs of one trained token, PaLM's definition (Chowdhery et al. 2022,
  appendix B): 6 N + 6 h V + 12 L h T, with N the non-embedding parameters, h the hidden size,
  V the vocabulary (the LM head), L the layers and T the attended context.
"""

from __future__ import annotations

import time
from typing import Any


def gemm_shapes(model: dict[str, Any], tokens: int) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of the model's matmuls for `tokens` rows; the head on half of them (targets)."""
    h, inter, vocab = model["hidden_size"], model["intermediate_size"], model["vocab_size"]
    return {
        "attn_proj": (tokens, h, h),
        "mlp_up": (tokens, h, inter),
        "mlp_down": (tokens, inter, h),
        "lm_head": (max(tokens // 2, 1), h, vocab),
    }


def matmul_peak(
    model: dict[str, Any], tokens: int, device: str = "cpu", min_seconds: float = 0.3
) -> dict[str, Any]:
    """{"bf16": FLOP/s, "fp32": FLOP/s, "per_shape": {...}} measured here and now."""
    import torch

    per_shape: dict[str, dict[str, float]] = {}
    peak = {}
    for label, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        best = 0.0
        for name, (m, k, n) in gemm_shapes(model, tokens).items():
            a = torch.randn(m, k, dtype=dtype, device=device)
            b = torch.randn(k, n, dtype=dtype, device=device)
            rate = _time_matmul(a, b, min_seconds, device)
            per_shape.setdefault(name, {})[label] = rate
            best = max(best, rate)
        peak[label] = best
    return {**peak, "per_shape": per_shape, "shapes": gemm_shapes(model, tokens)}


def _time_matmul(a: Any, b: Any, min_seconds: float, device: str) -> float:
    import torch

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    # Into one preallocated output: a fresh one per product would time the allocator (a large
    # CPU buffer is a new mmap whose pages are zero-filled on first touch), not the GEMM.
    out = torch.empty(a.shape[0], b.shape[1], dtype=a.dtype, device=a.device)
    for _ in range(2):
        torch.matmul(a, b, out=out)
    sync()
    best = 0.0
    for _ in range(3):  # the best of three windows: the peak, not the load of the moment
        reps, start = 0, time.perf_counter()
        while True:
            torch.matmul(a, b, out=out)
            reps += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds / 3 and reps >= 3:
                break
        best = max(best, 2 * a.shape[0] * a.shape[1] * b.shape[1] * reps / elapsed)
    return best


def non_embedding_params(model: dict[str, Any]) -> int:
    """Parameters of the blocks and the final norm (Llama layout, grouped-query aware)."""
    h, inter, layers = model["hidden_size"], model["intermediate_size"], model["num_hidden_layers"]
    heads = model["num_attention_heads"]
    kv = model.get("num_key_value_heads", heads) * (h // heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h
    return layers * per_layer + h


def flops_per_token(model: dict[str, Any], context: float) -> dict[str, float]:
    """PaLM model FLOPs per token (forward + backward), and its three parts."""
    h, vocab, layers = model["hidden_size"], model["vocab_size"], model["num_hidden_layers"]
    parts = {
        "dense": 6.0 * non_embedding_params(model),
        "lm_head": 6.0 * h * vocab,
        "attention": 12.0 * layers * h * context,
    }
    return {"total": sum(parts.values()), **parts, "context": context}


def attended_context(lengths: list[int]) -> float:
    """Token-weighted mean example length: the context an average trained token attends to
    (each example attends within itself, padded or packed; causal masking is not halved, as in
    PaLM's formula)."""
    total = sum(lengths)
    return sum(n * n for n in lengths) / total if total else 0.0
