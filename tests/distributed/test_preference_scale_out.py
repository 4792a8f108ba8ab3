"""DPO and ORPO on 2 gloo processes (DDP, FSDP2, ZeRO-3) equal one process, full and LoRA.

Two launches (one process, then two) run every case through the real loop; the per-step losses
must agree within 1e-5. Responses differ in length up to ~4x and every step accumulates 2
micro-batches, so only losses normalised by the global pair count (and ORPO's supervised term by
the global chosen-token count) pass. Full-model DPO on FSDP and ZeRO-3 holds its frozen reference
copy sharded like the policy (about half of its weights per process); the `_precomputed` cells
run the same with the reference log-probs computed before training, which must give the same
losses as the one-process frozen copy.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from launches import ACCUM, PER_RANK, STEPS, launch

from conftest import NUMBERS, run_overrides

pytestmark = pytest.mark.distributed
STRATEGIES = {
    "ddp": {"strategy.name": "ddp"},
    "fsdp": {"strategy.name": "fsdp", "strategy.sharding_strategy": "FULL_SHARD"},
    "deepspeed_3": {"strategy.name": "deepspeed", "strategy.stage": 3},
}
METHODS = {"full": {}, "lora": {"method.dropout": 0.0, "method.target_modules": "all-linear"}}
OBJECTIVES = {"dpo": {"objective.beta": 0.5}, "orpo": {}}
CELLS = [(s, m, o) for s in STRATEGIES for m in METHODS for o in OBJECTIVES]
SHARDED = ["fsdp", "deepspeed_3"]
PRECOMPUTED = [(s, "full", "dpo") for s in SHARDED]
TOLERANCE = 1e-5


def uneven_pairs(tmp: Path) -> Path:
    rows = [json.loads(line) for line in (NUMBERS / "train.jsonl").open()][:64]
    path = tmp / "pairs.jsonl"
    with path.open("w") as f:
        for i, row in enumerate(rows):
            other = rows[(i + 5) % len(rows)]["output"]
            record = {
                "prompt": row["input"],
                "chosen": " ".join([row["output"]] * (1 + (i * 7) % 4)),
                "rejected": " ".join([other] * (1 + (i * 3) % 3)),
            }
            f.write(json.dumps(record) + "\n")
    return path


def case(tmp: Path, data: Path, case_id: str, method: str, objective: str, batch: int, **extra):
    values = {
        "data.train": str(data),
        "data.format": "preference",
        "data.input_format": json.dumps("Spell __input__ in words:"),
        "data.validation": "null",
        "data.cache_dir": str(tmp / "cache"),
        "objective.name": objective,
        "train.batch_size": batch,
        "train.grad_accum": ACCUM,
        "train.lr": 1e-3,
        "train.max_grad_norm": 0.5,
        "checkpoint.save_model": False,
        **METHODS[method],
        **OBJECTIVES[objective],
        **extra,
    }
    overrides = run_overrides(tmp / case_id, "llama", method, STEPS, **values)
    return {"id": case_id, "kind": "train", "overrides": overrides}


@pytest.fixture(scope="module")
def runs() -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="tunesmith-preference-"))
    data = uneven_pairs(tmp)
    single = {"strategy.name": "single"}
    plan_one = [
        case(tmp, data, f"single_{m}_{o}", m, o, 2 * PER_RANK, **single)
        for m in METHODS
        for o in OBJECTIVES
    ]
    plan_two = [
        case(tmp, data, f"{s}_{m}_{o}", m, o, PER_RANK, **STRATEGIES[s]) for s, m, o in CELLS
    ]
    plan_two += [
        case(tmp, data, f"{s}_{m}_{o}_precomputed", m, o, PER_RANK, **STRATEGIES[s], **precomputed)
        for s, m, o in PRECOMPUTED
        for precomputed in [{"objective.precompute_reference": True}]
    ]
    results = launch(1, plan_one, tmp, "one")
    results.update(launch(2, plan_two, tmp, "two"))
    yield results
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize(
    "strategy,method,objective,variant",
    [(*cell, "") for cell in CELLS] + [(*cell, "_precomputed") for cell in PRECOMPUTED],
)
def test_two_processes_match_one(runs, strategy, method, objective, variant):
    base = runs[f"single_{method}_{objective}"]
    got = runs[f"{strategy}_{method}_{objective}{variant}"]
    assert "error" not in base and "error" not in got, (base.get("error"), got.get("error"))
    assert got["world"] == 2 and len(got["losses"]) == len(base["losses"]) == STEPS
    diffs = [abs(a - b) for a, b in zip(base["losses"], got["losses"])]
    assert max(diffs) < TOLERANCE, (base["losses"], got["losses"])
    # The preference metrics are reduced over ranks like the loss.
    for key in ("reward_margin", "reward_accuracy"):
        assert abs(base["summary"][key] - got["summary"][key]) < 1e-4, key


@pytest.mark.parametrize("strategy", SHARDED)
def test_the_frozen_reference_is_sharded_like_the_policy(runs, strategy):
    """Full-model DPO on 2 processes: each holds about half of the reference copy, not all."""
    reference = runs[f"{strategy}_full_dpo"]["summary"]["reference"]
    assert reference["kind"] == "frozen copy"
    assert 0.4 < reference["weights_share_per_process"] < 0.6, reference
    single = runs["single_full_dpo"]["summary"]["reference"]
    assert single == {"kind": "frozen copy", "weights_share_per_process": 1.0}
