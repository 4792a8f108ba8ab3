"""What a run needs per device, before it launches: memory by component and FLOPs per step.

    tunesmith plan configs/lora.yaml --device a100-80gb --gpus 8
    tunesmith plan configs/full.yaml --compare        # every method side by side

Pure arithmetic from first principles on top of exact parameter counts: the model is built on the
meta device (no weights are read or allocated) and the method is applied to it, so trainable
counts are the real ones. Memory per device is

    weights + gradients + optimizer states + activations (+ logits), each divided by the sharding
    the strategy applies,

with bytes per element set by `train.precision` and `train.optimizer`. Activations follow
Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"):
about 34·s·b·h bytes per layer in 16-bit for a 4h MLP with memory-efficient attention, scaled here
by the real MLP width and by 2 for fp32 activations; with activation checkpointing a layer keeps
only its input (2·s·b·h bytes) plus one layer recomputed at a time. Only layers at or above the
earliest trainable tensor keep activations. Figures are estimates: allocator fragmentation,
framework buffers and communication buckets add ~10-20% in practice.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

GIB = 2**30

# Peak dense matmul throughput (TFLOP/s) in the precision each device trains fastest in, and memory.
# CPU figures are this project's measurement on 2 cores (FACTS.md); GPU ones are vendor peaks.
DEVICES: dict[str, dict[str, float]] = {
    "cpu": {"memory_gib": 24, "tflops_fp32": 0.19, "tflops_16": 0.58, "mfu": 0.7},
    "t4-16gb": {"memory_gib": 16, "tflops_fp32": 8.1, "tflops_16": 65, "mfu": 0.35},
    "v100-32gb": {"memory_gib": 32, "tflops_fp32": 15.7, "tflops_16": 125, "mfu": 0.4},
    "a10g-24gb": {"memory_gib": 24, "tflops_fp32": 31, "tflops_16": 125, "mfu": 0.4},
    "l4-24gb": {"memory_gib": 24, "tflops_fp32": 30, "tflops_16": 121, "mfu": 0.4},
    "rtx4090-24gb": {"memory_gib": 24, "tflops_fp32": 82, "tflops_16": 165, "mfu": 0.4},
    "a100-40gb": {"memory_gib": 40, "tflops_fp32": 19.5, "tflops_16": 312, "mfu": 0.45},
    "a100-80gb": {"memory_gib": 80, "tflops_fp32": 19.5, "tflops_16": 312, "mfu": 0.45},
    "h100-80gb": {"memory_gib": 80, "tflops_fp32": 67, "tflops_16": 989, "mfu": 0.4},
}

WEIGHT_BYTES = {"nf4": 0.53, "fp4": 0.53, "int8": 1.06}  # incl. block scales
OPTIMIZER_BYTES = {"adamw": 8, "adamw_8bit": 2, "adamw_bf16": 6}


@dataclass
class ModelShape:
    """What the arithmetic needs from a model, read off a meta-device instance."""

    total_params: int
    trainable_params: int
    embedding_params: int  # input embedding (+ untied head): no matmul FLOPs per token for lookup
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    first_trainable_layer: int  # index of the earliest block holding a trainable tensor
    encoder_decoder: bool


@dataclass
class Plan:
    """Per-device bytes by component, FLOPs per step and a time estimate."""

    method: str
    shape: ModelShape
    weights: float
    gradients: float
    optimizer: float
    activations: float
    cpu_offloaded: float
    step_flops: float
    step_seconds: float
    device: str
    device_memory: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    @property
    def fits(self) -> bool:
        return self.total * 1.15 <= self.device_memory  # 15% headroom for the allocator


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer block lists (decoder, or encoder + decoder), found generically."""
    lists = [
        m
        for m in model.modules()
        if isinstance(m, nn.ModuleList) and len(m) > 1 and len({type(x) for x in m}) == 1
    ]
    return [block for ml in lists for block in ml]


def model_shape(cfg: Any) -> ModelShape:
    """Build the configured model on the meta device, apply the method, and measure it."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from tunesmith.methods import METHODS
    from tunesmith.methods.base import count_parameters
    from tunesmith.models.load import is_encoder_decoder, load_config_of, load_tokenizer

    hf_config = load_config_of(cfg.model)
    seq2seq = is_encoder_decoder(cfg.model, hf_config)
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(hf_config)
    total_before, _ = count_parameters(model)
    tokenizer = None
    with contextlib.suppress(Exception):  # prompt-tuning TEXT init wants one; others do not
        tokenizer = load_tokenizer(cfg.model)
    method = METHODS[cfg.method.name](cfg.method)
    with contextlib.redirect_stdout(io.StringIO()):
        model = method.apply(model, tokenizer)
    trainable, total = count_parameters(model)
    blocks = _blocks(model)
    first = next(
        (i for i, b in enumerate(blocks) if any(p.requires_grad for p in b.parameters())),
        len(blocks),
    )
    if method.capabilities.edits_inputs:
        first = 0  # virtual tokens enter at the input (or every layer): backward runs through all
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "d_model", None) or text.n_embd
    inter = getattr(text, "intermediate_size", None) or getattr(text, "d_ff", None) or 4 * hidden
    return ModelShape(
        total_params=max(total, total_before),
        trainable_params=trainable,
        embedding_params=embeddings,
        layers=len(blocks),
        hidden=hidden,
        intermediate=inter,
        vocab=text.vocab_size,
        first_trainable_layer=first,
        encoder_decoder=seq2seq,
    )


def _sharding(cfg: Any, world: int) -> dict[str, float]:
    """Divisors for weights, gradients and optimizer states, and what is offloaded to CPU."""
    strategy = cfg.strategy
    name = strategy.name
    one = {
        "weights": 1,
        "gradients": 1,
        "optimizer": 1,
        "offload_optimizer": 0,
        "offload_params": 0,
    }
    if name == "fsdp":
        mode = getattr(strategy, "sharding_strategy", "FULL_SHARD")
        if mode == "FULL_SHARD":
            one.update(weights=world, gradients=world, optimizer=world)
        elif mode == "SHARD_GRAD_OP":
            one.update(gradients=world, optimizer=world)
        elif mode == "HYBRID_SHARD":
            per_node = getattr(strategy, "hybrid_shard_size", None) or min(world, 8)
            one.update(weights=per_node, gradients=per_node, optimizer=per_node)
        if getattr(strategy, "cpu_offload", False):
            one.update(offload_optimizer=1, offload_params=1)
    elif name == "deepspeed":
        stage = int(getattr(strategy, "stage", 2))
        one.update(
            optimizer=world if stage >= 1 else 1,
            gradients=world if stage >= 2 else 1,
            weights=world if stage >= 3 else 1,
        )
        if getattr(strategy, "offload_optimizer", "none") != "none":
            one["offload_optimizer"] = 1
        if getattr(strategy, "offload_param", "none") != "none":
            one["offload_params"] = 1
    return one


def reference_bytes(cfg: Any, shape: ModelShape, param_bytes: int) -> float:
    """Bytes of the frozen reference copy DPO/KTO hold beside a full or freeze policy (objectives/
    reference.py). Adapter methods disable their adapters instead and a precomputed reference
    is a cache of log-probs: both hold no second model."""
    from tunesmith.methods import METHODS
    from tunesmith.objectives import OBJECTIVES

    objective = getattr(cfg, "objective", None)
    if objective is None or not OBJECTIVES[objective.name].needs_reference:
        return 0.0
    if METHODS[cfg.method.name].capabilities.adapter_only_save:
        return 0.0
    if getattr(objective, "precompute_reference", False):
        return 0.0
    return float(shape.total_params * param_bytes)


def plan(
    cfg: Any,
    device: str = "cpu",
    world: int = 1,
    seq_len: int = 512,
    shape: ModelShape | None = None,
) -> Plan:
    """Estimate per-device memory and step time of the run `cfg` describes."""
    shape = shape or model_shape(cfg)
    spec = DEVICES[device]
    precision = cfg.train.precision
    low_precision = precision != "fp32"
    batch = cfg.train.batch_size
    tokens = batch * seq_len

    frozen = shape.total_params - shape.trainable_params
    param_bytes = 2 if precision == "bf16-pure" else 4
    frozen_bytes = WEIGHT_BYTES.get(cfg.model.quantization, param_bytes)
    weights = shape.trainable_params * param_bytes + frozen * frozen_bytes
    gradients = shape.trainable_params * param_bytes
    optimizer = shape.trainable_params * OPTIMIZER_BYTES.get(cfg.train.optimizer, 8)
    if precision == "bf16-pure" and cfg.train.optimizer == "adamw":
        optimizer = shape.trainable_params * 4  # moments in the parameters' bf16

    # Activations of the layers backward has to reach, per micro-batch.
    act_layers = max(shape.layers - shape.first_trainable_layer, 0)
    per_layer_16bit = tokens * shape.hidden * (15 + 19 * shape.intermediate / (4 * shape.hidden))
    scale = 1 if low_precision else 2
    if cfg.train.activation_checkpointing:
        activations = act_layers * 2 * tokens * shape.hidden * scale + per_layer_16bit * scale
    else:
        activations = act_layers * per_layer_16bit * scale
    if shape.trainable_params:
        activations += tokens * shape.vocab * 4 * 2  # fp32 logits and their gradient

    shard = _sharding(cfg, world)
    weights /= shard["weights"]
    gradients /= shard["gradients"]
    optimizer /= shard["optimizer"]
    weights += reference_bytes(cfg, shape, param_bytes)
    offloaded = 0.0
    if shard["offload_optimizer"]:
        offloaded += optimizer
        optimizer = 0.0
    if shard["offload_params"]:
        offloaded += weights
        weights = 0.0

    # FLOPs per step (2 per multiply-add): forward 2·N·T plus attention; full backward twice that.
    matmul_params = shape.total_params - shape.embedding_params + shape.hidden * shape.vocab
    attention = 4 * shape.layers * seq_len * shape.hidden * tokens
    forward = 2 * matmul_params * tokens + attention
    reach = act_layers / max(shape.layers, 1)  # share of the network backward runs through
    backward = (
        reach * forward + 2 * shape.trainable_params * tokens if shape.trainable_params else 0
    )
    rho = getattr(cfg.method, "rho", None)
    if rho is not None:  # Green Trainer bounds a step at rho x full fine-tuning's FLOPs
        backward = max(rho * (3 * forward) - forward, 0.0)
    accum = cfg.train.grad_accum or 1
    step_flops = (forward + backward) * accum
    tflops = spec["tflops_16"] if low_precision else spec["tflops_fp32"]
    seconds = step_flops / (tflops * 1e12 * spec["mfu"])
    return Plan(
        method=cfg.method.name,
        shape=shape,
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        activations=activations,
        cpu_offloaded=offloaded,
        step_flops=step_flops,
        step_seconds=seconds,
        device=device,
        device_memory=spec["memory_gib"] * GIB,
    )


# Options that make a method meaningful in a side-by-side comparison when the recipe uses another
# one (partial fine-tuning needs to be told what to train: the Green Trainer paper's FT-Top2).
COMPARE_OPTIONS: dict[str, dict[str, Any]] = {"freeze": {"train_top_layers": 2}}


def compare_methods(cfg: Any, names: list[str], **kwargs: Any) -> list[Plan]:
    """The same run planned with each method in `names` (default options of each)."""
    from tunesmith.methods import METHODS

    plans = []
    for name in names:
        variant = copy.deepcopy(cfg)
        if cfg.model.quantization != "none" and not METHODS[name].capabilities.adapter_only_save:
            variant.model = dataclasses.replace(cfg.model, quantization="none")
        try:
            variant.method = (
                cfg.method
                if name == cfg.method.name
                else METHODS[name].Options(**COMPARE_OPTIONS.get(name, {}))
            )
            plans.append(plan(variant, **kwargs))
        except Exception as exc:  # a method that cannot apply to this model is shown as such
            plans.append(exc)  # type: ignore[arg-type]
    return plans


def format_plans(plans: list[Plan | Exception], names: list[str]) -> str:
    """A markdown table of plans, one row per method."""
    header = (
        "| method | trainable | weights | grads | optimizer | activations | total/device "
        "| fits | step TFLOPs | est. step |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [header]
    for name, p in zip(names, plans):
        if isinstance(p, Exception):
            rows.append(f"| {name} | n/a: {str(p).splitlines()[0][:60]} |||||||||")
            continue
        share = 100 * p.shape.trainable_params / max(p.shape.total_params, 1)
        rows.append(
            f"| {name} | {p.shape.trainable_params / 1e6:,.2f}M ({share:.2f}%) "
            f"| {p.weights / GIB:.2f} GiB | {p.gradients / GIB:.2f} GiB "
            f"| {p.optimizer / GIB:.2f} GiB | {p.activations / GIB:.2f} GiB "
            f"| **{p.total / GIB:.2f} GiB** | {'yes' if p.fits else 'NO'} "
            f"| {p.step_flops / 1e12:.2f} | {_duration(p.step_seconds)} |"
        )
    return "\n".join(rows)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"
