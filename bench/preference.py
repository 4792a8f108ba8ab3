"""DPO speed and memory: tunesmith against TRL's DPOTrainer, and the reference's memory.

    python bench/preference.py            # a 4-layer, 256-wide Llama, 20 steps per system
    python bench/preference.py --quick    # the 2-layer tiny Llama, 4 steps (a smoke run)

Every system trains the same randomly initialised Llama (built from one config and seed) on the
same {prompt, chosen, rejected} pairs (the number-spelling task: chosen = the right spelling,
rejected = another number's), batch 8 pairs, no shuffling differences that matter for speed, each
in its own subprocess so peak RSS is its own:

- tunesmith full (frozen reference copy) and TRL DPOTrainer full (ref_model = a copy);
- tunesmith LoRA (the reference is the policy with adapters disabled, no copy), TRL LoRA with
  peft_config (the same), and TRL LoRA with an explicit copied ref_model: the memory a copied
  reference costs.

Tokens/s counts the real (non-padding) tokens of the chosen and rejected rows per second of
training steps. Results: bench/results/preference.{json,md} (`_quick` for --quick).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (  # noqa: E402
    REPO,
    load_average,
    machine,
    markdown_table,
    peak_rss_bytes,
    run_isolated,
    write_results,
)

TOKENIZER = REPO / "examples" / "tiny" / "tokenizer"
NUMBERS = REPO / "examples" / "tiny" / "numbers" / "train.jsonl"
SYSTEMS = ["tunesmith_full", "trl_full", "tunesmith_lora", "trl_lora", "trl_lora_copied_ref"]
SIZES = {
    "quick": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2},
    "full": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4},
}
BATCH, BETA, LR = 8, 0.1, 1e-4


def model_config(size: str) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "vocab_size": 512,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        **SIZES[size],
    }


def pair_records() -> list[dict[str, str]]:
    rows = [json.loads(line) for line in NUMBERS.open()]
    return [
        {
            "prompt": f"Spell {r['input']} in words:",
            "chosen": " " + r["output"],
            "rejected": " " + rows[(i + 7) % len(rows)]["output"],
        }
        for i, r in enumerate(rows)
    ]


def run_tunesmith(system: str, size: str, steps: int, tmp: str) -> dict[str, Any]:
    import tunesmith

    data = Path(tmp) / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pair_records()))
    method = "lora" if system.endswith("lora") else "full"
    cfg = tunesmith.load_config(
        None,
        [
            f"model.config={json.dumps(model_config(size))}",
            f"model.tokenizer={TOKENIZER}",
            f"data.train={data}",
            "data.format=preference",
            f"method.name={method}",
            "method.dropout=0.0" if method == "lora" else "seed=0",
            "objective.name=dpo",
            f"objective.beta={BETA}",
            f"train.max_steps={steps}",
            f"train.batch_size={BATCH}",
            f"train.lr={LR}",
            f"train.log_every={steps}",
            "eval.run_validation=false",
            "checkpoint.save_model=false",
            "tracking.plot=false",
            "data.cache=false",
            f"output_dir={tmp}/run",
        ],
    )
    summary = tunesmith.train(cfg)
    return {"tokens_per_s": summary["tokens_per_s"], "train_seconds": summary["train_seconds"]}


def run_trl(system: str, size: str, steps: int, tmp: str) -> dict[str, Any]:
    import warnings

    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    cfg = model_config(size)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.unk_token or tokenizer.eos_token
    lora = system.startswith("trl_lora")
    ref_model = None
    if not lora or system == "trl_lora_copied_ref":
        ref_model = copy.deepcopy(model).eval()
    args = DPOConfig(
        output_dir=f"{tmp}/trl",
        report_to=[],
        use_cpu=True,
        bf16=False,
        beta=BETA,
        learning_rate=LR,
        per_device_train_batch_size=BATCH,
        max_steps=steps,
        logging_steps=steps,
        save_strategy="no",
        lr_scheduler_type="cosine",
        dataloader_num_workers=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=datasets.Dataset.from_list(pair_records()),
            processing_class=tokenizer,
            peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0) if lora else None,
        )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    tokens = trainer._total_train_tokens
    return {"tokens_per_s": tokens / max(seconds, 1e-9), "train_seconds": seconds}


def worker(system: str, size: str, steps: int, out: Path, tmp: str) -> None:
    load_before = load_average()
    run = run_tunesmith if system.startswith("tunesmith") else run_trl
    result = run(system, size, steps, tmp)
    result.update(
        system=system,
        peak_rss_bytes=peak_rss_bytes(),
        load_before=load_before,
        load_after=load_average(),
    )
    out.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker")
    parser.add_argument("--size", default="full")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tmp")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.size, args.steps, args.out, args.tmp)
        return
    size, steps = ("quick", 4) if args.quick else ("full", args.steps)
    results = {}
    for system in SYSTEMS:
        results[system] = run_isolated(
            Path(__file__),
            ["--worker", system, "--size", size, "--steps", str(steps)],
            timeout=1800,
            threads=1,
        )
        print(system, {k: v for k, v in results[system].items() if k != "log"}, flush=True)
    rows = []
    for system, r in results.items():
        if "error" in r:
            rows.append([system, "failed: " + r["error"][:120], ""])
            continue
        rows.append([system, f"{r['tokens_per_s']:.0f}", f"{r['peak_rss_bytes'] / 2**20:.0f}"])
    note = (
        f"DPO, Llama {SIZES[size]}, batch {BATCH} pairs, {steps} steps, one thread per "
        "process; measured on a loaded shared machine: compare ratios within one run.\n\n"
    )
    name = "preference_quick" if args.quick else "preference"
    write_results(
        name,
        {"machine": machine(), "size": SIZES[size], "steps": steps, "results": results},
        note + markdown_table(["system", "real tok/s", "peak RSS MiB"], rows),
    )


if __name__ == "__main__":
    main()
