"""DeepSpeed options that must take effect: non-finite steps skipped, zero3_init, NVMe offload.

One 2-process launch (tests/distributed/ds_worker.py) runs every 2-process case:

- a step whose gradient is inf on rank 1 leaves every weight unchanged, for ZeRO stages 0-3 in
  fp32 and bf16 (stage 0 in fp32 is the engine path that would apply it: the strategy drops
  it), and the next step trains on with finite weights; through the loop such a step is counted
  as skipped and the run finishes with finite weights;
- `zero3_init`: the model is partitioned while it is built (each parameter a ZeRO-3 partition,
  no full copy on any rank) and the partitions hold the checkpoint's weights; training from it
  gives the same losses as partitioning after loading, for full fine-tuning and LoRA.

NVMe offload needs DeepSpeed's async_io op (libaio): with libaio it trains exactly like CPU
offload (one process; slow: the op compiles on first use); without, the run is refused before
any weight loads, saying what to install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, build_tiny_model, run_overrides

pytestmark = pytest.mark.distributed
WORKER = Path(__file__).resolve().parent / "ds_worker.py"
NONFINITE = [
    (0, "fp32"),
    (0, "bf16-mixed"),
    (1, "fp32"),
    (2, "bf16-mixed"),
    (3, "fp32"),
    (3, "bf16-mixed"),
]
POISONED = [(0, "fp32"), (3, "bf16-mixed")]
ZERO3_METHODS = {"full": {}, "lora": {"method.dropout": 0.0, "method.target_modules": "all-linear"}}


def deepspeed_overrides(tmp: Path, case_id: str, steps: int, method: str = "full", **extra):
    values = {
        "strategy.name": "deepspeed",
        "train.batch_size": 2,
        "train.lr": 1e-3,
        "eval.run_validation": False,
        **extra,
    }
    return run_overrides(tmp / case_id, "llama", method, steps, **values)


def from_folder(overrides: list[str], folder: Path) -> list[str]:
    """The same overrides, loading the model from a saved folder instead of a config."""
    return [o for o in overrides if not o.startswith("model.config=")] + [f"model.name={folder}"]


def plan(tmp: Path) -> list[dict]:
    base = tmp / "base"
    build_tiny_model("llama", seed=3).save_pretrained(base)
    cases = []
    for stage, precision in NONFINITE:
        overrides = deepspeed_overrides(
            tmp, "nf", 1, **{"strategy.stage": stage, "train.precision": precision}
        )
        cases.append(
            {"id": f"nonfinite_{stage}_{precision}", "kind": "nonfinite", "overrides": overrides}
        )
    for stage, precision in POISONED:
        case_id = f"poisoned_{stage}_{precision}"
        overrides = deepspeed_overrides(
            tmp, case_id, 4, **{"strategy.stage": stage, "train.precision": precision}
        )
        cases.append({"id": case_id, "kind": "train", "overrides": overrides, "poison_step": 2})
    z3 = {"strategy.stage": 3, "strategy.zero3_init": True}
    cases.append(
        {
            "id": "zero3_init_probe",
            "kind": "zero3_init",
            "overrides": from_folder(deepspeed_overrides(tmp, "probe", 1, **z3), base),
        }
    )
    for method, options in ZERO3_METHODS.items():
        for init in (False, True):
            case_id = f"stage3_{method}_zero3_init_{init}"
            values = {"strategy.stage": 3, "strategy.zero3_init": init, **options}
            overrides = deepspeed_overrides(tmp, case_id, 3, method, **values)
            cases.append(
                {"id": case_id, "kind": "train", "overrides": from_folder(overrides, base)}
            )
    return cases


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("deepspeed_options")
    plan_path, out_path = tmp / "plan.json", tmp / "out.json"
    plan_path.write_text(json.dumps(plan(tmp)))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        "PYTHONPATH": str(ROOT / "src"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--standalone",
        str(WORKER),
        str(plan_path),
        str(out_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    (tmp / "log.txt").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0 and out_path.exists(), proc.stderr[-4000:]
    out = json.loads(out_path.read_text())
    print({k: round(v.get("seconds", 0), 1) for k, v in out.items()})
    return out


def ok(results: dict, case_id: str) -> dict:
    record = results[case_id]
    assert "error" not in record, record.get("error")
    return record


@pytest.mark.parametrize(("stage", "precision"), NONFINITE)
def test_an_inf_gradient_on_one_rank_changes_no_weight(results, stage, precision):
    r = ok(results, f"nonfinite_{stage}_{precision}")
    assert r["bad_norm"] != r["bad_norm"] or abs(r["bad_norm"]) == float("inf")  # nan or inf
    assert r["unchanged_by_bad_step"]
    assert r["good_norm"] < 1e6 and r["finite_after_good_step"] and r["moved_by_good_step"]


@pytest.mark.parametrize(("stage", "precision"), POISONED)
def test_the_loop_counts_the_skipped_step_and_trains_on(results, stage, precision):
    r = ok(results, f"poisoned_{stage}_{precision}")
    assert r["summary"]["skipped_steps"] == 1
    assert r["summary"]["steps"] == 4
    # The skipped step logs no loss (NaN); every other step a finite one.
    assert [loss for loss in r["losses"] if loss == "nan"] == ["nan"]
    assert all(loss < 1e6 for loss in r["losses"] if loss != "nan")
    assert r["final_finite"]


def test_zero3_init_partitions_the_model_while_it_is_built(results):
    r = ok(results, "zero3_init_probe")
    assert r["with_ds_id"] == r["not_available"] == r["params"] > 0
    assert r["local_numel"] == 0  # no rank holds a full parameter
    # Each rank holds about half of every parameter (ZeRO pads partitions to equal sizes).
    assert r["full_numel"] / 2 <= r["partition_numel"] <= r["full_numel"] / 2 + 2 * r["params"]
    assert r["max_diff_to_checkpoint"] == 0.0
    assert r["plain_after"]  # a later load (rank 0 scoring final/) is not partitioned


@pytest.mark.parametrize("method", ZERO3_METHODS)
def test_zero3_init_trains_like_partitioning_after_loading(results, method):
    plain = ok(results, f"stage3_{method}_zero3_init_False")["losses"]
    early = ok(results, f"stage3_{method}_zero3_init_True")["losses"]
    assert len(plain) == len(early) == 3
    assert early == pytest.approx(plain, abs=1e-5)


def async_io_builds() -> bool:
    from tunesmith.strategies.deepspeed import async_io_problem

    return async_io_problem() is None


def nvme_overrides(tmp: Path, case_id: str, target: str) -> list[str]:
    values = {
        "strategy.stage": 3,
        "strategy.offload_param": target,
        "strategy.offload_optimizer": target,
    }
    if target == "nvme":
        values["strategy.nvme_path"] = str(tmp / "swap")
    return deepspeed_overrides(tmp, case_id, 3, **values)


def test_nvme_offload_without_libaio_is_refused_before_loading(tmp_path, capsys):
    from tunesmith.cli import main

    if async_io_builds():
        pytest.skip("libaio is installed: NVMe offload runs (next test)")
    code = main(["train", *nvme_overrides(tmp_path, "nvme", "nvme")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: this configuration cannot run: nvme offload needs ")
    assert "install libaio-dev (apt)" in err[-1]
    assert not (tmp_path / "nvme" / "run").exists()


@pytest.mark.slow  # the first use compiles DeepSpeed's async_io op (minutes on 2 cores)
def test_nvme_offload_trains_like_cpu_offload(tmp_path):
    """One process, ZeRO-3 with parameters and optimizer state swapped to files.

    DeepSpeed swaps only tensors of at least 1 MiB (MIN_AIO_BYTES) and keeps parameters under
    1e5 elements resident, so the model is wider than the usual tiny one (2.4M parameters).
    """
    from conftest import tiny_config
    from tunesmith.config import load_config
    from tunesmith.train.loop import train

    if not async_io_builds():
        pytest.skip("no libaio: NVMe offload cannot run here (previous test)")
    wide = {**tiny_config("llama"), "hidden_size": 256, "intermediate_size": 1024}
    losses = {}
    for target in ("cpu", "nvme"):
        overrides = nvme_overrides(tmp_path, target, target)
        cfg = load_config(None, [*overrides, f"model.config={json.dumps(wide)}"])
        train(cfg)
        rows = (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()
        losses[target] = [json.loads(r)["loss"] for r in rows if '"loss"' in r]
    assert len(losses["nvme"]) == 3
    assert losses["nvme"] == losses["cpu"]
    # The tensors really went through files on the drive: parameters, the fp32 master weights
    # and both Adam moments.
    swap = tmp_path / "swap" / "zero_stage_3"
    params = list((swap / "float32params" / "rank0").glob("*_param.tensor.swp"))
    optimizer = {p.name.split("-")[0] for p in (swap / "optimizer" / "rank0").glob("*.swp")}
    assert params and all(p.stat().st_size >= 2**20 for p in params)
    assert {"exp_avg", "exp_avg_sq"} <= optimizer


@pytest.mark.parametrize(
    "raw",
    [{"bf16": {"check_grad_overflow": False}}, {"zero_optimization": {"compute_grad_norm": False}}],
)
def test_a_raw_config_may_not_turn_off_the_non_finite_skip(tmp_path, raw):
    from tunesmith.config import load_config
    from tunesmith.errors import UserError
    from tunesmith.strategies.deepspeed import build_config

    path = tmp_path / "ds.json"
    path.write_text(json.dumps(raw))
    cfg = load_config(
        None, deepspeed_overrides(tmp_path, "raw", 1, **{"strategy.deepspeed_config": str(path)})
    )
    with pytest.raises(
        UserError, match="needs it on to skip updates whose gradients are not finite"
    ):
        build_config(cfg.strategy, cfg.train, 1, torch.device("cpu"))
