"""Does `tunesmith plan` predict the memory real runs take? Planned vs measured peak, per recipe.

    python bench/plan_accuracy.py           # 9 recipes on a 4-layer, 256-wide Llama (~2 min)
    python bench/plan_accuracy.py --quick   # 4 recipes on a 2-layer one (run_all.py --quick)

Each recipe trains 2 steps through `tunesmith.train` on packed Alpaca-demo rows (every position a
target: `train_on_inputs`, so the planner's all-positions assumption holds) inside
`LiveTensorBytes`, which counts the bytes of every live tensor storage (the CPU analogue of
`torch.cuda.max_memory_allocated`; the process RSS would add ~0.5 GB of Python and libraries).
The plan of the same config is computed with `estimate.memory.plan`. Writes
bench/results/plan_accuracy.json; the target is |planned / measured - 1| <= 15% for every recipe.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS_DIR, SHARED_DATA, TINY_TOKENIZER, load_average  # noqa: E402

RECIPES: dict[str, list[str]] = {
    "full fp32": [],
    "full bf16-mixed": ["train.precision=bf16-mixed"],
    "full bf16-pure": ["train.precision=bf16-pure"],
    "full fp32 + activation checkpointing": ["train.activation_checkpointing=true"],
    "full fp32, grad_accum 2": ["train.grad_accum=2"],
    "lora fp32": ["method.name=lora"],
    "lora on a bf16 base, bf16-mixed": [
        "method.name=lora",
        "model.dtype=bf16",
        "train.precision=bf16-mixed",
    ],
    "freeze (top 2 layers)": ["method.name=freeze", "method.train_top_layers=2"],
    "full fp32, 8-bit AdamW": ["train.optimizer=adamw_8bit"],
}
QUICK = ["full fp32", "full bf16-mixed", "lora on a bf16 base, bf16-mixed", "lora fp32"]


def model_config(layers: int, hidden: int) -> dict:
    return {
        "model_type": "llama",
        "vocab_size": 512,
        "hidden_size": hidden,
        "intermediate_size": hidden * 8 // 3,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 1024,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }


def overrides(model: dict, seq_len: int, batch: int, out: Path, extra: list[str]) -> list[str]:
    return [
        f"model.config={json.dumps(model)}",
        f"model.tokenizer={TINY_TOKENIZER}",
        f"data.train={SHARED_DATA / 'alpaca' / 'alpaca_en_demo.json'}",
        "data.format=alpaca",
        "data.train_on_inputs=true",
        "data.packing=true",
        f"data.max_seq_len={seq_len}",
        f"train.batch_size={batch}",
        "train.max_steps=2",
        "train.log_every=1",
        "eval.run_validation=false",
        "checkpoint.save_model=false",
        "tracking.plot=false",
        f"output_dir={out}",
        *extra,
    ]


def measure(name: str, args: list[str], seq_len: int) -> dict:
    from tunesmith.config import load_config
    from tunesmith.estimate.measure import LiveTensorBytes
    from tunesmith.estimate.memory import plan
    from tunesmith.train.loop import train

    cfg = load_config(None, args)
    planned = plan(cfg, device="cpu", world=1, seq_len=seq_len)
    start = time.perf_counter()
    with LiveTensorBytes() as live:
        train(load_config(None, args))
    measured = live.peak
    return {
        "recipe": name,
        "overrides": [a for a in args if not a.startswith(("model.config", "output_dir"))],
        "planned_bytes": planned.total,
        "planned_components": planned.components(),
        "measured_peak_bytes": measured,
        "ratio": planned.total / measured,
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 recipes, a 2-layer model")
    parser.add_argument("--seq-len", type=int, default=256, help="packed row length")
    parser.add_argument("--batch", type=int, default=4, help="rows per micro-batch")
    parser.add_argument("--tolerance", type=float, default=0.15, help="allowed |ratio - 1|")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    layers, hidden = (2, 128) if args.quick else (4, 256)
    model = model_config(layers, hidden)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(QUICK if args.quick else RECIPES):
            out = Path(tmp) / f"run{i}"
            row = measure(
                name, overrides(model, args.seq_len, args.batch, out, RECIPES[name]), args.seq_len
            )
            rows.append(row)
            print(
                f"{name:40s} planned {row['planned_bytes'] / 2**20:8.1f} MiB  measured "
                f"{row['measured_peak_bytes'] / 2**20:8.1f} MiB  ratio {row['ratio']:.3f}",
                flush=True,
            )
    worst = max(abs(r["ratio"] - 1) for r in rows)
    result = {
        "what": "planned (estimate.memory.plan) vs measured peak live-tensor bytes, 2 steps",
        "model": model,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "quick": args.quick,
        "tolerance": args.tolerance,
        "worst_relative_error": worst,
        "within_tolerance": worst <= args.tolerance,
        "load_average": load_average(),
        "torch": torch.__version__,
        "rows": rows,
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    name = "plan_accuracy_quick.json" if args.quick else "plan_accuracy.json"
    (RESULTS_DIR / name).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(
        f"worst |planned/measured - 1| = {100 * worst:.1f}% (tolerance {100 * args.tolerance:.0f}%)"
    )
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
