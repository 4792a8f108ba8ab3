"""Which tensors to train under a FLOPs budget: the exact dynamic programme of green_trainer.md §6.5.

Everything here is in forward-execution order (index 0 is closest to the input), with per-tensor
costs from `tunesmith.estimate.flops`. Training the set m costs, per step,

    T_sel(m) = t_fp + Σ m_k·t_dw[k] + Σ_{k ≥ k*} t_dy[k],      k* = the earliest selected tensor,

and the budget is T_sel(m) ≤ ρ·(t_fp + T_bp(full)), i.e. backward ≤ ρ_bp·T_bp(full) with
ρ_bp = ρ·(1 + r) − r, r = t_fp / T_bp(full) (§1).

The DP fixes k* (it must be selected, and it fixes the input-gradient cost Σ_{k ≥ k*} t_dy[k]),
then solves a 0/1 knapsack over the tensors after k* with weights t_dw and values I. Growing the
knapsack table one tensor at a time while k* moves toward the input makes it O(N·T) time and
N·T bits of back-pointers, with T the number of budget units; it is optimal for the discretised
problem (tests compare it with brute force).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tunesmith.errors import UserError
from tunesmith.estimate.flops import FlopsProfile, planned_backward

DEFAULT_LEVELS = 1000
# Budget units per tensor at least: bounds the rounding pessimism (see `quantise`).
LEVELS_PER_TENSOR = 32


@dataclass(frozen=True)
class Selection:
    """The tensors chosen for one selection period.

    Attributes:
        mask: one flag per tensor, forward order.
        importance: Σ I_k over selected tensors (the DP's objective).
        backward: planned backward FLOPs of the mask.
        backward_fraction: backward / full backward ("%T_sel" of spec §6.6).
    """

    mask: tuple[bool, ...]
    importance: float
    backward: float
    backward_fraction: float


@dataclass(frozen=True)
class Quantised:
    """The discretised problem the DP solves exactly.

    Attributes:
        t_dw: weight-gradient cost per tensor in budget units (rounded up).
        dy_suffix: Σ_{j ≥ k} t_dy[j] in budget units (rounded up), the input-gradient cost when k
            is the earliest selected tensor.
        budget: the backward budget in units (rounded down).
        unit: FLOPs per unit.
    """

    t_dw: tuple[int, ...]
    dy_suffix: tuple[int, ...]
    budget: int
    unit: float


def rho_to_backward_fraction(rho: float, t_fp: float, t_bp_full: float) -> float:
    """ρ_bp = ρ·(1 + r) − r with r = t_fp / T_bp(full): the share of full backward ρ leaves."""
    r = t_fp / t_bp_full
    return rho * (1 + r) - r


def backward_budget(rho: float, profile: FlopsProfile) -> float:
    """The backward FLOPs a step may spend at FLOPs fraction `rho` of full fine-tuning.

    Raises:
        UserError: `rho` is outside (0, 1] or below the forward floor `profile.rho_min`; the
            reference code silently clamps instead (spec §1), tunesmith refuses to start.
    """
    if not 0 < rho <= 1:
        raise UserError(
            f"method.rho={rho:g} is not a fraction of a full step's FLOPs",
            hint="use a value in (0, 1], e.g. method.rho=0.5",
        )
    floor = profile.rho_min
    if rho < floor:
        shape = f"batch {profile.batch_size} x {profile.input_length} tokens"
        if profile.decoder_length is not None:
            shape += f" + {profile.decoder_length} decoder tokens"
        raise UserError(
            f"method.rho={rho:g} is below rho_min={floor:.3f}, the forward pass's share of a "
            f"full step for this model at {shape}",
            hint=f"use method.rho >= {math.ceil(floor * 1000) / 1000:.3f}",
        )
    if rho >= 1:  # exactly the full backward, free of float rounding in ρ·(1 + r) − r
        return float(profile.t_bp_full)
    return rho * (profile.t_fp + profile.t_bp_full) - profile.t_fp


def selectable(t_dw: Sequence[float], t_dy: Sequence[float], budget: float) -> list[bool]:
    """Tensors that fit the budget at all (alone, as the earliest selected tensor).

    Tensors closer to the input than the first selectable one never need a gradient, which is
    what lets importance evaluation skip them (the reference's N_limit, §5.2).
    """
    suffix = _suffix_sums(t_dy)
    return [dw + dy <= budget for dw, dy in zip(t_dw, suffix, strict=True)]


def quantise(
    t_dw: Sequence[float], t_dy: Sequence[float], budget: float, levels: int = DEFAULT_LEVELS
) -> Quantised:
    """Discretise costs so that any mask within the integer budget is within `budget` in FLOPs.

    Costs are rounded up and the budget down, so "never over budget" holds exactly in FLOPs
    (and cheap tensors are never free, the reference's defect 2). The price is pessimism: a mask
    is charged at most (selected tensors + 1) units more than it costs. One unit is
    full-backward / max(levels, 32·N), so that slack stays below about 3% of the full backward
    however many tensors are selected; the DP stays O(N·T) and its back-pointers N·T bytes.
    """
    n = len(t_dw)
    full = float(sum(t_dw) + sum(t_dy))
    resolution = max(levels, LEVELS_PER_TENSOR * n)
    unit = full / resolution if full > 0 else 1.0
    return Quantised(
        t_dw=tuple(math.ceil(dw / unit) for dw in t_dw),
        dy_suffix=tuple(math.ceil(s / unit) for s in _suffix_sums(t_dy)),
        budget=max(0, math.floor(budget / unit)),
        unit=unit,
    )


def select_tensors(
    importance: Sequence[float],
    t_dw: Sequence[float],
    t_dy: Sequence[float],
    budget: float,
    levels: int = DEFAULT_LEVELS,
) -> Selection:
    """The most important set of tensors whose backward fits `budget` FLOPs.

    Args:
        importance: I_k per tensor, forward order (non-positive ones are never worth training).
        t_dw, t_dy: per-tensor costs in FLOPs, forward order (see `tunesmith.estimate.flops`).
        budget: backward FLOPs allowed per step (`backward_budget`).
        levels: minimum number of budget units in a full backward (see `quantise`).

    Returns:
        The selection; its backward FLOPs never exceed `budget`.
    """
    positive = [i > 0 for i in importance]
    # Every positive tensor is the unconstrained optimum; take it whenever it fits (this is what
    # makes ρ = 1 full fine-tuning, the reference's defect 1).
    if planned_backward(positive, t_dw, t_dy) <= budget:
        mask = positive
    else:
        mask = list(solve_quantised(importance, quantise(t_dw, t_dy, budget, levels))[1])
    backward = planned_backward(mask, t_dw, t_dy)
    full = sum(t_dw) + sum(t_dy)
    return Selection(
        mask=tuple(bool(m) for m in mask),
        importance=float(sum(i for i, m in zip(importance, mask, strict=True) if m)),
        backward=float(backward),
        backward_fraction=backward / full if full else 0.0,
    )


def select_grouped(
    importance: Sequence[float],
    t_dw: Sequence[float],
    t_dy: Sequence[float],
    budget: float,
    groups: Sequence[Sequence[int]],
    levels: int = DEFAULT_LEVELS,
) -> Selection:
    """`select_tensors` where each group of consecutive tensors is selected as a whole.

    A group of consecutive tensors selected together costs the sum of their t_dw and t_dy
    (the running OR of the mask is the same across the group), so the grouped problem is
    exact. `groups` lists positions, forward order, and covers every tensor once.
    """
    n = len(importance)
    if sorted(k for g in groups for k in g) != list(range(n)) or any(
        list(g) != list(range(g[0], g[0] + len(g))) for g in groups
    ):
        raise ValueError("groups must be runs of consecutive positions covering every tensor")

    def total(values: Sequence[float]) -> list[float]:
        return [sum(values[k] for k in g) for g in groups]

    chosen = select_tensors(total(importance), total(t_dw), total(t_dy), budget, levels)
    mask = [False] * n
    for group, selected in zip(groups, chosen.mask, strict=True):
        for k in group:
            mask[k] = selected
    return Selection(
        mask=tuple(mask),
        importance=chosen.importance,
        backward=float(planned_backward(mask, t_dw, t_dy)),
        backward_fraction=backward_fraction(mask, t_dw, t_dy),
    )


def solve_quantised(importance: Sequence[float], q: Quantised) -> tuple[float, tuple[bool, ...]]:
    """The exact DP of §6.5 on the discretised problem: (best Σ I, mask in forward order)."""
    n = len(importance)
    width = q.budget + 1
    # best[b]: best Σ I using tensors after the current k*, weight ≤ b. take[j, b]: tensor j is
    # in the best set for budget b among tensors j..n-1.
    best = np.zeros(width)
    take = np.zeros((n, width), dtype=bool)
    answer_value, answer_k, answer_rest = 0.0, None, 0
    for k in range(n - 1, -1, -1):
        value, weight = float(importance[k]), q.t_dw[k]
        if value <= 0:
            continue
        rest = q.budget - q.dy_suffix[k] - weight
        if rest >= 0 and value + best[rest] > answer_value:
            answer_value, answer_k, answer_rest = value + best[rest], k, rest
        if weight == 0:
            best += value
            take[k] = True
        elif weight < width:
            with_k = best[:-weight] + value
            better = with_k > best[weight:]
            take[k, weight:] = better
            best[weight:] = np.where(better, with_k, best[weight:])
    mask = [False] * n
    if answer_k is not None:
        mask[answer_k] = True
        room = answer_rest
        for j in range(answer_k + 1, n):  # undo the knapsack in the reverse order it was built
            if take[j, room]:
                mask[j] = True
                room -= q.t_dw[j]
    return answer_value, tuple(mask)


def brute_force_quantised(
    importance: Sequence[float], q: Quantised
) -> tuple[float, tuple[bool, ...]]:
    """Try every mask of the discretised problem (tests only; 2^N)."""
    best_value, best_mask = 0.0, (False,) * len(importance)
    for mask in itertools.product((False, True), repeat=len(importance)):
        if not any(mask):
            continue
        earliest = mask.index(True)
        cost = q.dy_suffix[earliest] + sum(w for w, m in zip(q.t_dw, mask, strict=True) if m)
        value = sum(i for i, m in zip(importance, mask, strict=True) if m)
        if cost <= q.budget and value > best_value:
            best_value, best_mask = value, mask
    return best_value, best_mask


def backward_fraction(mask: Sequence[bool], t_dw: Sequence[float], t_dy: Sequence[float]) -> float:
    """ "%T_sel" of §6.6: Σ(prefix-max(m)·t_dy + m·t_dw) / Σ(t_dy + t_dw), forward order."""
    full = sum(t_dw) + sum(t_dy)
    return planned_backward(mask, t_dw, t_dy) / full if full else 0.0


def flops_speedup(mask: Sequence[bool], profile: FlopsProfile) -> float:
    """Full step FLOPs over this selection's step FLOPs (forward included)."""
    full = profile.t_fp + profile.t_bp_full
    return full / (profile.t_fp + profile.backward_flops(mask))


def _suffix_sums(values: Sequence[float]) -> list[float]:
    sums, running = [0.0] * len(values), 0.0
    for k in range(len(values) - 1, -1, -1):
        running += values[k]
        sums[k] = running
    return sums
