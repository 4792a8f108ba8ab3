"""Tensor selection under a FLOPs budget: the exact DP, its budget guarantee and the rho floor."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import transformers

from tunesmith.errors import UserError
from tunesmith.estimate.flops import planned_backward, profile_flops
from tunesmith.methods.green.selection import (
    Quantised,
    backward_budget,
    backward_fraction,
    brute_force_quantised,
    flops_speedup,
    quantise,
    rho_to_backward_fraction,
    select_tensors,
    selectable,
    solve_quantised,
)


@pytest.fixture(scope="module")
def llama_profile():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    return profile_flops(transformers.LlamaForCausalLM(cfg), batch_size=2, input_length=32)


def random_instance(rng: random.Random, mixed_signs: bool) -> tuple[list[float], Quantised]:
    n = rng.randint(1, 10)
    t_dw = tuple(rng.randint(0, 6) for _ in range(n))
    t_dy = [rng.randint(0, 6) for _ in range(n)]
    suffix = tuple(sum(t_dy[k:]) for k in range(n))
    budget = rng.randint(0, sum(t_dw) + sum(t_dy))
    low = -1.0 if mixed_signs else 0.0
    importance = [rng.uniform(low, 1.0) for _ in range(n)]
    return importance, Quantised(t_dw, suffix, budget, unit=1.0)


@pytest.mark.parametrize("mixed_signs", [False, True])
def test_dp_equals_brute_force_on_random_instances(mixed_signs):
    rng = random.Random(1234 + mixed_signs)
    for _ in range(150):
        importance, q = random_instance(rng, mixed_signs)
        value, mask = solve_quantised(importance, q)
        best, _ = brute_force_quantised(importance, q)
        assert value == pytest.approx(best, abs=1e-12)
        # The mask is feasible and really has that value.
        assert value == pytest.approx(sum(i for i, m in zip(importance, mask) if m), abs=1e-12)
        if any(mask):
            cost = q.dy_suffix[mask.index(True)] + sum(w for w, m in zip(q.t_dw, mask) if m)
            assert cost <= q.budget


def test_selection_never_exceeds_budget_in_unquantised_flops():
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 40)
        t_dw = [rng.uniform(0, 1e9) * rng.choice([1e-4, 1, 1]) for _ in range(n)]
        t_dy = [rng.uniform(0, 1e9) * rng.choice([0, 1e-4, 1]) for _ in range(n)]
        importance = [rng.uniform(-0.2, 1.0) for _ in range(n)]
        budget = rng.uniform(0, 1.0) * (sum(t_dw) + sum(t_dy))
        selection = select_tensors(importance, t_dw, t_dy, budget, levels=rng.choice([10, 1000]))
        assert selection.backward == planned_backward(selection.mask, t_dw, t_dy)
        assert selection.backward <= budget
        assert all(importance[k] > 0 for k, m in enumerate(selection.mask) if m)


def test_reference_toy_example():
    # green_trainer.md §6.6, given there in reversed (output-first) order; the reference applies
    # rho to the backward FLOPs directly, so rho_bp = 0.6 of Σ(t_dy + t_dw) = 24.
    t_dy, t_dw, importance = [0, 2, 1, 4, 0], [5, 1, 7, 3, 1], [1, 3, 10, 5, 3]
    forward = [list(reversed(v)) for v in (t_dy, t_dw, importance)]
    selection = select_tensors(forward[2], forward[1], forward[0], budget=0.6 * 24)
    assert selection.importance == 13
    assert list(reversed(selection.mask)) == [False, True, True, False, False]
    assert selection.backward == 11  # t_dw 1 + 7, t_dy 0 + 2 + 1
    assert backward_fraction(selection.mask, forward[1], forward[0]) == pytest.approx(11 / 24)


def test_rho_one_selects_every_tensor(llama_profile):
    profile = llama_profile
    budget = backward_budget(1.0, profile)
    assert budget == profile.t_bp_full
    importance = [random.Random(k).uniform(0.01, 1) for k in range(len(profile.tensors))]
    selection = select_tensors(importance, profile.t_dw, profile.t_dy, budget)
    assert all(selection.mask)  # including the input embedding (the reference's defect 1)
    assert selection.backward_fraction == pytest.approx(1.0)
    assert flops_speedup(selection.mask, profile) == pytest.approx(1.0)


def test_every_rho_from_the_floor_up_gives_a_feasible_selection(llama_profile):
    profile = llama_profile
    rng = random.Random(3)
    importance = [rng.uniform(-0.1, 1) for _ in profile.tensors]
    full_step = profile.t_fp + profile.t_bp_full
    fractions = []
    for step in range(11):
        rho = profile.rho_min + (1 - profile.rho_min) * step / 10
        budget = backward_budget(rho, profile)
        selection = select_tensors(importance, profile.t_dw, profile.t_dy, budget)
        assert profile.t_fp + selection.backward <= rho * full_step * (1 + 1e-12)
        assert (
            selection.backward_fraction
            <= rho_to_backward_fraction(rho, profile.t_fp, profile.t_bp_full) + 1e-12
        )
        fractions.append(selection.backward_fraction)
    assert fractions == sorted(fractions)  # a larger budget never trains less
    assert fractions[-1] > 0.9 and fractions[5] > 0.3  # and the budget is used, not wasted


def test_rho_below_the_floor_is_a_user_error_naming_the_floor(llama_profile):
    profile = llama_profile
    floor = profile.rho_min
    with pytest.raises(UserError) as raised:
        backward_budget(floor - 0.01, profile)
    message = raised.value.one_line()
    assert f"rho_min={floor:.3f}" in message
    assert "batch 2 x 32 tokens" in message
    assert "\n" not in message
    assert backward_budget(floor + 1e-6, profile) >= 0
    for bad in (0.0, 1.5):
        with pytest.raises(UserError):
            backward_budget(bad, profile)


def test_rho_to_backward_fraction_matches_the_spec_table():
    # r = 0.5 (backward exactly twice forward): spec §1.
    for rho, rho_bp in [(0.34, 0.01), (0.4, 0.10), (0.5, 0.25), (0.7, 0.55), (1.0, 1.0)]:
        assert rho_to_backward_fraction(rho, 1.0, 2.0) == pytest.approx(rho_bp)


def test_quantisation_rounds_costs_up_and_never_makes_a_tensor_free():
    t_dw, t_dy = [1.0, 1e6, 3e5], [2e5, 1.0, 7e5]
    q = quantise(t_dw, t_dy, budget=1e6, levels=1000)
    assert all(w >= 1 for w in q.t_dw)  # a 1-FLOP tensor still costs a unit
    assert all(w * q.unit >= dw for w, dw in zip(q.t_dw, t_dw))
    assert all(s * q.unit >= sum(t_dy[k:]) for k, s in enumerate(q.dy_suffix))
    assert q.budget * q.unit <= 1e6
    # Resolution grows with the tensor count: at least 32 units per tensor.
    assert quantise([1.0] * 100, [1.0] * 100, budget=10).unit == pytest.approx(200 / 3200)


def test_selectable_tensors_are_those_that_fit_alone():
    t_dw, t_dy = [4, 1, 1, 1], [5, 2, 2, 1]
    # Alone as the earliest selected tensor: 4+10, 1+5, 1+3, 1+1.
    assert selectable(t_dw, t_dy, budget=5) == [False, False, True, True]
    assert selectable(t_dw, t_dy, budget=6) == [False, True, True, True]


def test_grouped_selection_equals_brute_force_over_whole_groups():
    from tunesmith.methods.green.selection import planned_backward, select_grouped

    gen = random.Random(3)
    for _ in range(30):
        n = 8
        t_dw = [gen.randint(1, 6) for _ in range(n)]
        t_dy = [gen.randint(0, 4) for _ in range(n)]
        importance = [gen.uniform(-0.2, 1.0) for _ in range(n)]
        groups = [[0], [1, 2], [3], [4, 5], [6, 7]]
        # Half a unit off the integer costs: rounding never decides at the boundary.
        budget = int(0.6 * (sum(t_dw) + sum(t_dy))) + 0.5
        chosen = select_grouped(importance, t_dw, t_dy, budget, groups, levels=100000)
        best = 0.0
        for bits in itertools.product((False, True), repeat=len(groups)):
            mask = [bits[g] for g, group in enumerate(groups) for _ in group]
            if planned_backward(mask, t_dw, t_dy) <= budget:
                best = max(best, sum(i for i, m in zip(importance, mask) if m))
        assert chosen.backward <= budget
        assert chosen.importance == pytest.approx(best, abs=1e-9)
        for group in groups:  # whole groups only
            assert len({chosen.mask[k] for k in group}) == 1
