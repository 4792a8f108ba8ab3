"""Runs a list of cases in one (multi-)process launch and writes what rank 0 saw to JSON.

    OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 tests/distributed/worker.py plan.json out.json
    OMP_NUM_THREADS=1 python tests/distributed/worker.py plan.json out.json     # one process

Importing torch, transformers and DeepSpeed costs seconds per launch, so one launch runs many
cases. A case is {"id", "kind", ...}: `train` runs `tunesmith.train` with the case's overrides and
records the per-step losses from metrics.jsonl; the probe kinds build a strategy directly and
record facts that show an option took effect. The pytest side (test_equivalence.py,
test_options.py) compares the records.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # conftest: tiny configs and the embedded task

from conftest import build_tiny_model  # noqa: E402
from tunesmith.config import load_config  # noqa: E402
from tunesmith.strategies import process_group as pg  # noqa: E402
from tunesmith.train.loop import train  # noqa: E402


def main(plan_path: str, out_path: str, kinds: dict | None = None) -> None:
    """Run every case of the plan with `kinds` (default: this file's KINDS); rank 0 writes."""
    torch.set_num_threads(1)
    if os.environ.get("WORKER_STACKS_AFTER"):  # debugging a hang: dump every thread's stack
        import faulthandler

        faulthandler.dump_traceback_later(float(os.environ["WORKER_STACKS_AFTER"]), exit=True)
    if "RANK" not in os.environ:  # one process: a one-rank group the strategies reuse
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(pg.free_port()))
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    # The backend follows the device, as in the strategies (tests/gpu reuses this worker).
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    results: dict[str, dict] = {}
    for case in json.loads(Path(plan_path).read_text()):
        start = time.perf_counter()
        try:
            results[case["id"]] = (kinds or KINDS)[case["kind"]](case)
            results[case["id"]]["seconds"] = time.perf_counter() - start
        except Exception:  # recorded, so one broken case does not hide the others
            results[case["id"]] = {"error": traceback.format_exc()}
            # Also in the launch log: a case failing on one rank only leaves the others waiting
            # in a collective, and then only this rank knows why.
            print(f"rank {rank} case {case['id']}:\n{traceback.format_exc()}", file=sys.stderr)
        dist.barrier()
    if rank == 0:
        Path(out_path).write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()


def run_train(case: dict) -> dict:
    """Train through the real loop; losses per optimizer step from metrics.jsonl."""
    cfg = load_config(None, case["overrides"])
    summary = train(cfg, overwrite=True)
    rows = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").open()]
    losses = [r["loss"] for r in rows if "loss" in r]
    return {"losses": losses, "world": summary["world_size"], "summary": summary}


def strategy_and_model(case: dict):
    """A strategy from the case's overrides, set up on a tiny Llama (seeded identically)."""
    from tunesmith.methods import METHODS
    from tunesmith.strategies import STRATEGIES
    from tunesmith.train.optim import build_optimizer

    cfg = load_config(None, case["overrides"])
    strategy = STRATEGIES[cfg.strategy.name](cfg.strategy, cfg.train)
    with strategy.model_init_context():
        model = build_tiny_model("llama", seed=case.get("seed", 0))
    if cfg.train.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    method = METHODS[cfg.method.name](cfg.method)
    model = method.apply(model, None)
    model, optimizer = strategy.setup(
        model, lambda m: build_optimizer(method.param_groups(m, 0.0), cfg.train, 1e-3)
    )
    return cfg, strategy, model, optimizer


def one_step(strategy, model, optimizer, seed: int = 0) -> torch.Tensor:
    """One forward/backward/step on a fixed random batch; returns the loss."""
    from tunesmith.train.loss import token_loss

    gen = torch.Generator().manual_seed(seed + strategy.rank)
    ids = torch.randint(3, 512, (2, 12), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    with strategy.micro_batch(is_last=True):
        loss_sum, n = token_loss(model, batch)
        strategy.backward(loss_sum / (n * strategy.world_size))
    strategy.step(optimizer, 1.0)
    return loss_sum / n


def probe_logits(model, strategy) -> list[float]:
    """Logits of a fixed batch (same on every rank), flattened, from rank 0's view."""
    ids = torch.arange(3, 27).reshape(2, 12)
    with torch.no_grad(), strategy.micro_batch(is_last=True):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    return logits.float().flatten().tolist()


def run_fsdp_probe(case: dict) -> dict:
    """Sharding, resharding after forward, offload placement, checkpoint recomputation."""
    from torch.distributed.tensor import DTensor

    from tunesmith.strategies.fsdp import is_sharded, local_fraction

    cfg, strategy, model, optimizer = strategy_and_model(case)
    model.train()  # HF recomputes checkpointed layers only in training mode
    inner = next(m for name, m in model.named_modules() if name.endswith("layers.0"))
    calls = {"mlp": 0}
    # A pre-hook: recomputation stops early once the saved tensors exist again, before the
    # module returns, so a post-forward hook would miss it.
    inner.mlp.register_forward_pre_hook(lambda *_: calls.__setitem__("mlp", calls["mlp"] + 1))
    ids = torch.arange(3, 27).reshape(2, 12)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    gathered_after_forward = not isinstance(inner.mlp.up_proj.weight, DTensor)
    (out.loss * strategy.world_size).backward()
    weight = inner.mlp.up_proj.weight
    grad = next(p.grad for p in inner.parameters() if p.grad is not None)
    record = {
        "sharded": is_sharded(weight),
        "local_fraction": local_fraction(model),
        "gathered_after_forward": gathered_after_forward,
        "mlp_forward_calls": calls["mlp"],
        "param_device": str(getattr(weight, "_local_tensor", weight).device),
        "grad_device": str(getattr(grad, "_local_tensor", grad).device),
        "offload_policy": type(inner._get_fsdp_state()._fsdp_param_group.offload_policy).__name__,
        "mesh_shape": list(strategy.mesh.shape),
        # Every parameter's layout over the mesh, e.g. "(Replicate(), Shard(dim=0))" on 2-D.
        "placements": sorted(
            {
                repr(tuple(p.placements)) if isinstance(p, DTensor) else "local"
                for p in model.parameters()
            }
        ),
    }
    strategy.close()
    return record


def run_ds_probe(case: dict) -> dict:
    """The DeepSpeed config the engine actually runs with, and parameter partitioning."""
    cfg, strategy, model, optimizer = strategy_and_model(case)
    engine = strategy.engine
    weight = engine.module.model.layers[0].mlp.up_proj.weight
    zero = engine._config.zero_config
    record = {
        "stage": engine.zero_optimization_stage(),
        "grad_accum": engine.gradient_accumulation_steps(),
        "micro_batch": engine.train_micro_batch_size_per_gpu(),
        "reduce_bucket_size": int(zero.reduce_bucket_size),
        "offload_optimizer": str(zero.offload_optimizer.device) if zero.offload_optimizer else None,
        "cpu_offload": bool(engine.zero_cpu_offload()),
        "local_numel": int(weight.ds_tensor.numel()) if hasattr(weight, "ds_tensor") else None,
        "full_numel": int(getattr(weight, "ds_numel", weight.numel())),
        "loss": float(one_step(strategy, model, optimizer)),
    }
    strategy.close()
    return record


def run_ddp_probe(case: dict) -> dict:
    """After steps on different data per rank, every replica holds identical parameters."""
    cfg, strategy, model, optimizer = strategy_and_model(case)
    for seed in range(2):
        one_step(strategy, model, optimizer, seed)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    spread = torch.stack([flat.max(), -flat.min()])
    low, high = flat.clone(), flat.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    strategy.close()
    return {"replica_max_diff": float((high - low).abs().max()), "spread": spread.tolist()}


def run_fsdp_checkpoint(case: dict) -> dict:
    """`save`: train 2 steps, write a resume checkpoint, record logits. `load`: a fresh model
    (another seed) loads it; its logits must equal the writer's."""
    from pathlib import Path as P

    cfg, strategy, model, optimizer = strategy_and_model(case)
    directory = P(case["directory"])
    if case["mode"] == "save":
        for seed in range(2):
            one_step(strategy, model, optimizer, seed)
        strategy.save_resume(directory, model, optimizer)
    else:
        strategy.load_resume(directory, model, optimizer)
    logits = probe_logits(model, strategy)
    opt_keys = len(optimizer.state)
    strategy.close()
    return {"logits": logits, "optimizer_states": opt_keys}


def run_ds_checkpoint(case: dict) -> dict:
    """Train 2 steps under DeepSpeed, write its resume checkpoint, record the logits."""
    cfg, strategy, model, optimizer = strategy_and_model(case)
    for seed in range(2):
        one_step(strategy, model, optimizer, seed)
    directory = Path(case["directory"])
    directory.mkdir(parents=True, exist_ok=True)
    strategy.save_resume(directory, model, optimizer)
    logits = probe_logits(model, strategy)
    strategy.close()
    return {"logits": logits}


KINDS = {
    "ds_checkpoint": run_ds_checkpoint,
    "train": run_train,
    "fsdp_probe": run_fsdp_probe,
    "ds_probe": run_ds_probe,
    "ddp_probe": run_ddp_probe,
    "fsdp_checkpoint": run_fsdp_checkpoint,
}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
