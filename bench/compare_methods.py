"""Fine-tuning methods side by side: trainable share, speed, memory and validation loss.

    python bench/compare_methods.py            # every method in tunesmith.methods.METHODS
    python bench/compare_methods.py --quick    # fewer steps
    python bench/compare_methods.py --methods full,lora

Each method fine-tunes the same real pretrained model (stories260K from ../shared/data, a Llama
trained on TinyStories) on the same task (examples/tiny: spell a number in words) for the same
number of steps with the same batches, each at its own recommended learning rate (the method's
`default_lr`, which is what a user gets without setting train.lr), each in its own subprocess so
peak RSS is its own. Validation loss is evaluated every few steps. Results:
bench/results/compare_methods.{json,md} and compare_methods.png (validation loss against step).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (  # noqa: E402
    REPO,
    RESULTS_DIR,
    SHARED_DATA,
    StepProbe,
    load_average,
    machine,
    markdown_table,
    peak_rss_bytes,
    run_isolated,
    write_results,
)

BASE_MODEL = SHARED_DATA / "stories260K"
TASK = REPO / "examples" / "tiny" / "numbers"
# Methods that need a choice to run at all get a middle-of-the-road one (stories260K has 5 blocks).
METHOD_OPTIONS = {"freeze": ["method.train_top_layers=2"]}


def overrides(method: str, steps: int, eval_every: int, out_dir: str) -> list[str]:
    """The tunesmith run of one method; everything but the method is the same for all."""
    return [
        f"model.name={BASE_MODEL.resolve()}",
        f"data.train={TASK / 'train.jsonl'}",
        f"data.validation={TASK / 'validation.jsonl'}",
        "data.input_format='Spell __input__ in words:'",
        "data.output_format=' __output__'",
        f"method.name={method}",
        *METHOD_OPTIONS.get(method, []),
        f"train.max_steps={steps}",
        "train.batch_size=16",
        "train.warmup_steps=5",
        "train.log_every=1",
        f"eval.eval_every={eval_every}",
        "eval.eval_before_train=true",
        "checkpoint.save_model=false",
        "tracking.plot=false",
        f"output_dir={out_dir}",
        "seed=0",
    ]


def worker(method: str, steps: int, eval_every: int, out: Path, tmp: str) -> None:
    """Train one method in this process and write its measurements to `out`."""
    from transformers.models.llama.modeling_llama import LlamaForCausalLM, LlamaModel

    import tunesmith

    probe = StepProbe()
    probe.install([LlamaForCausalLM, LlamaModel])
    load_before = load_average()
    cfg = tunesmith.load_config(None, overrides(method, steps, eval_every, f"{tmp}/run"))
    summary = tunesmith.train(cfg)
    lines = Path(f"{tmp}/run/metrics.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    timing = probe.summary(warmup=2)
    timing.pop("per_step")
    from tunesmith.methods import METHODS

    result = {
        "method": method,
        "lr": cfg.train.lr if cfg.train.lr is not None else METHODS[method].default_lr,
        "trainable_params": summary["trainable_params"],
        "total_params": summary["total_params"],
        "trainable_percent": 100 * summary["trainable_params"] / max(summary["total_params"], 1),
        **timing,
        "peak_rss_bytes": peak_rss_bytes(),
        "val_curve": [[row["step"], row["val_loss"]] for row in rows if "val_loss" in row],
        "train_curve": [[row["step"], row["loss"]] for row in rows if "loss" in row],
        "load_before": load_before,
        "load_after": load_average(),
    }
    out.write_text(json.dumps(result))


def table(results: dict[str, dict[str, Any]]) -> str:
    headers = [
        "method",
        "lr",
        "trainable",
        "trainable %",
        "median step s",
        "real tok/s",
        "peak RSS MiB",
        "val loss start",
        "val loss end",
        "best val loss",
    ]
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "failed: " + r["error"][:160]] + [""] * (len(headers) - 2))
            continue
        curve = [loss for _, loss in r["val_curve"]]
        rows.append(
            [
                name,
                f"{r['lr']:g}",
                f"{r['trainable_params']:,}",
                f"{r['trainable_percent']:.2f}",
                f"{r['median_step_s']:.3f}",
                f"{r['real_tokens_per_s']:.0f}",
                f"{r['peak_rss_bytes'] / 2**20:.0f}",
                f"{curve[0]:.3f}" if curve else "-",
                f"{curve[-1]:.3f}" if curve else "-",
                f"{min(curve):.3f}" if curve else "-",
            ]
        )
    return markdown_table(headers, rows)


def plot(results: dict[str, dict[str, Any]], path: Path, steps: int) -> bool:
    """Validation loss against step, one line per method; False when matplotlib is missing."""
    from tunesmith.tracking import plot_runs

    runs = {
        f"{name} ({r['trainable_percent']:.2f}%)": [
            {"step": step, "val_loss": loss} for step, loss in r["val_curve"]
        ]
        for name, r in results.items()
        if "error" not in r and r["val_curve"]
    }
    title = f"stories260K on number spelling, {steps} steps, each method at its default lr"
    return plot_runs(runs, path, title=title, legend_title="method (trainable %)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--methods", help="comma-separated subset (default: every registered)")
    parser.add_argument("--steps", type=int, help="optimizer steps per method")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per method")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--eval-every", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = args.steps or (20 if args.quick else 120)
    eval_every = args.eval_every or max(steps // 12, 1)
    if args.worker:
        worker(args.worker, steps, eval_every, args.out, args.tmp)
        return 0

    from tunesmith.methods import METHODS

    names = args.methods.split(",") if args.methods else list(METHODS)
    info = machine()
    info["torch_threads"] = args.threads
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        print(f"running {name} ...", end=" ", flush=True)
        results[name] = run_isolated(
            Path(__file__),
            ["--worker", name, "--steps", str(steps), "--eval-every", str(eval_every)],
            timeout=1200,
            threads=args.threads,
        )
        r = results[name]
        curve = r.get("val_curve") or [[0, float("nan")]]
        print(r.get("error") or f"val loss {curve[0][1]:.3f} -> {curve[-1][1]:.3f}", flush=True)
    info["load_average_end"] = load_average()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    png = "compare_methods_quick.png" if args.quick else "compare_methods.png"
    plotted = plot(results, RESULTS_DIR / png, steps)
    text = table(results)
    markdown = (
        "# Fine-tuning methods compared\n\n"
        f"stories260K (a real pretrained 260K-parameter Llama) fine-tuned on examples/tiny number "
        f"spelling: batch 16, {steps} steps, warmup 5, cosine, seed 0, each method at its default "
        f"learning rate; validation loss every {eval_every} steps. {info['cpus']} CPUs, "
        f"{args.threads} torch thread(s) per method, load average {info['load_average_1_5_15']} "
        f"at the start and {info['load_average_end']} at the end.\n\n"
        + text
        + (f"\n![validation loss against step]({png})\n" if plotted else "")
        + "\nStep time is the median time between optimizer steps (evaluation steps are outliers "
        "the median ignores); on a model this small it is mostly fixed per-step overhead, so it "
        "says little about how the methods scale.\n"
    )
    # A smoke run never replaces the full results.
    write_results(
        "compare_methods_quick" if args.quick else "compare_methods",
        {"steps": steps, "eval_every": eval_every, "machine": info, "results": results},
        markdown,
    )
    print(text)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
