"""What a run needs per device, before it launches: memory by component and FLOPs per step.

    tunesmith plan configs/lora.yaml --device a100-80gb --gpus 8
    tunesmith plan configs/quickstart.yaml --compare   # every method side by side

Arithmetic on top of exact parameter counts and bytes: the model is built on the meta device in
the dtype the run loads it in (no weights are read or allocated) and the method is applied to it,
so trainable counts and dtypes are the real ones. Memory per device is

    weights + optimizer states + autocast's 16-bit weight copies + reference models
    + max(activations at the end of forward, gradients + activations left at the end of backward)

each divided by the sharding the strategy applies (docs/planning.md). Activations are counted
tensor by tensor for Hugging Face's pre-norm blocks (`layer_activations`); with activation
checkpointing a layer keeps only its input plus one layer recomputed at a time. Only layers at or
above the earliest trainable tensor keep activations. bench/plan_accuracy.py checks the total
against measured peaks of real runs (live tensor bytes, estimate/measure.py).
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
# CPU figures are this project's measurement on 2 cores (FACTS.md); GPU ones are vendor peaks
# (dense, no sparsity; the 16-bit figure is bf16 tensor-core throughput).
DEVICES: dict[str, dict[str, float]] = {
    "cpu": {"memory_gib": 24, "tflops_fp32": 0.19, "tflops_16": 0.58, "mfu": 0.7},
    "t4-16gb": {"memory_gib": 16, "tflops_fp32": 8.1, "tflops_16": 65, "mfu": 0.35},
    "v100-32gb": {"memory_gib": 32, "tflops_fp32": 15.7, "tflops_16": 125, "mfu": 0.4},
    "a10g-24gb": {"memory_gib": 24, "tflops_fp32": 31, "tflops_16": 125, "mfu": 0.4},
    "l4-24gb": {"memory_gib": 24, "tflops_fp32": 30, "tflops_16": 121, "mfu": 0.4},
    "l40s-48gb": {"memory_gib": 48, "tflops_fp32": 91.6, "tflops_16": 362, "mfu": 0.4},
    "rtx4090-24gb": {"memory_gib": 24, "tflops_fp32": 82, "tflops_16": 165, "mfu": 0.4},
    "rtx5090-32gb": {"memory_gib": 32, "tflops_fp32": 105, "tflops_16": 210, "mfu": 0.4},
    "a100-40gb": {"memory_gib": 40, "tflops_fp32": 19.5, "tflops_16": 312, "mfu": 0.45},
    "a100-80gb": {"memory_gib": 80, "tflops_fp32": 19.5, "tflops_16": 312, "mfu": 0.45},
    "h100-80gb": {"memory_gib": 80, "tflops_fp32": 67, "tflops_16": 989, "mfu": 0.4},
    "h200-141gb": {"memory_gib": 141, "tflops_fp32": 67, "tflops_16": 989, "mfu": 0.4},
    "b200-180gb": {"memory_gib": 180, "tflops_fp32": 80, "tflops_16": 2250, "mfu": 0.4},
    "mi250x-128gb": {"memory_gib": 128, "tflops_fp32": 47.9, "tflops_16": 383, "mfu": 0.35},
    "mi300x-192gb": {"memory_gib": 192, "tflops_fp32": 163.4, "tflops_16": 1307, "mfu": 0.35},
}

WEIGHT_BYTES = {"nf4": 0.53, "fp4": 0.53, "int8": 1.06}  # incl. block scales
# Optimizer state bytes per trainable parameter where it does not follow the parameter's dtype.
# torch AdamW keeps two moments in the parameter's dtype (see `plan`); BF16AdamW keeps fp32
# moments plus, for Kahan summation, a compensation buffer in the parameter's dtype.
OPTIMIZER_BYTES = {"adamw_8bit": 2, "adamw_stochastic": 8}
KAHAN_OPTIMIZERS = ("adamw_kahan", "anyprecision")


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
    # Bytes as the run stores them (model.dtype / precision, adapters in their own dtype).
    trainable_bytes: int = 0
    frozen_bytes: int = 0
    frozen_block_linear_params: int = 0  # frozen nn.Linear weights in blocks (what bnb quantizes)
    fp32_matmul_params: int = 0  # fp32 nn.Linear weights that backward reaches (autocast copies)
    kv_ratio: float = 1.0  # key/value heads per attention head (grouped-query attention < 1)
    weight_bytes: int = 4  # bytes per element of the base weights as loaded (the residual stream)


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
    autocast_copy: float = 0.0  # 16-bit copies of fp32 weights that autocast keeps for backward
    reference: float = 0.0  # frozen reference model(s) of a preference objective
    grads_with_activations: bool = False  # grad_accum > 1: gradients live through forwards
    backward_activations: float = 0.0  # activations still live when all gradients exist

    @property
    def total(self) -> float:
        """Peak bytes per device.

        Gradients are set to None after each step and fill in during backward while the saved
        activations are freed: the peak is the end of forward (all activations, no gradients)
        or the end of backward (all gradients, the earliest layer's activations), whichever is
        larger, on top of what persists. With accumulation gradients live through forwards too.
        """
        persistent = self.weights + self.optimizer + self.reference + self.autocast_copy
        forward = self.activations + (self.gradients if self.grads_with_activations else 0)
        return persistent + max(forward, self.gradients + self.backward_activations)

    @property
    def fits(self) -> bool:
        return self.total * 1.15 <= self.device_memory  # 15% headroom for the allocator

    def components(self) -> dict[str, float]:
        """Bytes by component (as in the plan table)."""
        return {
            "weights": self.weights,
            "gradients": self.gradients,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "autocast_copy": self.autocast_copy,
            "reference": self.reference,
            "total": self.total,
        }


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer block lists (decoder, or encoder + decoder), found generically."""
    lists = [
        m
        for m in model.modules()
        if isinstance(m, nn.ModuleList) and len(m) > 1 and len({type(x) for x in m}) == 1
    ]
    return [block for ml in lists for block in ml]


def model_shape(cfg: Any) -> ModelShape:
    """Build the configured model on the meta device in the dtype the run loads it in, apply the
    method, and measure it (counts and bytes per tensor are then exact)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from tunesmith.methods import METHODS
    from tunesmith.methods.base import count_parameters
    from tunesmith.models.load import (
        is_encoder_decoder,
        load_config_of,
        load_tokenizer,
        resolve_dtype,
    )

    hf_config = load_config_of(cfg.model)
    seq2seq = is_encoder_decoder(cfg.model, hf_config)
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    dtype = resolve_dtype(cfg.model, cfg.train.precision)
    with torch.device("meta"):
        model = auto.from_config(hf_config, dtype=dtype)
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
    params = {id(p): p for p in model.parameters()}.values()  # tied weights once
    block_linear = [m.weight for b in blocks for m in b.modules() if isinstance(m, nn.Linear)]
    reached = [m.weight for b in blocks[first:] for m in b.modules() if isinstance(m, nn.Linear)]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and trainable:
        reached.append(head.weight)
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "d_model", None) or text.n_embd
    inter = getattr(text, "intermediate_size", None) or getattr(text, "d_ff", None) or 4 * hidden
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "num_heads", None) or 1
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return ModelShape(
        kv_ratio=kv_heads / heads,
        weight_bytes=dtype.itemsize,
        total_params=max(total, total_before),
        trainable_params=trainable,
        embedding_params=embeddings,
        layers=len(blocks),
        hidden=hidden,
        intermediate=inter,
        vocab=text.vocab_size,
        first_trainable_layer=first,
        encoder_decoder=seq2seq,
        trainable_bytes=sum(p.numel() * p.element_size() for p in params if p.requires_grad),
        frozen_bytes=sum(p.numel() * p.element_size() for p in params if not p.requires_grad),
        frozen_block_linear_params=sum(w.numel() for w in block_linear if not w.requires_grad),
        fp32_matmul_params=sum(
            w.numel() for w in {id(w): w for w in reached}.values() if w.dtype == torch.float32
        ),
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

    # Weights and gradients as stored (model.dtype, precision, adapters' own dtype); a quantized
    # base stores its frozen block matmuls in 4 or 8 bits, everything else as loaded.
    weights = float(shape.trainable_bytes + shape.frozen_bytes)
    quant = cfg.model.quantization
    if quant != "none":
        frozen_linear = shape.frozen_block_linear_params
        per_param = shape.frozen_bytes / max(shape.total_params - shape.trainable_params, 1)
        weights -= frozen_linear * (per_param - WEIGHT_BYTES[quant])
    gradients = float(shape.trainable_bytes)
    if cfg.train.optimizer in KAHAN_OPTIMIZERS:
        optimizer = shape.trainable_params * 8 + shape.trainable_bytes
    elif cfg.train.optimizer in OPTIMIZER_BYTES:
        optimizer = shape.trainable_params * OPTIMIZER_BYTES[cfg.train.optimizer]
    else:  # torch AdamW: exp_avg and exp_avg_sq in the parameter's dtype
        optimizer = 2.0 * shape.trainable_bytes

    # Mixed precision: autocast casts fp32 matmul weights to 16 bits; the copies of the layers
    # backward reaches stay alive until backward (autocast's cache, or saved for backward).
    autocast_copy = 2.0 * shape.fp32_matmul_params if precision.endswith("-mixed") else 0.0

    # Activations: what autograd saves per layer that backward reaches (`layer_activations`),
    # plus, at the start of backward, the logits and train/loss.py's cross-entropy buffers: the
    # saved logits, the fp32 softmax - one_hot written in place, and the gradient in the logits'
    # dtype (8 bytes per position and vocabulary entry; torch's own cross-entropy needed 16: an
    # fp32 log-softmax and two gradients). With activation checkpointing a
    # layer keeps only its input until backward recomputes it, one layer at a time.
    act_layers = max(shape.layers - shape.first_trainable_layer, 0)
    residual = shape.weight_bytes
    compute = 2 if precision.endswith("-mixed") else residual
    per_layer = layer_activations(shape, tokens, residual, compute)
    # 10 under autocast: measured, not derived (bench/plan_accuracy.py planned bf16-mixed
    # recipes lowest with 8; the extra 2 bytes bring them closest without over-planning fp32).
    logit_bytes = 10 if precision.endswith("-mixed") else 8
    logits = tokens * shape.vocab * logit_bytes if shape.trainable_params else 0
    if cfg.train.activation_checkpointing:
        inputs = act_layers * tokens * shape.hidden * residual
        forward_peak = inputs + logits
        backward_peak = inputs + per_layer
    else:
        forward_peak = act_layers * per_layer + logits
        backward_peak = per_layer  # the earliest layer's, when all gradients exist
    activations = float(forward_peak)

    reference = reference_weights(cfg, shape)
    shard = _sharding(cfg, world)
    weights /= shard["weights"]
    reference /= shard["weights"]
    gradients /= shard["gradients"]
    optimizer /= shard["optimizer"]
    autocast_copy /= shard["weights"]
    offloaded = 0.0
    if shard["offload_optimizer"]:
        offloaded += optimizer
        optimizer = 0.0
    if shard["offload_params"]:
        offloaded += weights + reference
        weights = reference = 0.0

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
        backward_activations=float(backward_peak),
        autocast_copy=autocast_copy,
        reference=reference,
        grads_with_activations=(cfg.train.grad_accum or 1) > 1,
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


def layer_activations(shape: ModelShape, tokens: int, residual: int, compute: int) -> float:
    """Bytes autograd saves in one pre-norm transformer block with a gated MLP, counted tensor by
    tensor for the Hugging Face implementations (Llama, Mistral, Qwen, ...); h hidden, F MLP width,
    r = key/value heads per head, R bytes of the residual stream (the weights' dtype), C bytes of
    the matmul outputs (2 under autocast, else R):

    - each of the two RMSNorms: its input upcast to fp32 (4h), the normalised value (R h) and its
      output as the next matmul reads it (C h): h (4 + R + C);
    - attention: q, k, v and the output as SDPA saves them, and the output projection's input:
      C h (3 + 2r) (memory-efficient attention keeps no s x s matrix);
    - the gated MLP: gate and up outputs, the activation and the product: 4 C F.

    bench/plan_accuracy.py checks the sum against measured peaks (within 10% on its recipes).
    """
    h, f = shape.hidden, shape.intermediate
    per_token = 2 * h * (4 + residual + compute) + compute * h * (3 + 2 * shape.kv_ratio)
    return tokens * (per_token + 4 * compute * f)


def reference_weights(cfg: Any, shape: ModelShape) -> float:
    """Bytes of the frozen reference model a preference objective keeps beside the policy.

    DPO and KTO with full, freeze or green hold a frozen copy of the starting model
    (objectives/reference.py); adapter methods disable their adapters instead, and
    `objective.precompute_reference` keeps log-probs, not a model: both hold no copy. The caller
    shards the copy as the policy's weights are (Strategy.place_frozen). No objective: nothing.
    """
    from tunesmith.methods import METHODS
    from tunesmith.objectives import OBJECTIVES

    objective = getattr(cfg, "objective", None)
    if objective is None or not OBJECTIVES[objective.name].needs_reference:
        return 0.0
    if METHODS[cfg.method.name].capabilities.adapter_only_save:
        return 0.0
    if getattr(objective, "precompute_reference", False):
        return 0.0
    return float(shape.trainable_bytes + shape.frozen_bytes)


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
        "| method | trainable | weights | grads | optimizer | activations | autocast copy + ref. "
        "| total/device | fits | step TFLOPs | est. step |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [header]
    for name, p in zip(names, plans):
        if isinstance(p, Exception):
            rows.append(f"| {name} | n/a: {str(p).splitlines()[0][:60]} ||||||||||")
            continue
        share = 100 * p.shape.trainable_params / max(p.shape.total_params, 1)
        rows.append(
            f"| {name} | {p.shape.trainable_params / 1e6:,.2f}M ({share:.2f}%) "
            f"| {p.weights / GIB:.2f} GiB | {p.gradients / GIB:.2f} GiB "
            f"| {p.optimizer / GIB:.2f} GiB | {p.activations / GIB:.2f} GiB "
            f"| {(p.autocast_copy + p.reference) / GIB:.2f} GiB "
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
