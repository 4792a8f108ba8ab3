"""Free functions the PEFT-based methods share (lora, prefix, prompt, llama_adapter, ia3).

Each method builds its own `peft` config; these functions wrap the model with it, list and save
the adapter, and keep what is needed to rebuild a base model that has no name to reload it by.

A base built from `model.config` has random weights that exist nowhere on disk, so an adapter
alone could never be used again. Such a base is copied before the adapter is injected and written
beside the adapter as `final/base/` (a standard HF folder); `generate` and `export` load it from
there, and `PeftModel.from_pretrained(AutoModel.from_pretrained("final/base"), "final")` works.

Prompt-learning adapters (prefix, prompt) are saved as the prompt encoder's *output*
(`prompt_embeddings`). PEFT computes it by running the live encoder, which under a sharded strategy
holds shards (FSDP2 DTensors, ZeRO-3 partitions) and would need a collective that only the saving
rank joins. `save_adapter` computes it from the gathered full state instead, the same on every
strategy.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
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
    """The adapter's tensors (what a checkpoint must hold), as PEFT names them in its files.

    Prompt-learning adapters are the exception: their file holds a computed tensor the live model
    lacks, so a resume checkpoint holds the prompt encoder's parameters under the model's own
    names instead (read without running the encoder, which may hold shards).
    """
    from peft import get_peft_model_state_dict

    if getattr(model, "_is_prompt_learning", False):
        return {
            f"prompt_encoder.{model.active_adapter}.{name}": param
            for name, param in model.prompt_encoder[model.active_adapter].named_parameters()
        }
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
    adapter's tensors out of it (and prompt embeddings are computed from it), so sharded strategies
    save the same files as a single process, from the saving rank alone.
    """
    with prompt_embeddings_from(model, state_dict):
        model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    if base_copy is not None:
        base_copy.config.use_cache = True
        base_copy.save_pretrained(out_dir / BASE_SUBDIR, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir / BASE_SUBDIR)


def prompt_embedding(
    model: nn.Module, state_dict: dict[str, torch.Tensor], adapter_name: str
) -> torch.Tensor:
    """What PEFT's `get_prompt_embedding_to_save` returns, computed on CPU from `state_dict`.

    PEFT's own prompt-encoder class runs the computation (so the projection MLP of prefix tuning
    needs no code here), but a fresh, hook-free instance of it with the gathered tensors: the
    live encoder holds shards, and engines hook its forward to gather them (DeepSpeed ZeRO-3
    does so on every module), a collective only the saving rank would join.

    Raises:
        KeyError: `state_dict` lacks some of the encoder's tensors.
    """
    from peft.utils import PeftType

    config = model.peft_config[adapter_name]
    prefix = f"prompt_encoder.{adapter_name}."
    tensors = {
        k[len(prefix) :]: v.detach().cpu() for k, v in state_dict.items() if k.startswith(prefix)
    }
    encoder = standalone_prompt_encoder(model, adapter_name)
    missing = set(encoder.state_dict()) - set(tensors)
    if missing:
        raise KeyError(f"the gathered state lacks {sorted(prefix + n for n in missing)}")
    if config.inference_mode:  # PEFT saves the stored embedding as it is then
        return tensors["embedding.weight"]
    tokens = model.prompt_tokens[adapter_name].unsqueeze(0).cpu()
    if config.peft_type == PeftType.PREFIX_TUNING:
        tokens = tokens[:, : config.num_virtual_tokens]
    with torch.no_grad():
        out = torch.func.functional_call(encoder, tensors, (tokens,), strict=True)
    return out[0].detach().cpu()


def standalone_prompt_encoder(model: nn.Module, adapter_name: str) -> nn.Module:
    """A new instance of the adapter's prompt-encoder class, on the meta device (no memory, no
    engine hooks), for `functional_call` to run with real tensors.

    Raises:
        NotImplementedError: a prompt-learning type other than prefix or prompt tuning.
    """
    from peft import PromptTuningInit
    from peft.utils import PeftType

    encoder_class = type(model.prompt_encoder[adapter_name])
    config = copy.copy(model.peft_config[adapter_name])
    with torch.device("meta"):
        if config.peft_type == PeftType.PREFIX_TUNING:
            return encoder_class(config)
        if config.peft_type == PeftType.PROMPT_TUNING:
            # The weights come from the state; TEXT init would load a tokenizer by name.
            config.prompt_tuning_init = PromptTuningInit.RANDOM
            return encoder_class(config, None)
    raise NotImplementedError(f"saving {config.peft_type} adapters from a gathered state")


@contextlib.contextmanager
def prompt_embeddings_from(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> Iterator[None]:
    """While active, PEFT's save takes prompt embeddings from `state_dict` (`prompt_embedding`)
    instead of running the live, possibly sharded, prompt encoder. No-op for other adapters."""
    if not getattr(model, "_is_prompt_learning", False):
        yield
        return
    # An instance attribute shadows PeftModel's method for this save only: it is the one hook
    # PEFT's prompt-learning save goes through (BasePromptEncoder._get_adapter_state_dict).
    model.get_prompt_embedding_to_save = lambda name: prompt_embedding(model, state_dict, name)
    try:
        yield
    finally:
        del model.get_prompt_embedding_to_save


def default_lora_targets(model_type: str) -> list[str] | None:
    """PEFT's per-architecture default LoRA target modules (None if it has none)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAP

    targets = MAP.get(model_type)
    return list(targets) if targets else None
