"""DDP, FSDP2 and DeepSpeed on 2 gloo processes (FSDP HYBRID_SHARD on 4) against one process.

Four launches (see launches.py) run every case; the tests below only compare their records.
Equivalence: the per-step losses of 2 (or 4) processes equal those of 1 process with the same
global batch, on answers whose lengths differ up to 6x, with accumulation 2 and clipping, so only
a loss normalised by the global target-token count (and a global gradient norm) passes.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch
from launches import (
    EQUIVALENCE,
    EXTRA_CELLS,
    EXTRA_METHODS,
    HYBRID_2X2,
    METHODS,
    PER_RANK,
    STEPS,
    launch,
    probe_overrides,
    train_case,
    wide_targets,
)

pytestmark = pytest.mark.distributed
CELLS = [
    *[(s, m) for s in EQUIVALENCE for m in METHODS],
    *EXTRA_CELLS,
    ("fsdp_rank0_init", "full"),
]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def runs() -> dict:
    """Every case of the three launches, by id; also the wall time of the whole group."""
    # Not pytest's tmp_path: concurrent pytest sessions prune each other's old basetemp folders,
    # and these launches run for minutes.
    tmp = Path(tempfile.mkdtemp(prefix="tunesmith-distributed-"))
    data = wide_targets(tmp)
    one, two = tmp / "ckpt_written_by_1", tmp / "ckpt_written_by_2"
    fsdp = ["strategy.name=fsdp"]

    def ckpt(case_id: str, mode: str, directory: Path, seed: int) -> dict:
        overrides = probe_overrides(tmp, case_id) + fsdp
        return {
            "id": case_id,
            "kind": "fsdp_checkpoint",
            "mode": mode,
            "seed": seed,
            "directory": str(directory),
            "overrides": overrides,
        }

    def probe(kind: str, case_id: str, **extra: object) -> dict:
        return {"id": case_id, "kind": kind, "overrides": probe_overrides(tmp, case_id, **extra)}

    raw_json = tmp / "ds.json"
    raw_json.write_text(
        '{"gradient_accumulation_steps": "auto", "zero_optimization": {"reduce_bucket_size": 123456}}'
    )
    plan_one = [
        train_case(tmp, data, f"single_{m}", m, 2 * PER_RANK, **{"strategy.name": "single"})
        for m in [*METHODS, *EXTRA_METHODS]
    ] + [ckpt("ckpt_save_1", "save", one, seed=0)]
    # FSDP virtual-token runs also write a resume checkpoint (their adapter state is read from
    # sharded prompt encoders there): it must neither fail nor change the losses.
    checkpointed = {("fsdp_full_shard", "prefix"), ("fsdp_full_shard", "prompt")}
    plan_two = [
        train_case(
            tmp,
            data,
            f"{s}_{m}",
            m,
            PER_RANK,
            **EQUIVALENCE[s],
            **({"checkpoint.save_every": 2} if (s, m) in checkpointed else {}),
        )
        for s, m in CELLS
        if s in EQUIVALENCE
    ] + [
        # Green Trainer changes requires_grad between steps: DDP re-wraps.
        train_case(
            tmp,
            data,
            "ddp_green",
            "green",
            PER_RANK,
            **{"strategy.name": "ddp", "method.select_unit": "step", "method.select_every": 1},
        ),
        train_case(
            tmp,
            data,
            "fsdp_rank0_init_full",
            "full",
            PER_RANK,
            **{"strategy.name": "fsdp", "strategy.init": "rank0"},
        ),
        probe("ddp_probe", "ddp_probe", **{"strategy.name": "ddp"}),
        *[
            probe(
                "fsdp_probe",
                f"fsdp_probe_{s}",
                **{"strategy.name": "fsdp", "strategy.sharding_strategy": s},
            )
            for s in ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD")
        ],
        probe(
            "fsdp_probe",
            "fsdp_probe_HYBRID_SHARD",
            **{
                "strategy.name": "fsdp",
                "strategy.sharding_strategy": "HYBRID_SHARD",
                "strategy.hybrid_shard_size": 1,
            },
        ),
        probe(
            "fsdp_probe",
            "fsdp_probe_offload_ac",
            **{
                "strategy.name": "fsdp",
                "strategy.cpu_offload": True,
                "train.activation_checkpointing": True,
            },
        ),
        probe("fsdp_probe", "fsdp_probe_lora", method="lora", **{"strategy.name": "fsdp"}),
        probe(
            "ds_probe",
            "ds_probe_stage3_raw_json",
            **{
                "strategy.name": "deepspeed",
                "strategy.stage": 3,
                "train.grad_accum": 3,
                "strategy.deepspeed_config": str(raw_json),
            },
        ),
        probe(
            "ds_probe",
            "ds_probe_stage2_offload",
            **{
                "strategy.name": "deepspeed",
                "strategy.stage": 2,
                "strategy.offload_optimizer": "cpu",
            },
        ),
        ckpt("ckpt_save_2", "save", two, seed=0),
        ckpt("ckpt_load_1_in_2", "load", one, seed=1),
    ]
    plan_two.append(
        {
            "id": "ds_ckpt_save",
            "kind": "ds_checkpoint",
            "directory": str(tmp / "ds_ckpt"),
            "overrides": probe_overrides(
                tmp, "ds_ckpt", **{"strategy.name": "deepspeed", "strategy.stage": 3}
            ),
        }
    )
    plan_last = [ckpt("ckpt_load_2_in_1", "load", two, seed=1)]
    plan_four = [
        train_case(tmp, data, "fsdp_hybrid_2x2_full", "full", PER_RANK // 2, **HYBRID_2X2),
        probe("fsdp_probe", "fsdp_probe_hybrid_2x2", **HYBRID_2X2),
    ]
    start = time.perf_counter()
    results, seconds = {}, {}
    for name, nproc, plan in [
        ("one", 1, plan_one),
        ("two", 2, plan_two),
        ("last", 1, plan_last),
        ("four", 4, plan_four),
    ]:
        began = time.perf_counter()
        results.update(launch(nproc, plan, tmp, name))
        seconds[name] = time.perf_counter() - began
    results["_wall_seconds"] = time.perf_counter() - start
    results["_tmp"] = str(tmp)
    print(
        f"\ndistributed launches: {results['_wall_seconds']:.1f} s wall ("
        + ", ".join(f"{name} {s:.1f} s" for name, s in seconds.items())
        + ")"
    )
    yield results
    shutil.rmtree(tmp, ignore_errors=True)


def record(runs: dict, case_id: str) -> dict:
    result = runs[case_id]
    assert "error" not in result, result.get("error")
    return result


@pytest.mark.parametrize("strategy,method", CELLS)
def test_two_processes_match_one(runs, strategy, method):
    base = record(runs, f"single_{method}")["losses"]
    got = record(runs, f"{strategy}_{method}")
    assert got["world"] == 2
    assert len(got["losses"]) == len(base) == STEPS
    print(
        f"\n{strategy} {method}: "
        + " ".join(f"{a:.7f}/{b:.7f}" for a, b in zip(base, got["losses"]))
    )
    diffs = [abs(a - b) for a, b in zip(base, got["losses"])]
    assert max(diffs) < TOLERANCE, (base, got["losses"])


def test_hybrid_shard_on_a_2x2_mesh_matches_one_process(runs):
    """4 processes = 2 replicas x 2 shards (hybrid_shard_size=2), one example each per
    micro-batch: the same global batch as one process with 4."""
    base = record(runs, "single_full")["losses"]
    got = record(runs, "fsdp_hybrid_2x2_full")
    assert got["world"] == 4
    assert len(got["losses"]) == len(base) == STEPS
    print(
        "\nfsdp HYBRID_SHARD 2x2 full: "
        + " ".join(f"{a:.7f}/{b:.7f}" for a, b in zip(base, got["losses"]))
    )
    assert max(abs(a - b) for a, b in zip(base, got["losses"])) < TOLERANCE, (base, got["losses"])


def test_hybrid_shard_mesh_is_two_dimensional(runs):
    probe = record(runs, "fsdp_probe_hybrid_2x2")
    assert probe["mesh_shape"] == [2, 2]
    # Every parameter replicated across the 2 replica groups and split in 2 inside each.
    assert probe["placements"] == ["(Replicate(), Shard(dim=0))"]
    assert probe["sharded"] and abs(probe["local_fraction"] - 0.5) < 0.01


def test_ddp_follows_a_changing_trainable_set(runs):
    green = record(runs, "ddp_green")
    assert green["world"] == 2 and len(green["losses"]) == STEPS
    assert all(loss == loss and loss < 10 for loss in green["losses"])  # finite, sane


def test_ddp_replicas_stay_identical(runs):
    assert record(runs, "ddp_probe")["replica_max_diff"] == 0.0


def test_fsdp_sharding_strategies_take_effect(runs):
    full = record(runs, "fsdp_probe_FULL_SHARD")
    grad_op = record(runs, "fsdp_probe_SHARD_GRAD_OP")
    no_shard = record(runs, "fsdp_probe_NO_SHARD")
    hybrid = record(runs, "fsdp_probe_HYBRID_SHARD")
    assert full["sharded"] and abs(full["local_fraction"] - 0.5) < 0.01
    assert not full["gathered_after_forward"]  # resharded after forward
    assert grad_op["sharded"] and grad_op["gathered_after_forward"]  # kept for backward
    assert not no_shard["sharded"] and no_shard["local_fraction"] == 1.0
    # hybrid_shard_size=1 on 2 processes: shard groups of one, replicated across them.
    assert not hybrid["sharded"] and hybrid["local_fraction"] == 1.0
    assert full["offload_policy"] == "OffloadPolicy"


def test_fsdp_offload_and_activation_checkpointing_take_effect(runs):
    plain = record(runs, "fsdp_probe_FULL_SHARD")
    both = record(runs, "fsdp_probe_offload_ac")
    assert both["offload_policy"] == "CPUOffloadPolicy"
    assert both["param_device"] == "cpu" and both["grad_device"] == "cpu"
    assert plain["mlp_forward_calls"] == 1
    assert both["mlp_forward_calls"] == 2  # recomputed in backward


def test_fsdp_shards_frozen_and_trainable_parameters_of_one_block(runs):
    lora = record(runs, "fsdp_probe_lora")
    assert lora["sharded"] and abs(lora["local_fraction"] - 0.5) < 0.02


def test_deepspeed_runs_the_config_tunesmith_built(runs):
    stage3 = record(runs, "ds_probe_stage3_raw_json")
    assert stage3["stage"] == 3 and stage3["grad_accum"] == 3 and stage3["micro_batch"] == 8
    assert stage3["reduce_bucket_size"] == 123456  # from the raw JSON
    assert stage3["local_numel"] == stage3["full_numel"] // 2  # parameters partitioned
    offload = record(runs, "ds_probe_stage2_offload")
    assert offload["stage"] == 2 and offload["cpu_offload"]
    assert offload["offload_optimizer"].endswith("cpu")


@pytest.mark.parametrize("direction", ["2_in_1", "1_in_2"])
def test_sharded_checkpoint_reloads_at_another_world_size(runs, direction):
    writer = "ckpt_save_2" if direction == "2_in_1" else "ckpt_save_1"
    saved, loaded = record(runs, writer), record(runs, f"ckpt_load_{direction}")
    assert loaded["optimizer_states"] == saved["optimizer_states"] > 0
    assert torch.equal(torch.tensor(saved["logits"]), torch.tensor(loaded["logits"]))


def test_fsdp_final_model_loads_with_from_pretrained(runs):
    from transformers import AutoModelForCausalLM

    tmp = Path(runs["_tmp"])
    ids = torch.arange(3, 27).reshape(2, 12)
    logits = []
    for case in ("single_full", "fsdp_full_shard_full"):
        model = AutoModelForCausalLM.from_pretrained(tmp / case / "run" / "final")
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits)
    assert torch.allclose(logits[0], logits[1], atol=1e-4)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_fsdp_virtual_token_adapter_reloads_with_peft(runs, method):
    """The adapter the 2-process FSDP run saved (prompt embeddings computed from the gathered
    state on rank 0 alone) reloads with plain peft in one process to the logits of the
    1-process run's adapter; both differ clearly from the base, so the adapter is not a no-op."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tmp = Path(runs["_tmp"])
    # The FSDP run also wrote a sharded resume checkpoint at step 2 (plan_two: `checkpointed`).
    assert (tmp / f"fsdp_full_shard_{method}" / "run" / "checkpoints" / "step-2").is_dir()
    ids = torch.arange(3, 27).reshape(2, 12)
    logits = {}
    for case in (f"single_{method}", f"fsdp_full_shard_{method}"):
        record(runs, case)
        final = tmp / case / "run" / "final"
        base = AutoModelForCausalLM.from_pretrained(final / "base")
        with torch.no_grad():
            logits["base"] = base(input_ids=ids).logits
            model = PeftModel.from_pretrained(base, final).eval()
            logits[case] = model(input_ids=ids).logits[:, -ids.shape[1] :]
    single, fsdp = logits[f"single_{method}"], logits[f"fsdp_full_shard_{method}"]
    print(
        f"\n{method} adapter reloaded: |fsdp - single| max {(fsdp - single).abs().max():.2e}, "
        f"|single - base| max {(single - logits['base']).abs().max():.2e}"
    )
    assert torch.isfinite(fsdp).all()
    assert (single - logits["base"]).abs().max() > 1e-3
    assert torch.allclose(single, fsdp, atol=1e-5), (single - fsdp).abs().max()


@pytest.mark.parametrize(
    "case,folder", [("ckpt_save_2", "ckpt_written_by_2"), ("ds_ckpt_save", "ds_ckpt")]
)
def test_sharded_checkpoints_consolidate_in_one_process(runs, case, folder):
    """FSDP's DCP shards and DeepSpeed's ZeRO-3 partitions become one plain state dict (what
    export needs) that reproduces the trained model's logits."""
    from conftest import build_tiny_model
    from tunesmith.strategies.consolidate import consolidated_model_state

    saved = record(runs, case)
    state = consolidated_model_state(Path(runs["_tmp"]) / folder)
    model = build_tiny_model("llama", seed=1)
    assert not model.load_state_dict(state, strict=False).missing_keys
    ids = torch.arange(3, 27).reshape(2, 12)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.allclose(logits.flatten(), torch.tensor(saved["logits"]), atol=1e-5)
