"""The plans the distributed tests run, and the launcher that runs them (one launch, many cases).

Four launches cover everything: one process (the single-device baselines and a 1-process
sharded checkpoint), two processes (every strategy, the probes, a 2-process checkpoint and the
reload of the 1-process one), one process again (reload of the 2-process checkpoint), and four
processes (FSDP HYBRID_SHARD on a real 2 x 2 mesh: 2 replicas of 2 shards).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import NUMBERS, ROOT, run_overrides

WORKER = Path(__file__).resolve().parent / "worker.py"
STEPS, ACCUM, PER_RANK = 3, 2, 2  # global batch: 2 ranks x 2 examples x 2 micro-batches
EQUIVALENCE = {  # case id -> strategy overrides
    "ddp": {"strategy.name": "ddp"},
    "fsdp_full_shard": {"strategy.name": "fsdp", "strategy.sharding_strategy": "FULL_SHARD"},
    "fsdp_shard_grad_op": {
        "strategy.name": "fsdp",
        "strategy.sharding_strategy": "SHARD_GRAD_OP",
    },
    "deepspeed_1": {"strategy.name": "deepspeed", "strategy.stage": 1},
    "deepspeed_2": {"strategy.name": "deepspeed", "strategy.stage": 2},
    "deepspeed_3": {"strategy.name": "deepspeed", "strategy.stage": 3},
}
METHODS = {"full": {}, "lora": {"method.dropout": 0.0, "method.target_modules": "all-linear"}}
# The other methods, each on the engines that accept it (compat), against one process too:
# frozen blocks (freeze), vectors inside blocks (ia3, llama_adapter), virtual tokens (prefix,
# prompt: their saved adapter is computed from the gathered state, see methods/peft_common.py).
EXTRA_METHODS = {
    "prefix": {"method.num_virtual_tokens": 4},
    "prompt": {"method.num_virtual_tokens": 4},
    "freeze": {"method.train_top_layers": 1},
    "ia3": {},
    "llama_adapter": {},
}
EXTRA_CELLS = [
    ("deepspeed_2", "prefix"),
    ("deepspeed_3", "prefix"),
    ("fsdp_full_shard", "prefix"),
    ("fsdp_full_shard", "prompt"),
    *[
        (s, m)
        for s in ("fsdp_full_shard", "deepspeed_3")
        for m in ("freeze", "ia3", "llama_adapter")
    ],
]

# Four processes, PER_RANK // 2 examples each: the same global batch as the 2-process cases.
HYBRID_2X2 = {
    "strategy.name": "fsdp",
    "strategy.sharding_strategy": "HYBRID_SHARD",
    "strategy.hybrid_shard_size": 2,
}


def wide_targets(tmp: Path) -> Path:
    """96 examples whose answers repeat 1-6 times: target lengths differ up to ~6x, so every
    rank and micro-batch holds a different number of target tokens."""
    rows = [json.loads(line) for line in (NUMBERS / "train.jsonl").open()][:96]
    path = tmp / "wide.jsonl"
    with path.open("w") as f:
        for i, row in enumerate(rows):
            answer = " ".join([row["output"]] * (1 + (i * 7) % 6))
            f.write(json.dumps({"input": row["input"], "output": answer}) + "\n")
    return path


def train_case(
    tmp: Path, data: Path, case_id: str, method: str, batch: int, **extra: object
) -> dict:
    """A short training run through the real loop (accumulation 2, clipping on)."""
    values = {
        "data.train": str(data),
        "train.batch_size": batch,
        "train.grad_accum": ACCUM,
        "train.lr": 1e-3,
        "train.max_grad_norm": 0.5,  # small enough to clip: the global norm must be right
        "eval.max_batches": 1,
        **{**METHODS, **EXTRA_METHODS}.get(method, {}),
        **extra,
    }
    overrides = run_overrides(tmp / case_id, "llama", method, STEPS, **values)
    return {"id": case_id, "kind": "train", "overrides": overrides}


def probe_overrides(tmp: Path, case_id: str, method: str = "full", **extra: object) -> list[str]:
    return run_overrides(tmp / case_id, "llama", method, 1, **extra)


def launch(nproc: int, plan: list[dict], tmp: Path, name: str) -> dict:
    """Run the worker on `plan` with `nproc` processes (one thread each); the results dict."""
    plan_path, out_path = tmp / f"{name}.plan.json", tmp / f"{name}.out.json"
    plan_path.write_text(json.dumps(plan))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        "PYTHONPATH": str(ROOT / "src"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    if nproc == 1:
        cmd = [sys.executable, str(WORKER)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
        cmd += ["--master-port", str(_free_port()), str(WORKER)]
    proc = subprocess.run(
        [*cmd, str(plan_path), str(out_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    (tmp / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"{name} launch failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out_path.read_text())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
