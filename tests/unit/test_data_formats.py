"""Formats: alpaca templates, chat with loss on assistant turns only, completion, plugins, EOS."""

from __future__ import annotations

import json

from conftest import token_spans
from tunesmith.config import load_config
from tunesmith.data.formats import FORMATS, alpaca, chat, completion
from tunesmith.data.loader import build_dataloaders
from tunesmith.data.sources import DatasetEntry
from tunesmith.data.tokenize import IGNORE, Limits, encode

# A minimal chat template for the test tokenizer (which has none): each turn ends with </s>.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def test_alpaca_named_templates_with_and_without_input():
    stanford = DatasetEntry(path="x", format="alpaca")
    plain = DatasetEntry(path="x", format="alpaca", template="plain")
    with_input = {"instruction": "Add.", "input": "1 2", "output": "3"}
    ex = alpaca(with_input, stanford)
    assert ex.prompt.startswith("Below is an instruction that describes a task, paired with")
    assert "### Instruction:\nAdd.\n\n### Input:\n1 2\n\n### Response:\n" in ex.prompt
    ex = alpaca({"instruction": "Say hi.", "output": "hi"}, plain)
    assert ex.prompt == "### Instruction:\nSay hi.\n\n### Response:\n" and ex.answer == "hi"


def test_field_mapping_feeds_any_record_shape():
    dolly = DatasetEntry(
        path="x", format="alpaca", fields={"input": "context", "output": "response"}
    )
    ex = alpaca({"instruction": "Sum up.", "context": "Long text", "response": "Short"}, dolly)
    assert "### Input:\nLong text" in ex.prompt and ex.answer == "Short"


def test_chat_trains_assistant_turns_only(tokenizer):
    tokenizer.chat_template = CHAT_TEMPLATE
    openai = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello there"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "See you"},
        ]
    }
    sharegpt = {
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello there"},
            {"from": "human", "value": "Bye"},
            {"from": "gpt", "value": "See you"},
        ]
    }
    entry = DatasetEntry(path="x", format="chat")
    encs = [encode(tokenizer, chat(r, entry), Limits(), False) for r in (openai, sharegpt)]
    assert encs[0] == encs[1]
    assert token_spans(tokenizer, encs[0]) == ["Hello there</s>", "See you</s>"]
    assert tokenizer.decode(encs[0].input_ids) == tokenizer.apply_chat_template(
        openai["messages"], tokenize=False
    )
    assert encs[0].labels[-1] == tokenizer.eos_token_id


def test_completion_trains_every_token(tokenizer):
    ex = completion({"quote": "One is less than two."}, DatasetEntry(fields={"text": "quote"}))
    enc = encode(tokenizer, ex, Limits(), False)
    assert enc.labels == enc.input_ids and enc.labels[-1] == tokenizer.eos_token_id


def test_last_label_of_every_example_is_eos_when_pad_is_eos(tokenizer, tmp_path):
    """Padded and packed batches: the last trained label of each example is EOS."""
    tokenizer.pad_token = tokenizer.eos_token
    rows = [{"input": str(n), "output": "x" * (n % 7 + 1)} for n in range(24)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for packing in (False, True):
        cfg = load_config(
            None,
            [
                f"data.train={path}",
                f"data.packing={packing}",
                "data.max_seq_len=40",
                "data.cache=false",
                "train.batch_size=4",
            ],
        )
        data = build_dataloaders(cfg, tokenizer, 0, 1, False)
        for _ in range(data.train.micro_batches_per_epoch):
            batch = data.train.next_batch()
            labels = batch["labels"]
            if packing:
                starts = batch["position_ids"] == 0
                for row in range(labels.shape[0]):
                    ends = [i - 1 for i in range(1, labels.shape[1]) if starts[row, i]]
                    ends.append(labels.shape[1] - 1)
                    trained_ends = [e for e in ends if labels[row, e] != IGNORE]
                    assert trained_ends, "every row holds at least one trained example"
                    assert all(labels[row, e] == tokenizer.eos_token_id for e in trained_ends)
            else:
                for row in labels:
                    last = max(i for i, t in enumerate(row.tolist()) if t != IGNORE)
                    assert row[last] == tokenizer.eos_token_id


def test_plugin_registers_format_and_metric(tokenizer, tmp_path):
    from tunesmith.metrics import METRICS

    plugin = tmp_path / "my_task.py"
    plugin.write_text(
        "from tunesmith.data.formats import Example, register\n"
        "from tunesmith.metrics import METRICS\n"
        "@register('qa_test')\n"
        "def qa(record, entry):\n"
        "    prompt = 'Q: ' + record['q'] + '\\nA:'\n"
        "    return Example(prompt, ' ' + record['a'], record['q'], 'Q: __input__\\nA:',\n"
        "                   record['_source'])\n"
        "METRICS['first_word_test'] = lambda p, r: float(p.split()[:1] == r.split()[:1])\n",
        encoding="utf-8",
    )
    data = tmp_path / "qa.jsonl"
    data.write_text('{"q": "2+2", "a": "4"}\n{"q": "1+1", "a": "2"}\n', encoding="utf-8")
    cfg = load_config(
        None,
        [
            f"plugins=[{plugin}]",
            f"data.train={data}",
            "data.format=qa_test",
            "data.cache=false",
            "train.batch_size=2",
        ],
    )
    try:
        bundle = build_dataloaders(cfg, tokenizer, 0, 1, False)
        assert "first_word_test" in METRICS
        texts = sorted(tokenizer.decode(e.input_ids) for e in bundle.train.units)
        assert texts == ["Q: 1+1\nA: 2</s>", "Q: 2+2\nA: 4</s>"]
    finally:
        FORMATS.pop("qa_test", None)
        METRICS.pop("first_word_test", None)


def test_length_limits_truncation_side_and_drop_are_counted(tokenizer, tmp_path):
    rows = [
        {"input": "a b c d e f g h i j k l m n o p", "output": "x"},
        {"input": "a", "output": "y"},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def build(*extra):
        cfg = load_config(
            None, [f"data.train={path}", "data.cache=false", "train.batch_size=1", *extra]
        )
        return build_dataloaders(cfg, tokenizer, 0, 1, False)

    left = build("data.max_input_tokens=4", "data.truncation_side=left")
    right = build("data.max_input_tokens=4")
    assert left.stats["train"].truncated == right.stats["train"].truncated == 1
    cut_left = tokenizer.decode(left.train.units[0].input_ids[:4])
    cut_right = tokenizer.decode(right.train.units[0].input_ids[:4])
    assert cut_left.endswith("o p") and cut_right.startswith("a b")
    dropped = build("data.max_input_tokens=4", "data.overlong=drop")
    stats = dropped.stats["train"]
    assert (stats.examples, stats.truncated, stats.dropped) == (1, 1, 1)
