"""Quantized loading of the frozen base (QLoRA) through bitsandbytes.

    tunesmith train configs/qlora.yaml        # model.quantization: nf4, method: lora

`model.quantization` picks 4-bit NF4 or FP4 (with `model.double_quant` re-quantizing the scales,
and matmuls computed in the training dtype) or 8-bit (LLM.int8). Only adapter methods can train on
such a base (compat refuses the others); `lora` then prepares it for k-bit training. Whether the
installed bitsandbytes can run here is checked by quantizing a small tensor before any weights
load: CUDA always; CPU only with a bitsandbytes that has a CPU backend (0.49 and later).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from tunesmith.config import ModelConfig
from tunesmith.errors import UserError


def check_bitsandbytes(quantization: str) -> None:
    """Raise a UserError unless bitsandbytes can quantize `quantization` on this machine."""
    try:
        import bitsandbytes.functional as bnb_functional
    except ImportError:
        raise UserError(
            f"model.quantization={quantization} needs bitsandbytes, which is not installed",
            "pip install 'tunesmith[quant]' (or bitsandbytes), or set model.quantization=none",
        ) from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = torch.randn(64, 64, device=device)
    try:
        if quantization == "int8":
            bnb_functional.int8_vectorwise_quant(probe.half() if device == "cuda" else probe)
        else:
            bnb_functional.quantize_4bit(probe, quant_type=quantization)
    except (RuntimeError, NotImplementedError, AttributeError, TypeError) as exc:
        import bitsandbytes

        raise UserError(
            f"model.quantization={quantization}: bitsandbytes {bitsandbytes.__version__} cannot "
            f"run on {device} here ({str(exc).splitlines()[0][:120]})",
            "use a CUDA GPU, or bitsandbytes >= 0.49 for its CPU backend, or "
            "model.quantization=none",
        ) from None


def quantization_kwargs(model_cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """`from_pretrained` keyword arguments that load the base quantized.

    Args:
        model_cfg: the model section (quantization, double_quant).
        dtype: the dtype the rest of the model trains in; 4-bit matmuls compute in it.

    Raises:
        UserError: bitsandbytes is missing or cannot run on this machine.
    """
    from transformers import BitsAndBytesConfig

    kind = model_cfg.quantization
    check_bitsandbytes(kind)
    if kind == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=kind,
            bnb_4bit_use_double_quant=model_cfg.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
    # bitsandbytes places weights at load; on a CPU-only machine they must be told to stay there.
    # Each process of a multi-GPU run holds its own copy on its own GPU.
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device_map = {"": local_rank} if torch.cuda.is_available() else {"": "cpu"}
    return {"quantization_config": config, "device_map": device_map}
