"""Packing and cache numbers on the Alpaca demo set (../shared/data/alpaca/alpaca_en_demo.json).

    PYTHONPATH=src .venv/bin/python bench/data_packing_cache.py [--steps 30]

Uses the real stories260K model and tokenizer (../shared/data/stories260K). Reports packing
efficiency and tokens per optimizer step with and without packing, real tokens/s of a short
training run both ways, and the tokenised-data cache speed-up (cold vs warm build).
Writes bench/results/data_packing_cache.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

import tunesmith
from tunesmith.config import load_config
from tunesmith.data.loader import build_dataloaders, real_tokens
from tunesmith.models.load import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MODEL = SHARED / "stories260K"
ALPACA = SHARED / "alpaca" / "alpaca_en_demo.json"
SAMSUM = SHARED / "samsum" / "samsum.zip"


def overrides(cache: Path, out: Path, packing: bool, steps: int, seq: int, batch: int) -> list[str]:
    return [
        f"model.name={MODEL}",
        f"data.train={ALPACA}",
        "data.preset=alpaca",
        f"data.cutoff_len={seq}",
        f"data.max_seq_len={seq}",
        f"data.packing={packing}",
        f"data.cache_dir={cache}",
        f"train.batch_size={batch}",
        f"train.max_steps={steps}",
        "train.lr=1e-3",
        f"train.log_every={steps}",
        "eval.run_validation=false",
        "eval.eval_before_train=false",
        "checkpoint.save_model=false",
        "tracking.plot=false",
        f"output_dir={out}",
    ]


def batch_figures(cfg, tokenizer) -> dict:
    data = build_dataloaders(cfg, tokenizer, 0, 1, False)
    train = data.train
    real = slots = 0
    for _ in range(train.micro_batches_per_epoch):
        batch = train.next_batch()
        real += real_tokens(batch)
        slots += batch["input_ids"].numel()
    steps = train.micro_batches_per_epoch
    stats = data.stats["train"]
    return {
        "examples": stats.examples,
        "truncated": stats.truncated,
        "micro_batches_per_epoch": steps,
        "real_tokens_per_step": real / steps,
        "slots_per_step": slots / steps,
        "efficiency": real / slots,
        "packing_efficiency_rows": stats.packing_efficiency,
    }


def cache_speedup(tokenizer, path: str, extra: list[str]) -> dict:
    cache = Path(tempfile.mkdtemp())
    try:
        cfg = load_config(None, [f"data.train={path}", f"data.cache_dir={cache}", *extra])
        times = []
        for _ in range(2):
            start = time.perf_counter()
            build_dataloaders(cfg, tokenizer, 0, 1, False)
            times.append(time.perf_counter() - start)
        return {"cold_s": times[0], "warm_s": times[1], "speedup": times[0] / times[1]}
    finally:
        shutil.rmtree(cache)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--samsum", action="store_true", help="also time the cache on SAMSum")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 3 steps of 256 tokens, _quick output"
    )
    args = parser.parse_args()
    if args.quick:
        args.steps, args.seq = 3, 256
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp())
    tokenizer = load_tokenizer(load_config(None, [f"model.name={MODEL}"]).model)
    results: dict = {"seq": args.seq, "batch": args.batch, "steps": args.steps}
    for packing in (False, True):
        key = "packed" if packing else "padded"
        cfg = load_config(
            None, overrides(work / "cache", work / key, packing, args.steps, args.seq, args.batch)
        )
        results[key] = batch_figures(cfg, tokenizer)
        summary = tunesmith.train(cfg)
        results[key]["real_tokens_per_s"] = summary["tokens_per_s"]
        results[key]["train_seconds"] = summary["train_seconds"]
    alpaca = ["data.preset=alpaca", f"data.cutoff_len={args.seq}"]
    results["cache_alpaca"] = cache_speedup(tokenizer, str(ALPACA), alpaca)
    if args.samsum:
        samsum = ["data.preset=samsum", "data.max_input_tokens=512", "data.test=null"]
        results["cache_samsum"] = cache_speedup(tokenizer, str(SAMSUM), samsum)
    shutil.rmtree(work)
    name = "data_packing_cache_quick.json" if args.quick else "data_packing_cache.json"
    out = ROOT / "bench" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
