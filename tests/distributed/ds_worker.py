"""DeepSpeed cases for one 2-process launch: non-finite steps, zero3_init; writes rank 0's view.

    OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 tests/distributed/ds_worker.py plan.json out.json

A case is {"id", "kind", "overrides", ...}. `nonfinite` builds the strategy directly and checks
that a step whose gradient is inf on one rank changes no weight; `train` runs the real loop
(optionally with logits poisoned to inf at one step on one rank, through a global forward hook
installed here, not in tunesmith); `zero3_init` checks that the model is partitioned while it
is built and holds the checkpoint's weights. test_deepspeed_options.py compares the records.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # conftest: tiny configs and the embedded task

import worker  # noqa: E402

from conftest import build_tiny_model  # noqa: E402
from tunesmith.config import load_config  # noqa: E402
from tunesmith.train.loop import train  # noqa: E402


def full_weights(strategy, model) -> torch.Tensor:
    """Every parameter, flattened, in fp32 (gathered from the ZeRO-3 partitions)."""
    import deepspeed

    params = list(strategy.engine.module.parameters())
    gathered = (
        deepspeed.zero.GatheredParameters(params)
        if strategy.options.stage == 3
        else contextlib.nullcontext()
    )
    with gathered:
        return torch.cat([p.detach().float().flatten().clone() for p in params])


def step_with_loss_scale(strategy, model, optimizer, scale: float, seed: int) -> float:
    """One optimizer step on a fixed random batch, the loss times `scale` on rank 1 only."""
    from tunesmith.train.loss import token_loss

    gen = torch.Generator().manual_seed(seed + strategy.rank)
    ids = torch.randint(3, 512, (2, 12), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    with strategy.micro_batch(is_last=True):
        loss_sum, n = token_loss(model, batch)
        factor = scale if strategy.rank == 1 else 1.0
        strategy.backward(loss_sum * factor / (n * strategy.world_size))
    return float(strategy.step(optimizer, 1.0))


def run_nonfinite(case: dict) -> dict:
    """good step, step with an inf gradient (rank 1), good step: the middle one changes nothing."""
    from tunesmith.methods import METHODS
    from tunesmith.strategies import STRATEGIES
    from tunesmith.train.optim import build_optimizer

    cfg = load_config(None, case["overrides"])
    strategy = STRATEGIES[cfg.strategy.name](cfg.strategy, cfg.train)
    method = METHODS[cfg.method.name](cfg.method)
    model = method.apply(build_tiny_model("llama", seed=0), None)
    model, optimizer = strategy.setup(
        model, lambda m: build_optimizer(method.param_groups(m, 0.0), cfg.train, 1e-3)
    )
    step_with_loss_scale(strategy, model, optimizer, 1.0, seed=0)
    before = full_weights(strategy, model)
    bad_norm = step_with_loss_scale(strategy, model, optimizer, float("inf"), seed=1)
    after_bad = full_weights(strategy, model)
    good_norm = step_with_loss_scale(strategy, model, optimizer, 1.0, seed=2)
    after_good = full_weights(strategy, model)
    strategy.close()
    return {
        "bad_norm": bad_norm,
        "good_norm": good_norm,
        "unchanged_by_bad_step": bool(torch.equal(before, after_bad)),
        "finite_after_good_step": bool(torch.isfinite(after_good).all()),
        "moved_by_good_step": bool(not torch.equal(after_bad, after_good)),
    }


@contextlib.contextmanager
def poisoned_forward(step: int | None, rank: int):
    """Logits times inf in training forward number `step` (1-based) on rank `rank`."""
    if step is None:
        yield
        return
    calls = {"n": 0}

    def hook(module, args, output):
        if not (module.training and type(module).__name__.endswith("ForCausalLM")):
            return None
        calls["n"] += 1
        if calls["n"] == step and dist.get_rank() == rank:
            output.logits = output.logits * float("inf")
        return output

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def run_train(case: dict) -> dict:
    """Train through the real loop; losses per step, skipped steps, finiteness of final/."""
    from safetensors.torch import load_file

    cfg = load_config(None, case["overrides"])
    with poisoned_forward(case.get("poison_step"), case.get("poison_rank", 1)):
        summary = train(cfg, overwrite=True)
    out = Path(cfg.output_dir)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    record = {"losses": [r["loss"] for r in rows if "loss" in r], "summary": summary}
    weights = out / "final" / "model.safetensors"
    if dist.get_rank() == 0 and weights.exists():
        state = load_file(weights)
        record["final_finite"] = all(bool(torch.isfinite(t).all()) for t in state.values())
    return record


def run_zero3_init(case: dict) -> dict:
    """Build the model inside the strategy's model_init_context, as the loop does."""
    from safetensors.torch import load_file

    from tunesmith.models.load import load_model
    from tunesmith.strategies import STRATEGIES

    cfg = load_config(None, case["overrides"])
    strategy = STRATEGIES[cfg.strategy.name](cfg.strategy, cfg.train)
    with strategy.model_init_context():
        model = load_model(cfg.model, cfg.train.precision, False).model
    params = dict(model.named_parameters())
    record = {
        "params": len(params),
        "with_ds_id": sum(hasattr(p, "ds_id") for p in params.values()),
        "not_available": sum(
            getattr(p, "ds_status", None) is not None and p.ds_status.name == "NOT_AVAILABLE"
            for p in params.values()
        ),
        "local_numel": sum(p.numel() for p in params.values()),
        "partition_numel": sum(
            p.ds_tensor.numel() for p in params.values() if hasattr(p, "ds_tensor")
        ),
        "full_numel": sum(getattr(p, "ds_numel", p.numel()) for p in params.values()),
    }
    # The partitions hold the checkpoint's weights (loaded, not freshly initialised).
    import deepspeed

    saved = load_file(Path(cfg.model.name) / "model.safetensors")
    with deepspeed.zero.GatheredParameters(list(params.values())):
        record["max_diff_to_checkpoint"] = max(
            float((params[k].detach().float() - saved[k].float()).abs().max())
            for k in saved
            if k in params
        )
    # A later load (rank 0 scoring final/, alone) must not be partitioned.
    record["plain_after"] = not hasattr(next(build_tiny_model("llama").parameters()), "ds_id")
    strategy.close()
    return record


KINDS = {"nonfinite": run_nonfinite, "train": run_train, "zero3_init": run_zero3_init}


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    worker.main(sys.argv[1], sys.argv[2], KINDS)  # the same case loop as worker.py
