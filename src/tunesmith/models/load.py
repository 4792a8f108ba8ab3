"""Load the model and tokenizer a run fine-tunes.

From a hub id, a local folder, a GGUF file (`model.gguf_file`), or a config dict (tiny or
from-scratch models). Decoder-only vs encoder-decoder is read from the model config unless
`model.model_class` says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from tunesmith.config import ModelConfig
from tunesmith.data.chat_templates import use_chat_template
from tunesmith.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    is_encoder_decoder: bool


def resolve_dtype(model_cfg: ModelConfig, precision: str) -> torch.dtype:
    """The weight dtype at load: explicit `model.dtype`, or bf16 only for pure-bf16 training.

    Mixed precision keeps fp32 master weights and lets autocast run matmuls in low precision.
    """
    if model_cfg.dtype != "auto":
        return DTYPES[model_cfg.dtype]
    return torch.bfloat16 if precision == "bf16-pure" else torch.float32


def _source_kwargs(model_cfg: ModelConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": model_cfg.trust_remote_code}
    if model_cfg.gguf_file:
        kwargs["gguf_file"] = model_cfg.gguf_file
    if model_cfg.revision:
        kwargs["revision"] = model_cfg.revision
    return kwargs


def load_config_of(model_cfg: ModelConfig) -> transformers.PretrainedConfig:
    """The HF config of the model, without loading weights (for compat checks and planning)."""
    if model_cfg.config is not None:
        cfg = dict(model_cfg.config)
        model_type = cfg.pop("model_type", None)
        if not model_type:
            raise UserError("model.config needs a `model_type` (llama, gpt2, t5, ...)")
        try:
            return AutoConfig.for_model(model_type, **cfg)
        except (ValueError, TypeError) as exc:
            raise UserError(f"model.config: {exc}", "check the keys of the HF config") from None
    if not model_cfg.name:
        raise UserError("model.name is not set", "set model.name to a hub id or a local folder")
    try:
        return AutoConfig.from_pretrained(model_cfg.name, **_source_kwargs(model_cfg))
    except OSError as exc:
        raise UserError(
            f"model.name={model_cfg.name!r}: cannot load its config ({str(exc).splitlines()[0]})",
            "give a local folder, or a hub id while online",
        ) from None


def check_weights_readable(model_cfg: ModelConfig) -> None:
    """Read the header of every safetensors file of a local model folder (cheap: no tensor data).

    A damaged or truncated weights file otherwise fails deep inside from_pretrained, after the
    run folder exists; this makes it a one-line error in the preflight.

    Raises:
        UserError: the first weights file whose header cannot be read.
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(model_cfg.name) if model_cfg.name and not model_cfg.gguf_file else None
    if folder is None or not folder.is_dir():
        return  # a hub id (transformers checks its download) or a GGUF file
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as weights:
                weights.keys()
        except (SafetensorError, OSError) as exc:
            raise UserError(
                f"model.name: {path} is not a readable safetensors file ({exc})",
                "re-download or re-export the model folder",
            ) from None


def is_encoder_decoder(model_cfg: ModelConfig, hf_config: transformers.PretrainedConfig) -> bool:
    """Whether the run uses AutoModelForSeq2SeqLM."""
    if model_cfg.model_class != "auto":
        return model_cfg.model_class == "seq2seq"
    return bool(getattr(hf_config, "is_encoder_decoder", False))


def model_context(hf_config: transformers.PretrainedConfig) -> int | None:
    """Positions the model can attend to (`max_position_embeddings`, GPT-2's `n_positions`).

    None for models without a fixed table (T5's relative positions): nothing is capped then.
    """
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_tokenizer(model_cfg: ModelConfig, chat_template: str | None = None) -> Any:
    """The tokenizer, with a pad token that is never EOS-removing (see `ensure_pad_token`).

    `chat_template` names a template (data/chat_templates.py) for a tokenizer that has none.
    """
    source = model_cfg.tokenizer or model_cfg.name
    if source is None:
        raise UserError("model.tokenizer is not set", "a model built from model.config needs one")
    kwargs = _source_kwargs(model_cfg) if source == model_cfg.name else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise UserError(
            f"tokenizer {source!r}: cannot load ({str(exc).splitlines()[0]})",
            "give a local folder with tokenizer files",
        ) from None
    ensure_pad_token(tokenizer)
    use_chat_template(tokenizer, chat_template)
    return tokenizer


def ensure_pad_token(tokenizer: Any) -> None:
    """Give the tokenizer a pad token without adding a new one.

    Resizing embeddings to add a pad token breaks adapters trained against the original base,
    merges and tied embeddings. An existing token is reused instead; padding is then invisible
    because of the attention mask, and labels are built from lengths (not by comparing ids with
    pad_token_id), so EOS stays trained even when pad == eos.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token


def load_model(
    model_cfg: ModelConfig,
    precision: str,
    activation_checkpointing: bool,
    tokenizer: Any = None,
    head: str = "lm",
) -> LoadedModel:
    """Build or load the model and tokenizer for training (`tokenizer`: one already loaded).

    `head="score"` (reward models) loads a one-output sequence-classification head instead of
    the LM head, so the result saves and reloads with AutoModelForSequenceClassification.

    Raises:
        UserError: missing model, unreadable folder, quantization that cannot run here.
    """
    hf_config = load_config_of(model_cfg)
    seq2seq = is_encoder_decoder(model_cfg, hf_config)
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    dtype = resolve_dtype(model_cfg, precision)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_cfg)
    if head == "score":
        from transformers import AutoModelForSequenceClassification

        auto = AutoModelForSequenceClassification
        hf_config.num_labels = 1
        # The head scores each row at its last non-padding token, found from pad_token_id.
        if hf_config.pad_token_id is None:
            hf_config.pad_token_id = tokenizer.pad_token_id
    if model_cfg.config is not None:
        if model_cfg.quantization != "none":
            raise UserError(
                f"model.quantization={model_cfg.quantization} needs pretrained weights to quantize",
                "set model.name (a folder or hub id), or model.quantization=none",
            )
        torch_default = torch.get_default_dtype()
        model = auto.from_config(
            hf_config, dtype=dtype, attn_implementation=model_cfg.attn_implementation
        )
        torch.set_default_dtype(torch_default)
    else:
        kwargs = _source_kwargs(model_cfg)
        if head == "score":
            kwargs.update(num_labels=1, pad_token_id=hf_config.pad_token_id)
        if model_cfg.gguf_file:
            # Dequantized to plain tensors: without this transformers 5 keeps its GGUF quantizer
            # on the model, which then refuses to train or to save.
            from transformers import GgufConfig

            kwargs["quantization_config"] = GgufConfig(
                gguf_file=model_cfg.gguf_file, dequantize=True
            )
        if model_cfg.quantization != "none":
            from tunesmith.models.quantize import quantization_kwargs

            kwargs.update(quantization_kwargs(model_cfg, dtype))
        check_weights_readable(model_cfg)
        try:
            model = auto.from_pretrained(
                model_cfg.name,
                dtype=dtype,
                attn_implementation=model_cfg.attn_implementation,
                **kwargs,
            )
        except OSError as exc:
            raise UserError(
                f"model.name={model_cfg.name!r}: cannot load weights ({str(exc).splitlines()[0]})",
                "give a local folder with config.json and safetensors",
            ) from None
    # The KV cache is for generation; in training it also disables transformers' per-document
    # masking of packed rows (FACTS.md: the packing trap), so it is off until generation asks.
    model.config.use_cache = False
    if activation_checkpointing:
        # Non-reentrant checkpoints do not need inputs that require grad, so backward still stops
        # at the earliest trainable tensor (Green Trainer, frozen lower layers).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # transformers 5 also makes the embeddings' output require grad (a need of reentrant
        # checkpoints only), which would force backward down to the embeddings: undo it.
        model.disable_input_require_grads()
    return LoadedModel(model=model, tokenizer=tokenizer, is_encoder_decoder=seq2seq)


def base_model_record(model_cfg: ModelConfig) -> dict[str, Any]:
    """What tunesmith.json stores so `generate` and `export` can rebuild the base model."""
    record: dict[str, Any] = {
        "name": model_cfg.name,
        "gguf_file": model_cfg.gguf_file,
        "tokenizer": model_cfg.tokenizer,
        "model_class": model_cfg.model_class,
        "revision": model_cfg.revision,
        "trust_remote_code": model_cfg.trust_remote_code,
    }
    if model_cfg.name and Path(model_cfg.name).exists():
        record["name"] = str(Path(model_cfg.name).resolve())
    if model_cfg.config is not None:
        record["config"] = model_cfg.config
    return record
