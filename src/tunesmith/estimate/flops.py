"""Per-tensor FLOPs profile of one training step, in true execution order.

    profile = profile_flops(model, batch_size=4, input_length=512)             # decoder-only
    profile = profile_flops(t5, batch_size=4, input_length=512, decoder_length=64)
    profile.t_fp, profile.t_bp_full, profile.rho_min, profile.backward_flops(mask)

One forward pass on a dummy batch of the given shape is recorded at the ATen level (a
`TorchDispatchMode`); everything after that is arithmetic. Recording at the ATen level means no
per-architecture rules: `nn.Linear`, GPT-2's `Conv1D`, LoRA matrices, tied LM heads, fused QKV and
SDPA or eager attention all reach the same few operators.

Units are FLOPs, 2 per multiply-add, the convention of `torch.utils.flop_counter.FlopCounterMode`.

What is counted (the Green Trainer cost model of green_trainer.md §3, generalised):

* Matrix products (`mm`, `addmm`, `bmm`, `baddbmm`, convolutions, fused attention): forward as
  `FlopCounterMode` counts it; backward one product of the same size per operand that needs a
  gradient (torch's own backward rule for fused attention, which includes recomputing the scores).
  The operand that is a parameter gives that tensor's weight gradient (t_dw); an operand that is an
  activation gives an input gradient (part of some t_dy).
* Element-wise work that a parameter owns: norm scales, biases, embedding lookups. Forward 1 FLOP
  per output element (0 for a lookup), weight gradient 2 per element for a scale (multiply, then
  reduce over tokens) and 1 for a bias or an embedding row scatter-add, input gradient 1 per element
  through a scale. This keeps norms and biases from being free; `FlopCounterMode` does not see it.
* Not counted, as in `FlopCounterMode`: activations, softmax, residual adds, the statistics of a
  norm, the loss.

Execution order and the dependency rule (spec §3.1, §4). A tensor's position is its first use in the
recorded forward pass (first use wins, so a tied input embedding sits at position 0). Every input
gradient is attached to the *latest-positioned parameter among the ancestors of that input*: it is
needed exactly when backward has to reach below that point. With k* the earliest selected tensor,
a mask pays t_dw of its selected tensors plus t_dy of every tensor at or after k*. The attachment
never under-counts (if any ancestor of an input is selected, k* is at or before the latest ancestor)
and matches autograd on transformer blocks: with only `v_proj` selected, neither `q_proj`'s nor
`k_proj`'s input gradient is charged, but attention backward is. The LM head's input gradient lands
on the final norm, so it is paid whenever anything is trained, and a tied embedding's t_dw holds
both its LM-head and its lookup gradients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import (
    flop_registry,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)
from torch.utils.weak import WeakTensorKeyDictionary

aten = torch.ops.aten

# Kinds of work. The first two are what FlopCounterMode sees.
LINEAR = "linear"  # a matrix product with a parameter operand
ATTENTION = "attention"  # a matrix product of activations (attention core, rotary tables)
ELEMENTWISE = "elementwise"  # norm scales, biases, embedding rows
MATMUL_KINDS = (LINEAR, ATTENTION)

FORWARD = "forward"
WEIGHT_GRAD = "weight_grad"
INPUT_GRAD = "input_grad"

# Fused attention kernels: operands 0..2 are query, key, value; output 0 is the attention output.
# The CPU kernel is not in torch's flop registry (FlopCounterMode counts it as 0), so it is listed
# here with the shared formulas.
_FUSED_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_cudnn_attention,
}
# Ops whose output is the same parameter seen differently (a cast or copy); views are detected from
# the operator schema.
_SAME_VALUE_OPS = {aten._to_copy, aten.clone, aten.lift_fresh_copy, aten.alias}
_ADDITIVE_OPS = {aten.add, aten.sub, aten.add_, aten.sub_}
_NO_VALUE_OPS = {aten.detach}
# Matrix products: ((factor, factor), added term) argument positions.
_PRODUCTS = {
    aten.mm: ((0, 1), None),
    aten.bmm: ((0, 1), None),
    aten.addmm: ((1, 2), 0),
    aten.baddbmm: ((1, 2), 0),
    aten.convolution: ((0, 1), 2),
    aten._convolution: ((0, 1), 2),
}


@dataclass(frozen=True)
class CostPiece:
    """One cost of one recorded operator.

    Attributes:
        op: the ATen operator, e.g. "mm" or "_scaled_dot_product_flash_attention_for_cpu".
        kind: LINEAR, ATTENTION or ELEMENTWISE.
        phase: FORWARD, WEIGHT_GRAD or INPUT_GRAD.
        flops: FLOPs (2 per multiply-add).
        tensor: position of the tensor it is charged to: the owner for forward and weight-gradient
            pieces, the gate (latest ancestor parameter) for input-gradient pieces. None for
            forward work on constants (e.g. rotary tables).
    """

    op: str
    kind: str
    phase: str
    flops: int
    tensor: int | None


@dataclass(frozen=True)
class TensorCost:
    """Costs charged to one trainable tensor (one `nn.Parameter`; tied uses are one tensor).

    Attributes:
        name: the parameter's name in `model.named_parameters()` (first name of a tied weight).
        numel: number of elements.
        forward: forward FLOPs of the operators it owns (informational; `t_fp` is the sum).
        t_dw: FLOPs of its weight gradient (all its uses), paid only if it is selected.
        t_dy: FLOPs of input gradients gated by it, paid if it or any earlier tensor is selected.
        used: False if the recorded forward pass never touched it (it then costs nothing).
    """

    name: str
    numel: int
    forward: int
    t_dw: int
    t_dy: int
    used: bool


@dataclass(frozen=True)
class FlopsProfile:
    """The per-tensor FLOPs of one training step at a fixed batch shape, in execution order."""

    tensors: tuple[TensorCost, ...]
    pieces: tuple[CostPiece, ...]
    batch_size: int
    input_length: int
    decoder_length: int | None = None

    @property
    def names(self) -> list[str]:
        """Parameter names in execution order."""
        return [t.name for t in self.tensors]

    @property
    def t_dw(self) -> list[int]:
        """Weight-gradient FLOPs per tensor, execution order."""
        return [t.t_dw for t in self.tensors]

    @property
    def t_dy(self) -> list[int]:
        """Input-gradient FLOPs gated by each tensor, execution order."""
        return [t.t_dy for t in self.tensors]

    @property
    def t_fp(self) -> int:
        """Forward FLOPs of one step (always paid)."""
        return sum(p.flops for p in self.pieces if p.phase == FORWARD)

    @property
    def t_bp_full(self) -> int:
        """Backward FLOPs of one step when every tensor is trained."""
        return sum(t.t_dw + t.t_dy for t in self.tensors)

    @property
    def rho_min(self) -> float:
        """The forward floor: the smallest fraction of a full step's FLOPs any selection costs."""
        return self.t_fp / (self.t_fp + self.t_bp_full)

    def backward_flops(self, mask: Sequence[bool], kinds: Sequence[str] | None = None) -> int:
        """Backward FLOPs when exactly the tensors with `mask[k]` true are trained (spec §3.1).

        `kinds` restricts the count to some kinds of work (e.g. MATMUL_KINDS, what
        `FlopCounterMode` sees); by default everything is counted.
        """
        if kinds is None:
            return planned_backward(mask, self.t_dw, self.t_dy)
        t_dw, t_dy = [0] * len(self.tensors), [0] * len(self.tensors)
        for p in self.pieces:
            if p.kind in kinds and p.tensor is not None:
                if p.phase == WEIGHT_GRAD:
                    t_dw[p.tensor] += p.flops
                elif p.phase == INPUT_GRAD:
                    t_dy[p.tensor] += p.flops
        return planned_backward(mask, t_dw, t_dy)

    def total(self, phase: str, kinds: Sequence[str] = (LINEAR, ATTENTION, ELEMENTWISE)) -> int:
        """Sum of the pieces of one phase and the given kinds (for comparison with counters)."""
        return sum(p.flops for p in self.pieces if p.phase == phase and p.kind in kinds)

    def describe(self) -> str:
        """One line: shape, totals and the floor, for logs."""
        shape = f"batch {self.batch_size} x {self.input_length} tokens"
        if self.decoder_length is not None:
            shape += f" (+{self.decoder_length} decoder tokens)"
        return (
            f"{len(self.tensors)} tensors at {shape}: forward {self.t_fp / 1e9:.3g} GFLOPs, "
            f"full backward {self.t_bp_full / 1e9:.3g} GFLOPs, rho_min {self.rho_min:.3f}"
        )


def planned_backward(mask: Sequence[bool], t_dw: Sequence[float], t_dy: Sequence[float]) -> float:
    """Σ m_k·t_dw,k + Σ σ(m)_k·t_dy,k in forward order, σ the running OR of the mask."""
    total, reached = 0, False
    for selected, dw, dy in zip(mask, t_dw, t_dy, strict=True):
        reached = reached or bool(selected)
        total += (dw if selected else 0) + (dy if reached else 0)
    return total


def dummy_inputs(
    model: nn.Module, batch_size: int, input_length: int, decoder_length: int | None = None
) -> dict[str, torch.Tensor]:
    """A batch of token ids of the given shape on the model's device (all ids 0)."""
    device = next(model.parameters()).device
    inputs = {"input_ids": torch.zeros(batch_size, input_length, dtype=torch.long, device=device)}
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        if decoder_length is None:
            raise ValueError("an encoder-decoder model needs decoder_length")
        inputs["decoder_input_ids"] = torch.zeros(
            batch_size, decoder_length, dtype=torch.long, device=device
        )
    return inputs


def profile_flops(
    model: nn.Module,
    batch_size: int,
    input_length: int,
    decoder_length: int | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> FlopsProfile:
    """Record one forward pass of `model` and derive the per-tensor FLOPs of a training step.

    The model's weights, `requires_grad` flags, train/eval mode and the RNG are left as they were.

    Args:
        model: a Hugging Face model (or any module taking `input_ids`); parameters can be frozen.
        batch_size, input_length: the training batch shape (padded length, as the loader pads).
        decoder_length: target length for encoder-decoder models.
        inputs: keyword inputs to use instead of the dummy token batch.

    Returns:
        The profile, tensors in execution order (unused ones last).
    """
    if inputs is None:
        inputs = dummy_inputs(model, batch_size, input_length, decoder_length)
    named = list(model.named_parameters())
    recorder = _Recorder({id(p): (name, p) for name, p in named})
    was_training = model.training
    model.eval()  # no dropout: the recording must not consume random numbers
    try:
        with torch.no_grad(), recorder:
            model(**inputs, use_cache=False)
    finally:
        model.train(was_training)
    return recorder.profile(named, batch_size, input_length, decoder_length)


class _Recorder(TorchDispatchMode):
    """Watches every ATen op of a forward pass: first uses, ancestry and costs."""

    def __init__(self, params: dict[int, tuple[str, nn.Parameter]]):
        super().__init__()
        self.params = params
        self.rank = {key: i for i, key in enumerate(params)}  # named_parameters() order
        self.position: dict[int, int] = {}  # id(param) -> execution position
        self.order: list[int] = []  # id(param) in execution order
        self.latest = WeakTensorKeyDictionary()  # activation -> latest ancestor position
        self.param_of = WeakTensorKeyDictionary()  # view / cast of a parameter -> its position
        self.pieces: list[CostPiece] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        operands = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        outputs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        self._first_uses(operands)
        self._propagate(func, operands, outputs)
        if operands and outputs:
            self._charge(func, args, kwargs, out, operands, outputs[0])
        return out

    def _first_uses(self, operands: list[torch.Tensor]) -> None:
        # Parameters first used by the same op take named_parameters() order (weight, then bias).
        new = {id(t) for t in operands if self._is_param(t) and id(t) not in self.position}
        for key in sorted(new, key=self.rank.__getitem__):
            self.position[key] = len(self.order)
            self.order.append(key)

    def _is_param(self, tensor: torch.Tensor) -> bool:
        entry = self.params.get(id(tensor))
        return entry is not None and entry[1] is tensor

    def _param(self, tensor: Any) -> int | None:
        """Position of the parameter this tensor is (or is a view or cast of), else None."""
        if not isinstance(tensor, torch.Tensor):
            return None
        if self._is_param(tensor):
            return self.position[id(tensor)]
        return self.param_of.get(tensor)

    def _ancestor(self, tensor: Any) -> int | None:
        """Position of the latest parameter this tensor depends on, else None."""
        if not isinstance(tensor, torch.Tensor):
            return None
        own = self._param(tensor)
        return own if own is not None else self.latest.get(tensor)

    def _propagate(self, func, operands, outputs) -> None:
        if func._overloadpacket in _NO_VALUE_OPS:
            return
        tag = _max_or_none([self._ancestor(t) for t in operands])
        if tag is None:
            return
        same_value = _moves_data_only(func)
        source = self._param(operands[0]) if len(operands) == 1 else None
        for o in outputs:
            if source is not None and same_value:
                self.param_of[o] = source
            self.latest[o] = max(tag, self.latest.get(o, tag))

    def _charge(self, func, args, kwargs, out, operands, output) -> None:
        packet = func._overloadpacket
        name = packet.__name__
        if packet in _FUSED_ATTENTION:
            self._charge_fused_attention(name, args, output)
        elif packet in _PRODUCTS:
            forward = flop_registry[packet](*args, **kwargs, out_val=out)
            self._charge_product(name, _PRODUCTS[packet], args, forward, output)
        elif packet in flop_registry:  # a product without a known backward layout: forward only
            forward = flop_registry[packet](*args, **kwargs, out_val=out)
            self._add(
                name, ATTENTION, FORWARD, forward, _max_or_none(map(self._ancestor, operands))
            )
        elif not _moves_data_only(func) and any(self._param(t) is not None for t in operands):
            self._charge_parameter_op(func, name, args, operands, output)

    def _charge_fused_attention(self, name, args, output) -> None:
        q, k, v = args[:3]
        gate = _max_or_none([self._ancestor(t) for t in (q, k, v)])
        self._add(name, ATTENTION, FORWARD, sdpa_flop_count(q.shape, k.shape, v.shape), gate)
        if gate is not None:  # one fused kernel computes dq, dk and dv together
            flops = sdpa_backward_flop_count(output.shape, q.shape, k.shape, v.shape)
            self._add(name, ATTENTION, INPUT_GRAD, flops, gate)

    def _charge_product(self, name, layout, args, forward, output) -> None:
        (left, right), added = layout
        factors = [args[left], args[right]]
        owners = [self._param(f) for f in factors]
        kind = LINEAR if any(o is not None for o in owners) else ATTENTION
        first_owner = next((o for o in owners if o is not None), None)
        gate = _max_or_none([self._ancestor(f) for f in factors])
        self._add(name, kind, FORWARD, forward, first_owner if first_owner is not None else gate)
        # The gradient of each factor is one product of the same size as the forward one.
        for factor, owner in zip(factors, owners, strict=True):
            if owner is not None:
                self._add(name, kind, WEIGHT_GRAD, forward, owner)
            elif (ancestor := self._ancestor(factor)) is not None:
                self._add(name, kind, INPUT_GRAD, forward, ancestor)
        bias = self._param(args[added]) if added is not None and len(args) > added else None
        if bias is not None:
            self._add(name, ELEMENTWISE, FORWARD, output.numel(), bias)
            self._add(name, ELEMENTWISE, WEIGHT_GRAD, output.numel(), bias)

    def _charge_parameter_op(self, func, name, args, operands, output) -> None:
        packet = func._overloadpacket
        n = output.numel()
        if packet is aten.embedding:  # a lookup: no arithmetic forward, a row scatter-add backward
            self._add(name, ELEMENTWISE, WEIGHT_GRAD, n, self._param(args[0]))
            return
        if packet is aten.native_layer_norm:  # (input, shape, weight, bias, eps): scale and shift
            weight, bias = self._param(args[2]), self._param(args[3])
            for pos, grad_flops in ((weight, 2 * n), (bias, n)):
                if pos is not None:
                    self._add(name, ELEMENTWISE, FORWARD, n, pos)
                    self._add(name, ELEMENTWISE, WEIGHT_GRAD, grad_flops, pos)
            if weight is not None:
                self._add(name, ELEMENTWISE, INPUT_GRAD, n, self._ancestor(args[0]))
            return
        params = [self._param(t) for t in operands]
        if torch.Tag.pointwise not in func.tags:
            # Any other use of a parameter (gather, cat, ...): price moving its gradient back.
            for pos in {p for p in params if p is not None}:
                self._add(name, ELEMENTWISE, WEIGHT_GRAD, n, pos)
            return
        additive = packet in _ADDITIVE_OPS
        self._add(name, ELEMENTWISE, FORWARD, n, next(p for p in params if p is not None))
        for tensor, pos in zip(operands, params, strict=True):
            if pos is not None:  # a bias (sum over tokens) or a scale (multiply, then sum)
                self._add(name, ELEMENTWISE, WEIGHT_GRAD, n if additive else 2 * n, pos)
            elif not additive:
                self._add(name, ELEMENTWISE, INPUT_GRAD, n, self._ancestor(tensor))

    def _add(self, op: str, kind: str, phase: str, flops: int, tensor: int | None) -> None:
        # Input gradients of tensors that descend from no parameter are never computed.
        if flops and (tensor is not None or phase == FORWARD):
            self.pieces.append(CostPiece(op, kind, phase, int(flops), tensor))

    def profile(self, named, batch_size, input_length, decoder_length) -> FlopsProfile:
        """Aggregate the recorded pieces per tensor; unused tensors go last."""
        order = list(self.order)
        seen = set(order)
        order += [id(p) for _, p in named if id(p) not in seen]
        sums = [[0, 0, 0] for _ in order]
        column = {FORWARD: 0, WEIGHT_GRAD: 1, INPUT_GRAD: 2}
        for piece in self.pieces:
            if piece.tensor is not None:
                sums[piece.tensor][column[piece.phase]] += piece.flops
        tensors = tuple(
            TensorCost(
                name=self.params[key][0],
                numel=self.params[key][1].numel(),
                forward=fwd,
                t_dw=dw,
                t_dy=dy,
                used=key in self.position,
            )
            for key, (fwd, dw, dy) in zip(order, sums, strict=True)
        )
        return FlopsProfile(tensors, tuple(self.pieces), batch_size, input_length, decoder_length)


def _moves_data_only(func) -> bool:
    """A view, cast or copy: the output holds the operand's values, no arithmetic is done."""
    is_view = any(r.alias_info is not None for r in func._schema.returns)
    return func._overloadpacket in _SAME_VALUE_OPS or (is_view and not func._schema.is_mutable)


def _max_or_none(values) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None
