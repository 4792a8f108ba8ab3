"""`generate` and evaluation cut prompts exactly as training did: same template, same
max_input_tokens, same truncation side; and they say how many prompts they cut."""

from __future__ import annotations

import json

import pytest

from conftest import build_tiny_model, tiny_config
from tunesmith.config import load_config
from tunesmith.data.loader import build_dataloaders, load_examples
from tunesmith.data.sources import dataset_entries
from tunesmith.data.tokenize import IGNORE
from tunesmith.evaluate import task_metrics
from tunesmith.generate import (
    GenerationSettings,
    PromptStats,
    encode_prompts,
    entry_from_record,
    generate_file,
    prompt_limits,
    read_run_record,
)
from tunesmith.train.run_dir import write_run_record

LONG = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike"


def write_data(tmp_path):
    rows = [
        {"input": LONG, "output": "first"},
        {"input": "short", "output": "second"},
        {"input": f"{LONG} november oscar", "output": "third"},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config(path, side):
    return load_config(
        None,
        [
            f"data.train={path}",
            "data.cache=false",
            "train.batch_size=1",
            "data.input_format='Q: __input__ A:'",
            "data.max_input_tokens=12",
            f"data.truncation_side={side}",
        ],
    )


@pytest.mark.parametrize("side", ["left", "right"])
def test_generation_prompts_are_the_trained_prompts_cut_on_the_configured_side(
    tokenizer, tmp_path, side
):
    cfg = config(write_data(tmp_path), side)
    trained = build_dataloaders(cfg, tokenizer, 0, 1, False)
    stats = PromptStats()
    limits = prompt_limits(dataset_entries(cfg.data, "train")[0])
    prompts = encode_prompts(tokenizer, load_examples(cfg, "train"), limits, stats)
    # Training's prompt is the untrained head of each example: generation sees the same ids.
    assert prompts == [e.input_ids[: e.labels.count(IGNORE)] for e in trained.train.examples]
    assert (stats.prompts, stats.truncated) == (3, 2) == (3, trained.stats["train"].truncated)
    text = tokenizer.decode(prompts[0])
    assert len(prompts[0]) == 12 and text.startswith("Q:") and text.endswith("A:")
    if side == "left":  # the end of a long input survives (e.g. the question after a dialogue)
        assert "mike" in text and "alpha" not in text
        assert "oscar" in tokenizer.decode(prompts[2])
    else:
        assert "alpha" in text and "mike" not in text
    assert tokenizer.decode(prompts[1]) == "Q: short A:"


def test_generate_and_evaluate_report_how_many_prompts_were_cut(tokenizer, tmp_path):
    data = write_data(tmp_path)
    cfg = config(data, "left")
    model_dir = tmp_path / "model"
    build_tiny_model("llama").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    write_run_record(cfg, model_dir, encoder_decoder=False)  # the templates and limits a run saves
    settings = GenerationSettings(max_new_tokens=2, batch_size=2)
    lines: list[str] = []
    n = generate_file(model_dir, str(data), tmp_path / "out.jsonl", settings, log=lines.append)
    assert n == 3
    assert lines == ["generate: 2 of 3 prompts truncated to 12 tokens (input end kept)"]
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["output"] for r in rows] == ["first", "second", "third"]
    assert all("generated_text" in r for r in rows)

    entry = dataset_entries(cfg.data, "train")[0]
    scores = task_metrics(
        model_dir, load_examples(cfg, "train"), ["exact_match"], settings, prompt_limits(entry)
    )
    assert scores["n_examples"] == 3 and scores["n_truncated"] == 2


@pytest.mark.parametrize("side", ["left", "right"])
def test_cutoff_len_cuts_the_prompt_like_max_input_tokens(tokenizer, tmp_path, side):
    """When prompt + answer pass cutoff_len, the prompt loses input tokens on the configured side
    and keeps its template, so training never sees a prompt generation would not build."""
    path = write_data(tmp_path)
    cfg = load_config(
        None,
        [
            f"data.train={path}",
            "data.cache=false",
            "train.batch_size=1",
            "data.input_format='Q: __input__ A:'",
            "data.cutoff_len=16",
            f"data.truncation_side={side}",
        ],
    )
    data = build_dataloaders(cfg, tokenizer, 0, 1, False)
    first = data.train.examples[0]
    prompt = tokenizer.decode(first.input_ids[: first.labels.count(IGNORE)])
    assert len(first.input_ids) <= 16 and prompt.startswith("Q:") and prompt.endswith("A:")
    assert ("mike" in prompt) == (side == "left") and ("alpha" in prompt) == (side == "right")
    assert first.labels[-1] == tokenizer.eos_token_id and data.stats["train"].truncated == 2


def test_a_saved_run_cuts_generation_prompts_at_its_cutoff_len(tmp_path):
    """A prompt longer than cutoff_len was cut to it in training; the saved run cuts there too."""
    cfg = load_config(
        None,
        [f"data.train={write_data(tmp_path)}", "data.cutoff_len=10", "data.max_input_tokens=40"],
    )
    write_run_record(cfg, tmp_path, encoder_decoder=False)
    entry = entry_from_record(read_run_record(tmp_path), str(tmp_path / "d.jsonl"))
    assert prompt_limits(entry).max_input_tokens == 10


def test_a_prompt_longer_than_the_model_context_is_cut_not_crashing(tokenizer, tmp_path):
    """GPT-2 has a fixed position table: `generate` and evaluation cut a longer prompt to the
    context (leaving room for the new tokens), as training's length rule does, instead of crashing."""
    from transformers import AutoConfig, AutoModelForCausalLM

    data = write_data(tmp_path)
    cfg = load_config(None, [f"data.train={data}", "data.input_format='Q: __input__ A:'"])
    tiny = tiny_config("gpt2")
    model_type = tiny.pop("model_type")
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(model_type, **{**tiny, "n_positions": 16})
    )
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    write_run_record(cfg, model_dir, encoder_decoder=False)
    examples = load_examples(cfg, "train")
    lengths = [len(p) for p in encode_prompts(tokenizer, examples, prompt_limits(cfg.data))]
    assert sum(n > 16 - 2 for n in lengths) == 2  # two prompts do not fit with 2 new tokens

    settings = GenerationSettings(max_new_tokens=2, batch_size=2)
    lines: list[str] = []
    generate_file(model_dir, str(data), tmp_path / "out.jsonl", settings, log=lines.append)
    assert lines == ["generate: 2 of 3 prompts truncated to 14 tokens (input start kept)"]
    scores = task_metrics(model_dir, examples, ["exact_match"], settings, prompt_limits(cfg.data))
    assert scores["n_examples"] == 3 and scores["n_truncated"] == 2


def test_a_saved_run_cuts_generation_prompts_at_its_max_seq_len(tmp_path):
    """max_seq_len caps training examples, so the saved run's prompts are cut there too."""
    cfg = load_config(None, [f"data.train={write_data(tmp_path)}", "data.max_seq_len=9"])
    write_run_record(cfg, tmp_path, encoder_decoder=False)
    record = read_run_record(tmp_path)
    entry = entry_from_record(record, str(tmp_path / "d.jsonl"))
    assert prompt_limits(entry, record["data"]["max_seq_len"]).max_input_tokens == 9


def test_batched_generation_returns_each_answer_for_its_own_prompt(tokenizer, tmp_path):
    """Prompts are batched by length (less padding); the answers still come back in input order,
    each the one that prompt gets when generated alone."""
    from tunesmith.generate import generate_texts

    cfg = config(write_data(tmp_path), "left")
    examples = load_examples(cfg, "train")
    examples = examples + examples[::-1]  # lengths long, short, long, long, short, long
    model = build_tiny_model("llama").eval()
    limits = prompt_limits(dataset_entries(cfg.data, "train")[0])

    def answers(batch_size: int) -> list[str]:
        settings = GenerationSettings(max_new_tokens=4, batch_size=batch_size)
        return generate_texts(model, tokenizer, examples, False, settings, limits, progress=False)

    alone, batched = answers(1), answers(4)
    assert batched == alone and alone[:3] == alone[3:][::-1]
    assert len(set(alone[:3])) > 1  # the prompts get different answers, so order is tested
