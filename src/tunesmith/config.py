"""The run configuration: one dataclass per section, loaded strictly from YAML plus overrides.

    cfg = load_config("configs/quickstart.yaml", ["train.max_steps=50", "method.name=lora"])

Every field carries its help text in `metadata["help"]`; `tunesmith config --explain` prints them.
Unknown keys anywhere are errors with a "did you mean" hint. `method`, `strategy` and `objective`
are tagged unions: `name` picks the options dataclass that the method's, strategy's or objective's
own module defines, so an option of another method (`method.rho` on a LoRA run) is an unknown key
like any other.
"""

from __future__ import annotations

import dataclasses
import difflib
import keyword
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tunesmith.errors import UserError


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with help text; mutable defaults are copied per instance."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


Precision = Literal["auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16-pure"]


@dataclass
class ModelConfig:
    name: str | None = option(None, "Hub id or local folder of the base model (or of a GGUF file).")
    gguf_file: str | None = option(None, "GGUF file name inside `name` (a folder) to load from.")
    config: dict | None = option(
        None, "Build a fresh model from this HF config dict (needs `tokenizer`) instead of `name`."
    )
    tokenizer: str | None = option(None, "Tokenizer folder or hub id; default: the model's own.")
    model_class: Literal["auto", "causal", "seq2seq"] = option(
        "auto", "Decoder-only (causal) or encoder-decoder (seq2seq); auto reads the model config."
    )
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto", "Weight dtype at load; auto = bf16 for train.precision=bf16-pure, else fp32."
    )
    attn_implementation: str = option("sdpa", "Attention kernel: sdpa, eager, flash_attention_2.")
    quantization: Literal["none", "nf4", "fp4", "int8"] = option(
        "none", "Load the frozen base quantized with bitsandbytes (QLoRA): nf4, fp4 or int8."
    )
    double_quant: bool = option(True, "Nested quantization of the 4-bit scales (QLoRA).")
    trust_remote_code: bool = option(False, "Run the model repository's own Python code.")
    revision: str | None = option(None, "Hub revision (branch, tag or commit).")


@dataclass
class DataConfig:
    train: Any = option(
        None,
        "Training data: a path, glob, folder, zip or preset name, or a list of dataset entries"
        " ({path | hub | preset, split, format, fields, templates, lengths, proportion}).",
    )
    validation: Any = option(None, "Validation data (same forms as `train`).")
    test: Any = option(None, "Test data for final evaluation and `generate` (same forms).")
    preset: str | None = option(
        None,
        "Named dataset setup for every entry: samsum, grammar, jfleg, alpaca, dolly, english_quotes.",
    )
    format: str = option("input_output", "Record format: input_output, alpaca, chat, completion...")
    fields: dict = option({}, "Rename record fields, e.g. {input: dialogue, output: summary}.")
    input_format: str = option("__input__", "Prompt template; __input__ is replaced by the input.")
    output_format: str = option("__output__", "Answer template; __output__ is the output.")
    template: str | None = option(
        None, "Named prompt template of the alpaca format: stanford, plain."
    )
    system: str | None = option(None, "System message added to chat records that have none.")
    chat_template: str | None = option(
        None,
        "Named chat template for format: chat when the tokenizer has none: chatml, llama3, "
        "mistral, gemma, phi, qwen, alpaca.",
    )
    max_input_tokens: int | None = option(None, "Cut prompts to this many tokens.")
    max_output_tokens: int | None = option(None, "Cut answers to this many tokens (EOS included).")
    cutoff_len: int | None = option(
        None, "Cut prompt+answer to this many tokens (see docs/data.md, Lengths)."
    )
    overlong: Literal["truncate", "drop", "error"] = option(
        "truncate",
        "Examples over a limit: truncate (cut), drop, or error (refuse the run, with a count).",
    )
    truncation_side: Literal["right", "left"] = option(
        "right", "Which end of an over-long input to cut: right keeps its start, left its end."
    )
    train_on_inputs: bool = option(False, "Also train on prompt tokens (default: answer only).")
    val_set_size: float = option(0, "Hold out this many (or this fraction of) training examples.")
    packing: bool = option(False, "Pack several examples into one row of max_seq_len tokens.")
    max_seq_len: int | None = option(
        None,
        "Longest sequence trained on (longer examples are cut or refused, see `overlong`); "
        "with packing also the row length.",
    )
    group_by_length: bool = option(False, "Batch examples of similar length to cut padding.")
    pad_to_multiple_of: int | None = option(
        None,
        "Pad each padded batch's length up to a multiple of this (never past the longest "
        "example); default 64 when train.compile is on (few shapes to compile), else 1.",
    )
    num_workers: int = option(
        0, "Processes that tokenise large sets (2,000+ examples); 0/1: one process."
    )
    proportion: float | None = option(None, "Default sampling proportion of each dataset entry.")
    cache: bool = option(True, "Cache tokenised data on disk, keyed by data, tokenizer, settings.")
    cache_dir: str | None = option(
        None, "Folder of the tokenised-data cache; default $TUNESMITH_CACHE or ~/.cache/tunesmith."
    )


@dataclass
class TrainConfig:
    max_steps: int | None = option(None, "Optimizer steps to run; default from num_epochs.")
    num_epochs: float = option(1, "Epochs over the training data when max_steps is not set.")
    batch_size: int = option(4, "Examples per device per micro-batch.")
    grad_accum: int | None = option(None, "Micro-batches per optimizer step (default 1).")
    global_batch_size: int | None = option(
        None, "Examples per optimizer step over all devices; sets grad_accum from the world size."
    )
    lr: float | None = option(None, "Peak learning rate; default: the method's recommended one.")
    lr_schedule: Literal["constant", "linear", "cosine", "step"] = option(
        "cosine", "Decay after warmup: constant, linear, cosine, or step (x gamma every epoch)."
    )
    warmup_steps: int = option(0, "Linear warmup steps.")
    min_lr_ratio: float = option(0.0, "Floor of linear/cosine decay as a fraction of lr.")
    gamma: float = option(0.85, "Multiplier per epoch for lr_schedule=step.")
    weight_decay: float = option(0.0, "AdamW weight decay (never on norms and biases).")
    betas: list = option([0.9, 0.999], "AdamW betas.")
    eps: float = option(1e-8, "AdamW epsilon.")
    optimizer: str = option(
        "adamw",
        "Optimizer: adamw, adamw_8bit (bitsandbytes), adamw_kahan / anyprecision or "
        "adamw_stochastic (keep learning on bf16-pure weights).",
    )
    max_grad_norm: float | None = option(1.0, "Clip the global gradient norm (null: no clipping).")
    precision: Precision = option(
        "auto",
        "fp32, bf16-mixed, fp16-mixed (loss scaler), bf16-pure; auto = bf16-mixed on a CUDA GPU "
        "with bf16, else fp32 (resolved when the config loads).",
    )
    activation_checkpointing: bool = option(
        False, "Recompute activations in backward (non-reentrant)."
    )
    compile: bool | Literal["auto"] = option(
        "auto",
        "torch.compile the transformer blocks (slow first steps, faster after); auto = on for "
        "one-process runs on CUDA; off on CPU, where it measured too little gain (docs/speed.md).",
    )
    kernels: Literal["none", "liger"] = option(
        "none", "liger: Liger-Kernel's fused linear cross-entropy, RMSNorm, RoPE, SwiGLU (CUDA)."
    )
    host_memory: Literal["reuse", "system"] = option(
        "reuse",
        "CPU runs: keep freed buffers in glibc's heap for the next step instead of unmapping "
        "them (faster; RSS stays near its peak); system: leave malloc as it is.",
    )
    loss_chunk_size: int = option(
        2048, "Target positions per LM-head + cross-entropy chunk (bounds logits memory; 0: one)."
    )
    log_every: int = option(10, "Log loss, lr and throughput every N optimizer steps.")
    max_bad_steps: int = option(10, "Stop after this many non-finite steps in a row.")
    dist_timeout: int = option(1800, "Seconds a collective may wait before the run fails.")


@dataclass
class EvalConfig:
    batch_size: int | None = option(None, "Evaluation batch size; default train.batch_size.")
    eval_every: int = option(0, "Evaluate every N optimizer steps (0: before and after training).")
    run_validation: bool = option(True, "Compute validation loss and perplexity.")
    eval_before_train: bool = option(True, "Evaluate once before the first step.")
    max_batches: int | None = option(None, "Cap the validation batches per evaluation.")
    metrics: list = option(
        [], "Task metrics from generations after training (test split, else validation): rougeL..."
    )
    metrics_examples: int | None = option(200, "Score at most this many examples (null: all).")
    max_new_tokens: int = option(64, "Tokens to generate for generation metrics.")
    num_beams: int = option(1, "Beams for generation metrics.")


@dataclass
class CheckpointConfig:
    save_every: int = option(0, "Write a resume checkpoint every N steps (0: never).")
    keep_last: int = option(
        2, "Keep the newest N checkpoints (plus the best and `latest`); 0 keeps all."
    )
    best_metric: str | None = option(
        "val_loss",
        "Also keep the checkpoint best on this validation metric (measured at its own step).",
    )
    best_mode: Literal["min", "max"] = option("min", "Whether lower or higher best_metric wins.")
    save_model: bool = option(True, "Write the trained model (or adapter) to <output_dir>/final.")
    save_optimizer: bool = option(True, "Include optimizer state in resume checkpoints.")


@dataclass
class TrackingConfig:
    backends: list = option(
        [], "Experiment trackers besides metrics.jsonl: tensorboard, mlflow, wandb, aim, trackio."
    )
    run_name: str | None = option(None, "Run name shown in trackers; default: output_dir name.")
    project: str = option("tunesmith", "Project / experiment name in trackers.")
    aim_repo: str | None = option(None, "Aim repository folder; default <output_dir>/aim.")
    tensorboard_dir: str | None = option(
        None, "TensorBoard log folder; default <output_dir>/tensorboard."
    )
    mlflow_uri: str | None = option(
        None,
        "MLflow tracking URI (a server: http://host:5000); default a sqlite store in"
        " <output_dir>/mlruns.",
    )
    wandb_dir: str | None = option(None, "Folder W&B writes its wandb/ into; default <output_dir>.")
    wandb_mode: Literal["offline", "online"] = option(
        "offline", "W&B mode: offline (no account; `wandb sync` later) or online."
    )
    trackio_dir: str | None = option(
        None, "trackio's local store folder; default $TRACKIO_DIR, else <output_dir>/trackio."
    )
    plot: bool = option(True, "Write loss.png (training and validation loss) at the end.")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: Any = None  # the selected method's Options dataclass (tagged by its `name`)
    strategy: Any = None  # the selected strategy's Options dataclass
    objective: Any = None  # the selected objective's Options dataclass (sft, dpo, orpo, ...)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output_dir: str | None = option(None, "Run folder; default runs/<date-time>.")
    seed: int = option(42, "Seed for init, data order and dropout.")
    resume: str | None = option(
        None,
        "Continue a run: `auto` (newest valid checkpoint in output_dir; fresh start if none), "
        "a checkpoints/step-N folder, or a run folder.",
    )
    plugins: list = option([], "Python files that register extra data formats or metrics.")


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "checkpoint": CheckpointConfig,
    "tracking": TrackingConfig,
}
TOP_LEVEL = ("output_dir", "seed", "resume", "plugins")
DEFAULT_METHOD, DEFAULT_STRATEGY, DEFAULT_OBJECTIVE = "full", "single", "sft"
UNIONS = ("method", "strategy", "objective")


def _union_registries() -> dict[str, dict[str, type]]:
    # Imported here: the registries import torch and the methods, which config users may not need.
    from tunesmith.methods import METHODS
    from tunesmith.objectives import OBJECTIVES
    from tunesmith.strategies import STRATEGIES

    return {"method": METHODS, "strategy": STRATEGIES, "objective": OBJECTIVES}


# ---------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML recipe, apply `a.b=value` overrides, and build a strictly checked Config.

    Raises:
        UserError: unreadable file, bad YAML, unknown key (with a suggestion), wrong type.
    """
    raw: dict = {}
    source = "<overrides>"
    if path is not None:
        source = str(path)
        raw = read_yaml(Path(path))
    for item in overrides or []:
        apply_override(raw, item)
    return config_from_dict(raw, source)


def read_yaml(path: Path) -> dict:
    """Safe-load a YAML mapping, with file:line in any error."""
    if not path.is_file():
        raise UserError(f"{path}: config file not found", "check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(
            f"{where}: invalid YAML: {problem}", "check indentation and quoting"
        ) from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text", "save the file as UTF-8") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections", "see configs/")
    return data


def apply_override(raw: dict, item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (typed later by the field)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {item!r} is not key=value", "write e.g. train.max_steps=50")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def config_from_dict(raw: dict, source: str = "<config>") -> Config:
    """Build a Config from a nested dict (as read from YAML)."""
    unknown = set(raw) - set(SECTIONS) - set(TOP_LEVEL) - set(UNIONS)
    for key in sorted(unknown):
        _unknown_key(source, key, [*SECTIONS, *TOP_LEVEL, *UNIONS])
    cfg = Config()
    for name, cls in SECTIONS.items():
        setattr(cfg, name, build_dataclass(cls, raw.get(name) or {}, name, source))
    _check_entry_values(cfg.data, source)
    registries = _union_registries()
    defaults = (DEFAULT_METHOD, DEFAULT_STRATEGY, DEFAULT_OBJECTIVE)
    for name, default in zip(UNIONS, defaults):
        section = raw.get(name) or {}
        if isinstance(section, str):  # `method: lora` is shorthand for `method: {name: lora}`
            section = {"name": section}
        if not isinstance(section, dict):
            raise UserError(f"{source}: `{name}` must be a mapping", f"write {name}: {{name: ...}}")
        section = dict(section)
        tag = section.pop("name", None) or default
        registry = registries[name]
        if tag not in registry:
            _unknown_key(source, f"{name}.name={tag}", list(registry), value=tag)
        options = build_dataclass(registry[tag].Options, {**section, "name": tag}, name, source)
        setattr(cfg, name, options)
    hints = typing.get_type_hints(Config)  # resolved: `f.type` is only the annotation's text
    for key in TOP_LEVEL:
        if key in raw:
            setattr(cfg, key, coerce(raw[key], hints[key], key, source))
    if cfg.train.precision == "auto":
        from tunesmith.strategies.base import default_precision

        cfg.train.precision = default_precision(getattr(cfg.strategy, "device", None))
    return cfg


def build_dataclass(cls: type, values: Any, prefix: str, source: str) -> Any:
    """Instantiate `cls` from a mapping, checking every key and value type."""
    if not isinstance(values, dict):
        raise UserError(f"{source}: `{prefix}` must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if keyword.iskeyword(key) and f"{key}_" in names:  # `lambda` is stored as `lambda_`
            key = f"{key}_"
        if key not in names:
            _unknown_key(source, f"{prefix}.{key}", [f"{prefix}.{n}" for n in names])
        kwargs[key] = coerce(value, hints[key], f"{prefix}.{key}", source)
    return cls(**kwargs)


def coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Check `value` against a field annotation, converting obvious strings (CLI overrides)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key, source)
            except UserError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = (
            f"did you mean {close[0]!r}?" if close else f"choose one of {', '.join(map(str, args))}"
        )
        raise UserError(f"{source}: {key}={value!r} is not allowed", hint)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else _fail(value)
            except ValueError:
                pass
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif annotation in (list, dict) or origin in (list, dict):
        expected = origin or annotation
        if isinstance(value, expected):
            return value
        if expected is list and isinstance(value, (str, int, float)):
            return [value]
    else:
        return value
    kind = getattr(annotation, "__name__", str(annotation))
    raise UserError(
        f"{source}: {key} expects {kind}, got {value!r}", f"write {key}: <a {kind} value>"
    )


def _check_entry_values(data: DataConfig, source: str) -> None:
    """Check the `data` settings a dataset-list entry overrides (`overlong`, `cutoff_len`, ...)
    against the same types as the `data` keys, so a typo is refused instead of defaulting."""
    hints = typing.get_type_hints(DataConfig)
    for split in ("train", "validation", "test"):
        items = getattr(data, split)
        if not isinstance(items, list):
            continue
        checked = []
        for i, item in enumerate(items):
            if isinstance(item, dict):
                item = dict(item)
                for key in set(item) & set(hints) - {"train", "validation", "test"}:
                    if item[key] is None:
                        continue
                    line = _line_of(source, f"data.{split}.{i}.{key}")
                    where = f"{source}:{line}" if line else source
                    item[key] = coerce(item[key], hints[key], f"data.{split}[{i}].{key}", where)
            checked.append(item)
        setattr(data, split, checked)


def _fail(value: Any) -> Any:
    raise ValueError(value)


def _unknown_key(source: str, key: str, known: list[str], value: str | None = None) -> None:
    target = value if value is not None else key
    close = difflib.get_close_matches(target, known, n=1, cutoff=0.5)
    if value is not None:
        hint = f"did you mean {close[0]!r}?" if close else f"choose one of {', '.join(known)}"
        raise UserError(f"{source}: unknown {key.split('=')[0]} {value!r}", hint)
    line = _line_of(source, key)
    where = f"{source}:{line}" if line else source
    hint = (
        f"did you mean {close[0]!r}?" if close else "run `tunesmith config --explain` for all keys"
    )
    raise UserError(f"{where}: unknown key {key!r}", hint)


def _line_of(source: str, dotted: str) -> int | None:
    """The 1-based line of a dotted key in a YAML file, for error messages."""
    path = Path(source)
    if not path.is_file():
        return None
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return None
    line = None
    for part in dotted.split("."):
        if isinstance(node, yaml.SequenceNode) and part.isdigit():  # a list entry: data.train.0
            if int(part) >= len(node.value):
                return line
            node = node.value[int(part)]
            line = node.start_mark.line + 1
            continue
        if not isinstance(node, yaml.MappingNode):
            return line
        for key_node, value_node in node.value:
            if key_node.value == part:
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            return line
    return line


# ---------------------------------------------------------------- writing and explaining


def to_dict(cfg: Config) -> dict:
    """The config as plain data (what config.yaml holds); feeds back into `config_from_dict`."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


def explain(section: str | None = None) -> str:
    """Fields, types, defaults and help of one section (or all), for `tunesmith config --explain`."""
    registries = _union_registries()
    blocks: list[tuple[str, type]] = []
    wanted = section.split(".")[0] if section else None
    for name, cls in SECTIONS.items():
        if wanted in (None, name):
            blocks.append((name, cls))
    for name in UNIONS:
        for tag, impl in registries[name].items():
            if wanted in (None, name) and (
                section is None or "." not in section or section.split(".")[1] == tag
            ):
                blocks.append((f"{name} (name: {tag})", impl.Options))
    if wanted in (None, "top"):
        lines = [
            f"  {f.name}: {f.metadata.get('help', '')}"
            for f in dataclasses.fields(Config)
            if f.name in TOP_LEVEL
        ]
        out = ["top level:", *lines, ""]
    else:
        out = []
    if not blocks and not out:
        known = [*SECTIONS, *UNIONS, "top"]
        raise UserError(f"unknown config section {section!r}", f"choose one of {', '.join(known)}")
    for title, cls in blocks:
        out.append(f"{title}:")
        for f in dataclasses.fields(cls):
            if f.name == "name" and "(name:" in title:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kind = _type_name(typing.get_type_hints(cls)[f.name])
            key = f.name[:-1] if keyword.iskeyword(f.name[:-1]) else f.name  # lambda_ -> lambda
            out.append(f"  {key}: {kind} = {default!r}")
            if f.metadata.get("help"):
                out.append(f"      {f.metadata['help']}")
        out.append("")
    return "\n".join(out)


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def markdown_reference() -> str:
    """Every section's keys as markdown tables (docs/config_reference.md is this output)."""
    registries = _union_registries()
    blocks: list[tuple[str, type]] = [(name, cls) for name, cls in SECTIONS.items()]
    for union in UNIONS:
        blocks += [
            (f"{union} (name: {tag})", impl.Options) for tag, impl in registries[union].items()
        ]
    out = [
        "# Configuration reference",
        "",
        "Generated from the code by `python -m tunesmith.config --markdown`; do not edit by hand.",
        "",
        "## top level",
        "",
        "| key | default | meaning |",
        "|---|---|---|",
    ]
    for f in dataclasses.fields(Config):
        if f.name in TOP_LEVEL:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append(f"| `{f.name}` | `{default!r}` | {f.metadata.get('help', '')} |")
    for title, cls in blocks:
        out += ["", f"## {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name == "name" and "(name:" in title:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kind = _type_name(hints[f.name]).replace("|", "\\|")
            key = f.name[:-1] if keyword.iskeyword(f.name[:-1]) else f.name  # lambda_ -> lambda
            out.append(f"| `{key}` | {kind} | `{default!r}` | {f.metadata.get('help', '')} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import sys

    print(markdown_reference() if "--markdown" in sys.argv else explain(None), end="")
