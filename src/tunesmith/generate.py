"""Generation from a trained model, with the same templates as training.

    tunesmith generate runs/a/final --input data.jsonl --output preds.jsonl --max-new-tokens 64

The model folder is a run's final/ (or the run folder itself): a full HF model, or a PEFT adapter
whose base is rebuilt from tunesmith.json. Each input record comes back with `generated_text`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from tunesmith.config import ModelConfig
from tunesmith.data.formats import Example, format_record
from tunesmith.data.loader import cap_of
from tunesmith.data.sources import DatasetEntry, read_records
from tunesmith.data.tokenize import encode_prompt
from tunesmith.errors import UserError
from tunesmith.models.load import ensure_pad_token, model_context
from tunesmith.train.run_dir import RUN_RECORD


@dataclass
class GenerationSettings:
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    num_beams: int = 1
    repetition_penalty: float = 1.0
    batch_size: int = 8


@dataclass
class PromptLimits:
    """How prompts are cut before generation: the training entry's `max_input_tokens` and
    `truncation_side` (right keeps the start of the input, left its end)."""

    max_input_tokens: int | None = None
    truncation_side: str = "right"


@dataclass
class PromptStats:
    """Prompts encoded and how many of them were cut (reported like the data path's counts)."""

    prompts: int = 0
    truncated: int = 0

    def describe(self, limits: PromptLimits) -> str:
        """One line: how many prompts were cut, to what and on which side."""
        line = f"{self.truncated} of {self.prompts} prompts truncated"
        if limits.max_input_tokens is not None:
            kept = "end" if limits.truncation_side == "left" else "start"
            line += f" to {limits.max_input_tokens} tokens (input {kept} kept)"
        return line


@dataclass
class LoadedForInference:
    model: Any
    tokenizer: Any
    record: dict[str, Any]
    encoder_decoder: bool


def resolve_model_dir(path: str | Path) -> Path:
    """A run folder means its final/; anything else must hold a model or an adapter."""
    path = Path(path)
    if (path / "final").is_dir():
        path = path / "final"
    if not path.is_dir():
        raise UserError(f"{path}: no such model folder", "give a run folder or its final/")
    if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
        raise UserError(f"{path}: no config.json or adapter_config.json", "is this a model folder?")
    return path


def read_run_record(model_dir: Path) -> dict[str, Any]:
    file = model_dir / RUN_RECORD
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def load_base_from_record(
    record: dict[str, Any], dtype: torch.dtype, model_dir: Path | None = None
) -> tuple[Any, Any, bool]:
    """Rebuild the base model a run started from (hub id, folder or GGUF file).

    A base built from a config dict has no other source than the copy saved beside its adapter
    (`<adapter>/base/`, see methods/peft_common.py); that copy is used when present.
    """
    base = record.get("base_model") or {}
    saved = model_dir / "base" if model_dir is not None else None
    if saved is not None and (saved / "config.json").is_file():
        auto = AutoModelForSeq2SeqLM if record.get("encoder_decoder") else AutoModelForCausalLM
        model = auto.from_pretrained(saved, dtype=dtype)
        return model, ModelConfig(name=str(saved)), bool(record.get("encoder_decoder"))
    model_cfg = ModelConfig(
        name=base.get("name"),
        gguf_file=base.get("gguf_file"),
        tokenizer=base.get("tokenizer"),
        revision=base.get("revision"),
        trust_remote_code=bool(base.get("trust_remote_code")),
    )
    if not model_cfg.name:
        raise UserError("the adapter's tunesmith.json names no base model folder or hub id")
    auto = AutoModelForSeq2SeqLM if record.get("encoder_decoder") else AutoModelForCausalLM
    kwargs = {"trust_remote_code": model_cfg.trust_remote_code}
    if model_cfg.gguf_file:
        from transformers import GgufConfig

        # Plain tensors, so a merged export of an adapter on this base can be saved.
        kwargs["gguf_file"] = model_cfg.gguf_file
        kwargs["quantization_config"] = GgufConfig(gguf_file=model_cfg.gguf_file, dequantize=True)
    model = auto.from_pretrained(model_cfg.name, dtype=dtype, **kwargs)
    return model, model_cfg, bool(record.get("encoder_decoder"))


def load_for_inference(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    adapters: dict[str, str | Path] | None = None,
    use: str | None = None,
) -> LoadedForInference:
    """Load a trained model (full folder or adapter + base) and its tokenizer for generation.

    Args:
        path: a run folder, its final/, or a model or adapter folder.
        adapters: more adapters (name -> folder) to load onto the same base: one backbone in
            memory, many small task heads. The adapter of `path` is named "default".
        use: the adapter that generates (default: "default"); switch later with
            `model.set_adapter(name)`.
    """
    model_dir = resolve_model_dir(path)
    record = read_run_record(model_dir)
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        base, _, encoder_decoder = load_base_from_record(record, dtype, model_dir)
        model = PeftModel.from_pretrained(base, model_dir)
        for name, folder in (adapters or {}).items():
            load_extra_adapter(model, record, name, folder)
        if use is not None and use != "default":
            if use not in model.peft_config:
                raise UserError(
                    f"--use {use}: no adapter of that name",
                    f"loaded: {', '.join(model.peft_config)}",
                )
            model.set_adapter(use)
    elif adapters:
        raise UserError(
            f"{model_dir} is a full model, so --adapter cannot add adapters to it",
            "give an adapter folder (a LoRA/IA3/prefix/prompt run) as the model",
        )
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir)
        encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        auto = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
        model = auto.from_pretrained(model_dir, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ensure_pad_token(tokenizer)
    model.eval()
    return LoadedForInference(model, tokenizer, record, encoder_decoder)


def load_extra_adapter(model: Any, record: dict[str, Any], name: str, folder: str | Path) -> None:
    """Load another adapter onto the PEFT model, refusing one trained on a different base."""
    extra_dir = resolve_model_dir(folder)
    if not (extra_dir / "adapter_config.json").is_file():
        raise UserError(f"--adapter {name}={folder}: not an adapter folder")
    if name in model.peft_config:
        raise UserError(f"--adapter {name}: the name is already taken", "choose another name")
    other = read_run_record(extra_dir).get("base_model")
    if other is not None and other != record.get("base_model"):
        raise UserError(
            f"--adapter {name}={folder} was trained on another base model than the first adapter",
            "adapters that share one backbone must come from runs on the same base",
        )
    try:
        model.load_adapter(extra_dir, adapter_name=name)
    except (ValueError, TypeError) as exc:
        raise UserError(
            f"--adapter {name}={folder}: {exc}", "combine adapters of one kind"
        ) from None


def entry_from_record(record: dict[str, Any], path: str) -> DatasetEntry:
    """A dataset entry for `path` (its test split when it is a split folder or zip) that applies
    the templates, presets, input limit and truncation side the run was trained with."""
    data = record.get("data") or {}
    known = {f.name for f in dataclasses.fields(DatasetEntry)} - {"path", "split"}
    return DatasetEntry(path=path, split="test", **{k: v for k, v in data.items() if k in known})


def prompt_limits(
    entry: Any, max_seq_len: int | None = None, context_len: int | None = None
) -> PromptLimits:
    """The prompt limits of a dataset entry (or anything with the same fields).

    A prompt is cut to its `max_input_tokens` and to the training length rule
    (`data.loader.cap_of`: cutoff_len, max_seq_len, the model context), as training cut it.
    """
    cap = cap_of(getattr(entry, "cutoff_len", None), max_seq_len, context_len)[0]
    given = [n for n in (getattr(entry, "max_input_tokens", None), cap) if n]
    return PromptLimits(min(given) if given else None, getattr(entry, "truncation_side", "right"))


def fit_to_model(limits: PromptLimits, model: Any, max_new_tokens: int) -> PromptLimits:
    """`limits` also cut at the model's context, less room for `max_new_tokens`: a prompt past
    a fixed position table (GPT-2) would crash generation instead of being cut."""
    context = model_context(model.config)
    if not context:
        return limits
    room = context - max_new_tokens
    return prompt_limits(limits, context_len=room if room > 0 else context)


def encode_prompts(
    tokenizer: Any, examples: list[Example], limits: PromptLimits, stats: PromptStats | None = None
) -> list[list[int]]:
    """Prompt ids of each example, cut exactly as training cuts them (inside the template, on the
    configured side); counts into `stats`."""
    out = []
    for example in examples:
        ids, cut = encode_prompt(
            tokenizer, example, limits.max_input_tokens, limits.truncation_side
        )
        out.append(ids)
        if stats is not None:
            stats.prompts += 1
            stats.truncated += cut
    return out


def generation_kwargs(settings: GenerationSettings, tokenizer: Any) -> dict[str, Any]:
    """The `model.generate` options of `settings` (sampling knobs only when sampling)."""
    return {
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": settings.do_sample,
        "temperature": settings.temperature if settings.do_sample else None,
        "top_k": settings.top_k if settings.do_sample else None,
        "top_p": settings.top_p if settings.do_sample else None,
        "num_beams": settings.num_beams,
        "repetition_penalty": settings.repetition_penalty,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "use_cache": True,
    }


@torch.no_grad()
def generate_texts(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    encoder_decoder: bool,
    settings: GenerationSettings,
    limits: PromptLimits | int | None = None,
    progress: bool = True,
    stats: PromptStats | None = None,
) -> list[str]:
    """Continuations of each example's prompt (the prompt itself excluded).

    `limits` cuts prompts as training did (an int is a `max_input_tokens` cut on the right);
    `stats` receives how many prompts were cut.
    """
    if not isinstance(limits, PromptLimits):
        limits = PromptLimits(limits)
    limits = fit_to_model(limits, model, settings.max_new_tokens)
    device = next(model.parameters()).device
    prompts = encode_prompts(tokenizer, examples, limits, stats)
    # Batches of similar lengths pad less: prompts go in by length, answers come back in order.
    by_length = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    batches = range(0, len(prompts), settings.batch_size)
    for start in tqdm(batches, disable=not progress, desc="generate", unit="batch"):
        chunk = by_length[start : start + settings.batch_size]
        batch = [prompts[i] for i in chunk]
        width = max(len(p) for p in batch)
        pad = tokenizer.pad_token_id
        # Decoder-only models continue from the last position, so prompts are padded on the left.
        if encoder_decoder:
            ids = [p + [pad] * (width - len(p)) for p in batch]
            mask = [[1] * len(p) + [0] * (width - len(p)) for p in batch]
        else:
            ids = [[pad] * (width - len(p)) + p for p in batch]
            mask = [[0] * (width - len(p)) + [1] * len(p) for p in batch]
        generated = model.generate(
            input_ids=torch.tensor(ids, device=device),
            attention_mask=torch.tensor(mask, device=device),
            **generation_kwargs(settings, tokenizer),
        )
        new_tokens = generated if encoder_decoder else generated[:, width:]
        for i, text in zip(chunk, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
            outputs[i] = text
    return [o.strip() for o in outputs]


def generate_file(
    model_path: str | Path,
    input_path: str,
    output_path: str | Path,
    settings: GenerationSettings,
    adapters: dict[str, str | Path] | None = None,
    use: str | None = None,
    log: Callable[[str], None] | None = None,
) -> int:
    """Read records, generate, write them back with `generated_text`. Returns the record count.

    Prompts are cut with the run's `max_input_tokens` and `truncation_side`; how many were cut
    goes to `log` (default: stderr).
    """
    output_path = Path(output_path)
    if output_path.exists():
        raise UserError(f"{output_path} already exists", "choose another --output or delete it")
    loaded = load_for_inference(model_path, adapters=adapters, use=use)
    entry = entry_from_record(loaded.record, input_path)
    records = read_records(input_path, entry.split)
    examples = [format_record(r, entry) for r in records]
    max_seq_len = (loaded.record.get("data") or {}).get("max_seq_len")
    limits = fit_to_model(prompt_limits(entry, max_seq_len), loaded.model, settings.max_new_tokens)
    stats = PromptStats()
    texts = generate_texts(
        loaded.model,
        loaded.tokenizer,
        examples,
        loaded.encoder_decoder,
        settings,
        limits,
        stats=stats,
    )
    (log or _stderr)(f"generate: {stats.describe(limits)}")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(output_path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record, text in zip(records, texts):
            row = {k: v for k, v in record.items() if k != "_source"}
            f.write(json.dumps({**row, "generated_text": text}, ensure_ascii=False) + "\n")
    tmp.rename(output_path)
    return len(records)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)
