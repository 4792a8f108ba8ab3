"""Free functions the PEFT-based methods share (lora, prefix, prompt, llama_adapter, ia3).

Each method builds its own `peft` config; these functions wrap the model with it, list and save
the adapter, and keep what is needed to rebuild a base model that has no name to reload it by.

A base built from `model.config` has random weights that exist nowhere on disk, so an adapter
alone could never be used again. Such a base is copied before the adapter is injected and written
beside the adapter as `final/base/` (a standard HF folder); `generate` and `export` load it from
there, and `PeftModel.from_pretrained(AutoModel.from_pretrained("final/base"), "final")` works.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

BASE_SUBDIR = "base"


def task_type(model: nn.Module) -> str:
    """PEFT's task type for a HF model: encoder-decoder or decoder-only language modelling."""
    return "SEQ_2_SEQ_LM" if getattr(model.config, "is_encoder_decoder", False) else "CAUSAL_LM"


def has_no_source(model: nn.Module) -> bool:
    """True when the model was built from a config dict, not loaded from a hub id or folder."""
    return not getattr(model.config, "name_or_path", "")


def wrap(model: nn.Module, peft_config: Any) -> tuple[nn.Module, nn.Module | None]:
    """Inject the adapter described by `peft_config`.

    Returns:
        (peft_model, base_copy): `base_copy` is an untouched copy of the base when the base was
        built from a config (see the module docstring), else None.
    """
    from peft import get_peft_model

    base_copy = copy.deepcopy(model) if has_no_source(model) else None
    peft_model = get_peft_model(model, peft_config)
    # Generation turns the cache back on; training keeps it off (models/load.py explains why).
    peft_model.config.use_cache = False
    return peft_model, base_copy


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors (what a checkpoint must hold), as PEFT names them in its files."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def save_adapter(
    model: nn.Module,
    tokenizer: Any,
    out_dir: Path,
    state_dict: dict[str, torch.Tensor],
    base_copy: nn.Module | None,
) -> None:
    """Write a standard PEFT adapter folder (plus `base/` when the base has no other source).

    `state_dict` is the full state of the PEFT model as the strategy gathered it; PEFT picks the
    adapter's tensors out of it, so sharded strategies save the same files as a single process.
    """
    model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    if base_copy is not None:
        base_copy.config.use_cache = True
        base_copy.save_pretrained(out_dir / BASE_SUBDIR, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir / BASE_SUBDIR)


def default_lora_targets(model_type: str) -> list[str] | None:
    """PEFT's per-architecture default LoRA target modules (None if it has none)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAP

    targets = MAP.get(model_type)
    return list(targets) if targets else None
