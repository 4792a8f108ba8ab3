"""Tensor importance: how much the loss would drop if a tensor took the optimizer's next step.

First-order Taylor estimate (green_trainer.md §5.1): I_k = −Σ_i Δw_i·g_i over tensor k, Δw the
update the optimizer would apply and g the loss gradient. Scores are divided by max_k |I_k|, as the
reference does, so they lie in [−1, 1].

`tensor_importance` has no side effects: weights, `.grad`, `requires_grad` flags, optimizer state
(moments and step counts) and the RNG are the same before and after. Δw is computed analytically
from a copy of Adam/AdamW's state (§5.3) rather than by stepping the optimizer. The reference's
behaviour (two real optimizer steps that leave the Adam state advanced) is `reference_importance`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from contextlib import contextmanager

import torch
from torch import nn

Batch = Mapping[str, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, torch.Tensor | int]]


def tensor_importance(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    loss_fn: LossFn,
    candidate_names: Collection[str],
    gradient_at: str = "start",
    fresh: bool = False,
) -> dict[str, float]:
    """Normalised importance of every parameter of `model`; non-candidates get 0.

    Args:
        model: the model (unwrapped: no DDP reducer must see this backward pass).
        optimizer: the training optimizer; only read. Adam and AdamW updates are reproduced
            exactly (betas, eps, weight decay, amsgrad, bias correction at the next step count);
            with no state yet (step 0) the update is the first Adam step, ≈ −lr·sign(g). Other
            optimizers are treated as a plain gradient step −lr·g.
        batches: one or a few training micro-batches; the gradient is their per-token mean.
        loss_fn: `loss_fn(model, batch) -> (loss_sum, n_tokens)`.
        candidate_names: parameters that may be selected; only they get gradients here.
        gradient_at: where g is taken. "start" (default): at the current weights W0, the same
            gradient that forms Δw, so I is the Taylor prediction of the update's loss drop and
            costs one backward pass. "updated": at W0 + Δw, as the reference does (one more
            forward and backward; the weights are restored bit for bit afterwards).
        fresh: Δw is a first Adam step for every tensor, ignoring the moments. The optimizer's
            real next step (the default) is a near sign step, lr per element, for a tensor that
            never trained but about lr·|m̂|/√v̂ (< lr when gradients are noisy) for one that did,
            so at a reselection the one-step estimate favours the tensors that did not train.

    Returns:
        {name: importance} for every parameter name of `model`.
    """
    scores = taylor_scores(model, optimizer, batches, loss_fn, candidate_names, gradient_at, fresh)
    return normalise(scores, [name for name, _ in model.named_parameters()])


def taylor_scores(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    loss_fn: LossFn,
    candidate_names: Collection[str],
    gradient_at: str = "start",
    fresh: bool = False,
) -> dict[str, float]:
    """Unnormalised −Σ Δw·g per candidate (the predicted loss drop); see `tensor_importance`."""
    if gradient_at not in ("start", "updated"):
        raise ValueError(f"gradient_at must be 'start' or 'updated', not {gradient_at!r}")
    batches = list(batches)
    params = {n: p for n, p in model.named_parameters() if n in candidate_names}
    with _isolated(model, params):
        grads = _mean_gradients(model, batches, loss_fn, params)
        groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        updates = {
            # A parameter the optimizer does not hold yet would join its first group.
            n: _trial_update(
                optimizer, groups.get(id(p), optimizer.param_groups[0]), p, grads[n], fresh
            )
            for n, p in params.items()
        }
        if gradient_at == "updated":
            saved = {n: p.detach().clone() for n, p in params.items()}
            try:
                with torch.no_grad():
                    for n, p in params.items():
                        p.add_(updates[n].to(p.dtype))
                grads = _mean_gradients(model, batches, loss_fn, params)
            finally:
                with torch.no_grad():
                    for n, p in params.items():
                        p.copy_(saved[n])
        return {n: -float((updates[n].double() * grads[n].double()).sum()) for n in params}


def reference_importance(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    loss_fn: LossFn,
    candidate_names: Collection[str],
) -> dict[str, float]:
    """The reference code's procedure (§5.2), side effects included, for reproducing its runs.

    Steps the optimizer on `batch`, takes ΔW = W1 − W0, takes the gradient at W1 on the same
    batch, steps again, then restores the weights to W0. The optimizer keeps both extra steps in
    its moments and step counts (the reference's defect 4). The LR scheduler is not stepped.
    """
    params = {n: p for n, p in model.named_parameters() if n in candidate_names}
    with _isolated(model, params, keep_rng=False):
        start = {n: p.detach().clone() for n, p in params.items()}
        _mean_gradients(model, [batch], loss_fn, params, keep=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        updates = {n: (p.detach() - start[n]).float() for n, p in params.items()}
        grads = _mean_gradients(model, [batch], loss_fn, params, keep=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(start[n])
        scores = {n: -float((updates[n].double() * grads[n].double()).sum()) for n in params}
    return normalise(scores, [name for name, _ in model.named_parameters()])


def normalise(scores: Mapping[str, float], names: Iterable[str]) -> dict[str, float]:
    """Divide by max |score| (all zeros stay zero); names without a score get 0."""
    scale = max((abs(s) for s in scores.values()), default=0.0)
    return {n: (scores.get(n, 0.0) / scale if scale > 0 else 0.0) for n in names}


@contextmanager
def _isolated(model: nn.Module, candidates: Mapping[str, nn.Parameter], keep_rng: bool = True):
    """Only candidates require grad; existing `.grad`s, flags and (optionally) RNG come back."""
    named = list(model.named_parameters())
    flags = {n: p.requires_grad for n, p in named}
    grads = {n: p.grad for n, p in named}
    devices = sorted({p.device.index or 0 for _, p in named if p.device.type == "cuda"})
    try:
        for n, p in named:
            p.grad = None
            p.requires_grad_(n in candidates)
        if keep_rng:  # dropout inside the loss must not shift the training run's random stream
            with torch.random.fork_rng(devices=devices):
                yield
        else:
            yield
    finally:
        for n, p in named:
            p.requires_grad_(flags[n])
            p.grad = grads[n]


def _mean_gradients(
    model: nn.Module,
    batches: list[Batch],
    loss_fn: LossFn,
    params: Mapping[str, nn.Parameter],
    keep: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-token mean gradient over the batches; `.grad` is cleared unless `keep`."""
    tokens = 0.0
    for batch in batches:
        loss_sum, n_tokens = loss_fn(model, batch)
        loss_sum.backward()
        tokens += float(n_tokens)
    grads = {}
    for n, p in params.items():
        grad = (
            p.grad.detach().float()
            if p.grad is not None
            else torch.zeros_like(p, dtype=torch.float)
        )
        grads[n] = grad / max(tokens, 1.0)
        if keep and p.grad is not None:
            p.grad.div_(max(tokens, 1.0))
        elif not keep:
            p.grad = None
    return grads


def _trial_update(
    optimizer: torch.optim.Optimizer,
    group: Mapping,
    param: nn.Parameter,
    grad: torch.Tensor,
    fresh: bool = False,
) -> torch.Tensor:
    """The change the optimizer's next step would make to `param`, computed without stepping
    (with `fresh`, the change of a first step, as if it had no state)."""
    # Scores are normalised, so only the ratio of learning rates between groups matters; a
    # warm-up learning rate of 0 would make every score 0, so fall back to the initial one.
    lr = float(group.get("lr", 0.0)) or float(group.get("initial_lr", 0.0)) or 1.0
    weight_decay = float(group.get("weight_decay", 0.0))
    weight = param.detach().float()
    if group.get("maximize", False):
        grad = -grad
    if "betas" not in group or "eps" not in group:
        return -lr * (grad + weight_decay * weight)
    decoupled = group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW))
    if weight_decay and not decoupled:  # Adam's L2 penalty enters the moments
        grad = grad + weight_decay * weight
    beta1, beta2 = group["betas"]
    state = {} if fresh else optimizer.state.get(param, {})
    step = float(state.get("step", 0)) + 1
    exp_avg = _state_tensor(state, "exp_avg", weight)
    exp_avg_sq = _state_tensor(state, "exp_avg_sq", weight)
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    if group.get("amsgrad", False):
        exp_avg_sq = torch.maximum(_state_tensor(state, "max_exp_avg_sq", weight), exp_avg_sq)
    denom = exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5 + float(group["eps"])
    update = -lr * (exp_avg / (1 - beta1**step)) / denom
    if weight_decay and decoupled:
        update = update - lr * weight_decay * weight
    return update


def _state_tensor(state: Mapping, key: str, like: torch.Tensor) -> torch.Tensor:
    value = state.get(key)
    return value.detach().float() if isinstance(value, torch.Tensor) else torch.zeros_like(like)
