"""train.compile: `auto` resolves as documented, compiled runs make a bounded number of graphs on
variable-length data and train to the same losses as eager runs.

The training runs use dynamo's `aot_eager` backend (TUNESMITH_COMPILE_BACKEND): it traces,
guards, recompiles and partitions forward/backward exactly as inductor does, so graph counts and
recompiles are the real ones, but it generates no C++ (a cold inductor compile takes minutes on
2 busy cores). The inductor numerics are checked in test_data_batching's compiled packing test
and by bench/throughput.py.
"""

from __future__ import annotations

import pytest
import torch

from conftest import run_overrides
from tunesmith.config import load_config
from tunesmith.data.loader import build_dataloaders
from tunesmith.models.load import load_tokenizer
from tunesmith.train.compile import resolve
from tunesmith.train.loop import train

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_resolves_as_documented():
    def on(setting, device=CPU, precision="fp32", quantized=False, compiles=True):
        return resolve(setting, device, precision, quantized, compiles).enabled

    assert not on("auto") and not on("auto", precision="bf16-mixed") and on("auto", CUDA)
    assert not on("auto", precision="bf16-pure") and on("auto", CUDA, precision="bf16-mixed")
    assert not on("auto", CUDA, quantized=True) and not on("auto", CUDA, compiles=False)
    assert not resolve("auto", CUDA, "bf16-mixed", False, True, encoder_decoder=True).enabled
    assert on(True) and on(True, quantized=True, compiles=False) and not on(False, CUDA)
    cfg = load_config(None, [])
    assert cfg.train.compile == "auto" and load_config(None, ["train.compile=true"]).train.compile
    # precision: auto is bf16-mixed on a bf16 GPU, else fp32.
    assert cfg.train.precision == ("bf16-mixed" if torch.cuda.is_available() else "fp32")


def losses(summary_dir):
    import json

    rows = [json.loads(line) for line in (summary_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def varied_lengths(path, n=96):
    """Prompts of 1 to 24 words: padded batches of 2 span several multiples of 8 tokens."""
    import json
    import random

    rng = random.Random(0)
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            picked = rng.choices(words, k=rng.randint(1, 24))
            f.write(json.dumps({"input": " ".join(picked), "output": picked[-1]}) + "\n")
    return str(path)


def test_variable_length_batches_compile_at_most_once_per_bucket(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_COMPILE_BACKEND", "aot_eager")
    common = {
        "data.train": varied_lengths(tmp_path / "varied.jsonl"),
        "train.batch_size": 2,
        "train.precision": "bf16-mixed",
        "data.pad_to_multiple_of": 8,
        "eval.run_validation": "false",
        "checkpoint.save_model": "false",
        "data.cache": "false",
    }
    steps = 8
    compiled_cfg = load_config(
        None,
        run_overrides(
            tmp_path / "c", "llama", "full", steps, **common, **{"train.compile": "true"}
        ),
    )
    data = build_dataloaders(
        compiled_cfg, load_tokenizer(compiled_cfg.model), 0, 1, False, compiled=True
    )
    widths = [data.train.next_batch()["input_ids"].shape[1] for _ in range(steps)]
    buckets = len(set(widths))
    assert buckets >= 3 and all(w % 8 == 0 or w == data.train.longest[0] for w in widths)

    compiled = train(compiled_cfg)
    stats = compiled["compile"]
    assert stats["enabled"] and stats["reason"] == "train.compile=true"
    # One static graph for the first length, one dynamic graph for every later one.
    assert 1 <= stats["compiled_graphs"] <= min(buckets, 2)
    assert stats["recompiles"] <= buckets - 1 and stats["graph_breaks"] == 0

    eager = train(
        load_config(
            None,
            run_overrides(
                tmp_path / "e", "llama", "full", steps, **common, **{"train.compile": "false"}
            ),
        )
    )
    assert eager["compile"] == {"enabled": False, "reason": "train.compile=false"}
    # Same batches (padded alike), same arithmetic: the same losses, step by step.
    assert losses(tmp_path / "c" / "run") == pytest.approx(losses(tmp_path / "e" / "run"), abs=2e-3)
