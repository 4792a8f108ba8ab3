"""Write a Llama-family model as one GGUF file for llama.cpp and Ollama.

    tunesmith export runs/a --gguf a.gguf                # f16
    tunesmith export runs/a --gguf a-q8.gguf --quant q8_0

Llama, Mistral and SmolLM (all `model_type: llama` or `mistral`, llama.cpp's `llama` graph) and
Qwen2 (`qwen2`) are written with the `gguf` package's own writer, tensor names from its
TensorNameMap and quantizers from `gguf.quants`. A LoRA/IA3 adapter is merged into its base first
(export.py). The tokenizer goes in too: a SentencePiece-style BPE with byte fallback (Llama 2,
Mistral, stories260K) as llama.cpp's `llama` tokenizer, a byte-level BPE (GPT-2, Qwen2, Llama 3)
as its `gpt2` tokenizer with the matching pre-tokenizer name, plus the chat template.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.errors import UserError

QUANTS = ("f16", "bf16", "q8_0")

# HF model_type -> llama.cpp architecture, and whether q/k rows need permuting back: HF stores
# Llama's q/k in rotate-half order, llama.cpp's `llama` graph uses interleaved (Meta) RoPE, while
# its `qwen2` graph uses rotate-half (NeoX) RoPE like HF.
ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False)}

# The pre-tokenizer regexes of byte-level BPE tokenizers, by llama.cpp's name for them.
PRE_TOKENIZERS = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


def check_gguf_model(model_type: str) -> None:
    """A one-line error for a model llama.cpp's graphs written here do not cover."""
    if model_type not in ARCHITECTURES:
        raise UserError(
            f"--gguf: model_type {model_type!r} is not in the Llama family",
            f"GGUF export supports {', '.join(ARCHITECTURES)}; export an HF folder with --out",
        )


def write_gguf(model: Any, tokenizer: Any, out: Path, quant: str = "f16") -> Path:
    """Write `model` (a plain HF causal LM, adapters already merged) and its tokenizer to `out`."""
    import gguf

    if quant not in QUANTS:
        raise UserError(f"--quant {quant!r} is not supported", f"choose one of {', '.join(QUANTS)}")
    config = model.config
    check_gguf_model(config.model_type)
    arch_name, permute_qk = ARCHITECTURES[config.model_type]
    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[arch_name]
    writer = gguf.GGUFWriter(str(out), arch_name)
    writer.add_name(Path(str(getattr(config, "_name_or_path", "") or out.stem)).name or out.stem)
    _write_hparams(writer, config, quant)
    _write_tokenizer(writer, tokenizer, config)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    state = {k: v.detach().to(torch.float32) for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # llama.cpp reuses token_embd when output is absent
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    for hf_name, tensor in state.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"--gguf: no GGUF name for tensor {hf_name}", "this model is not plain")
        data = tensor.numpy()
        if permute_qk and hf_name.endswith("q_proj.weight"):
            data = _unpermute(data, heads)
        elif permute_qk and hf_name.endswith("k_proj.weight"):
            data = _unpermute(data, kv_heads)
        _add_tensor(writer, name, data, quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _unpermute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Rotate-half row order (HF) -> interleaved pairs (llama.cpp), as convert_hf_to_gguf does."""
    shape = weights.shape
    return (
        weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
        .swapaxes(1, 2)
        .reshape(shape)
    )


def _add_tensor(writer: Any, name: str, data: np.ndarray, quant: str) -> None:
    """1-D tensors (norms, biases) stay f32; matrices take the asked type. A q8_0 matrix whose
    rows are not a multiple of the 32-value block falls back to f16, as llama.cpp's converter does."""
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    if data.ndim < 2:
        writer.add_tensor(name, data.astype(np.float32))
        return
    qtype = {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[quant]
    if qtype == Q.Q8_0 and data.shape[-1] % quants.GGML_QUANT_SIZES[Q.Q8_0][0] != 0:
        qtype = Q.F16
    if qtype == Q.F16:
        writer.add_tensor(name, data.astype(np.float16))
        return
    writer.add_tensor(name, quants.quantize(data, qtype), raw_dtype=qtype)


def _write_hparams(writer: Any, config: Any, quant: str) -> None:
    from gguf import LlamaFileType

    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UserError(
            f"--gguf: rope_type {rope['rope_type']!r} is not written by this exporter",
            "use llama.cpp's convert_hf_to_gguf.py on an --out --merge export",
        )
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 1e4))))
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    file_type = {"f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}[quant]
    writer.add_file_type(LlamaFileType[file_type])


def _write_tokenizer(writer: Any, tokenizer: Any, config: Any) -> None:
    """The vocabulary as llama.cpp tokenizes it, padded to the embedding rows, and the specials."""
    from gguf import TokenType

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise UserError(
            f"--gguf: a {model.get('type')} tokenizer is not written by this exporter",
            "only BPE tokenizers (SentencePiece-style with byte fallback, or byte-level) are",
        )
    vocab: dict[str, int] = dict(model["vocab"])
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    vocab.update(specials)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    size = max(config.vocab_size, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [TokenType.UNUSED] * size
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = TokenType.NORMAL
    special_ids = {i for t, i in specials.items() if _is_special(spec, t)}
    for i in special_ids:
        types[i] = TokenType.CONTROL
    if tokenizer.unk_token_id is not None and tokenizer.unk_token in vocab:
        types[tokenizer.unk_token_id] = TokenType.UNKNOWN
    if model.get("byte_fallback"):
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        for text, i in vocab.items():
            if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
                types[i] = TokenType.BYTE
        # llama.cpp's SentencePiece tokenizer merges the highest-scoring pair first: a token's
        # score is minus the rank of the merge that makes it, so it merges in the BPE's order.
        scores = [0.0] * size
        for rank, merge in reversed(list(enumerate(merges))):  # the first merge making it wins
            made = merge.replace(" ", "", 1)
            if made in vocab:
                scores[vocab[made]] = -float(rank + 1)
        writer.add_token_scores(scores)
        writer.add_add_space_prefix(_prepends_space(spec))
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_tokenizer_name(spec))
        writer.add_token_merges(merges)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    bos = tokenizer.bos_token_id
    writer.add_add_bos_token(bos is not None and tokenizer("a")["input_ids"][:1] == [bos])
    writer.add_add_eos_token(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _is_special(spec: dict[str, Any], text: str) -> bool:
    return any(t["content"] == text and t.get("special") for t in spec.get("added_tokens", []))


def _prepends_space(spec: dict[str, Any]) -> bool:
    """Whether the normalizer prepends '▁' (SentencePiece's add_dummy_prefix)."""
    norm = spec.get("normalizer") or {}
    steps = norm.get("normalizers", [norm])
    return any(s.get("type") == "Prepend" for s in steps) or any(
        s.get("prepend_scheme") in ("always", "first") for s in [spec.get("pre_tokenizer") or {}]
    )


def _pre_tokenizer_name(spec: dict[str, Any]) -> str:
    """llama.cpp's name for a byte-level BPE's pre-tokenizer, found from its split regex."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    kinds = [
        (step.get("type"), step.get("use_regex"), step.get("individual_digits")) for step in steps
    ]
    if kinds == [("ByteLevel", True, None)]:
        return "gpt-2"
    if kinds == [("Digits", None, True), ("ByteLevel", True, None)]:
        return "smollm"  # SmolLM's digits one by one, then GPT-2's split
    for step in steps:
        pattern = (step.get("pattern") or {}).get("Regex")
        for name, regex in PRE_TOKENIZERS.items():
            if pattern == regex:
                return name
    raise UserError(
        "--gguf: the tokenizer's pre-tokenizer is not one llama.cpp is known to match here",
        "use llama.cpp's convert_hf_to_gguf.py on an --out --merge export",
    )
