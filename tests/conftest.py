"""Shared test fixtures: tiny models built from configs, the embedded tokenizer and task.

Nothing here touches the network. Tiny models are a few layers of width 64 with a 512-token
vocabulary (the locally trained tokenizer in examples/tiny/tokenizer).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "examples" / "tiny" / "tokenizer"
NUMBERS = ROOT / "examples" / "tiny" / "numbers"
SHARED_DATA = ROOT.parent / "shared" / "data"

# One thread per test process: the suite runs on 2 cores, and distributed tests start several.
torch.set_num_threads(int(os.environ.get("TUNESMITH_TEST_THREADS", "1")))

SPECIAL_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}

TINY_CONFIGS: dict[str, dict] = {
    "llama": {
        "model_type": "llama",
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        **SPECIAL_IDS,
    },
    "gpt2": {
        "model_type": "gpt2",
        "vocab_size": 512,
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 4,
        "n_positions": 256,
        **SPECIAL_IDS,
    },
    "t5": {
        "model_type": "t5",
        "vocab_size": 512,
        "d_model": 64,
        "d_ff": 128,
        "d_kv": 16,
        "num_layers": 2,
        "num_heads": 4,
        "decoder_start_token_id": 0,
        **SPECIAL_IDS,
    },
}


def tiny_config(kind: str) -> dict:
    """A fresh copy of a tiny HF config dict: llama, gpt2 or t5."""
    return dict(TINY_CONFIGS[kind])


def run_overrides(
    tmp_path: Path, kind: str = "llama", method: str = "full", steps: int = 10, **extra: object
) -> list[str]:
    """key=value overrides for a quick run of a tiny model on the number-spelling task.

    The caller passes them to `tunesmith.load_config(None, overrides)` or to the CLI.
    """
    import json

    values: dict[str, object] = {
        "model.config": json.dumps(tiny_config(kind)),
        "model.tokenizer": str(TOKENIZER),
        "data.train": str(NUMBERS / "train.jsonl"),
        "data.validation": str(NUMBERS / "validation.jsonl"),
        "data.input_format": json.dumps("Spell __input__ in words:"),
        "data.output_format": json.dumps(" __output__"),
        "method.name": method,
        "train.max_steps": steps,
        "train.batch_size": 8,
        "train.lr": 3e-3,
        "train.log_every": 1,
        "eval.eval_before_train": False,
        "tracking.plot": False,
        "output_dir": str(tmp_path / "run"),
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def chat_run_overrides(tmp_path: Path, steps: int = 2) -> list[str]:
    """Overrides for a quick chatml run on two-turn number-spelling conversations."""
    import json

    data = tmp_path / "chat.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for n, words in [("4", "four"), ("7", "seven"), ("9", "nine"), ("2", "two")] * 2:
            turns = [{"role": "user", "content": n}, {"role": "assistant", "content": words}]
            f.write(json.dumps({"messages": turns}) + "\n")
    return run_overrides(
        tmp_path,
        steps=steps,
        **{
            "data.train": data,
            "data.validation": "null",
            "data.format": "chat",
            "data.chat_template": "chatml",
            "data.cache": "false",
            "train.batch_size": 4,
        },
    )


@pytest.fixture
def tokenizer():
    """The embedded 512-piece byte-level BPE tokenizer."""
    from transformers import AutoTokenizer

    from tunesmith.models.load import ensure_pad_token

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    ensure_pad_token(tok)
    return tok


def build_tiny_model(kind: str, seed: int = 0) -> torch.nn.Module:
    """A tiny randomly initialised HF model, deterministic for a seed."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cfg = tiny_config(kind)
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    torch.manual_seed(seed)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_config(config)
    model.config.use_cache = False
    return model


@pytest.fixture
def tiny_llama():
    return build_tiny_model("llama")


@pytest.fixture
def tiny_gpt2():
    return build_tiny_model("gpt2")


@pytest.fixture
def tiny_t5():
    return build_tiny_model("t5")


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the repository (real data sets); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def numbers_cfg(*extra: str):
    """The tiny number-spelling data as a recipe without a model (data tests), uncached."""
    from tunesmith.config import load_config

    return load_config(
        None,
        [
            f"data.train={NUMBERS / 'train.jsonl'}",
            "data.input_format='Spell __input__ in words:'",
            "data.output_format=' __output__'",
            "data.cache=false",
            "train.batch_size=4",
            *extra,
        ],
    )


def token_spans(tokenizer, encoded, trained: bool = True) -> list[str]:
    """Decoded runs of an encoded example's tokens that are (or, trained=False, are not) trained."""
    from tunesmith.data.tokenize import IGNORE

    out, run = [], []
    for token, label in zip(encoded.input_ids, encoded.labels):
        if (label != IGNORE) == trained:
            run.append(token)
        elif run:
            out.append(tokenizer.decode(run))
            run = []
    if run:
        out.append(tokenizer.decode(run))
    return out


def write_pairs(path: Path, n: int = 120) -> Path:
    """{prompt, chosen, rejected} pairs from the number-spelling task: chosen is the right
    spelling, rejected another number's (for preference objectives)."""
    import json

    rows = [json.loads(line) for line in (NUMBERS / "train.jsonl").open()][:n]
    with path.open("w") as f:
        for i, row in enumerate(rows):
            other = rows[(i + 7) % len(rows)]["output"]
            f.write(
                json.dumps({"prompt": row["input"], "chosen": row["output"], "rejected": other})
            )
            f.write("\n")
    return path


def preference_overrides(tmp_path: Path, method: str = "lora", steps: int = 8, **extra) -> list:
    """run_overrides for a tiny DPO run on write_pairs data (validation held out)."""
    values = {
        "data.train": str(write_pairs(_made(tmp_path) / "pairs.jsonl")),
        "data.validation": "null",
        "data.val_set_size": 16,
        "data.format": "preference",
        "objective.name": "dpo",
        **extra,
    }
    return run_overrides(tmp_path, "llama", method, steps, **values)


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
