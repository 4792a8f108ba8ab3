"""The exact loss mask: prompt tokens ignored, answer and EOS trained, truncation inside the input."""

from __future__ import annotations

from tunesmith.data.formats import Example, input_output
from tunesmith.data.sources import DatasetEntry
from tunesmith.data.tokenize import IGNORE, Limits, encode


def example(tokenizer_input="123", output="one two three", fmt="Spell __input__ in words:"):
    entry = DatasetEntry(path="x", input_format=fmt, output_format=" __output__")
    return input_output({"input": tokenizer_input, "output": output}, entry)


def test_labels_cover_answer_and_eos_only(tokenizer):
    ex = example()
    enc = encode(tokenizer, ex, Limits(), encoder_decoder=False)
    prompt_ids = tokenizer(ex.prompt)["input_ids"]
    answer_ids = tokenizer(ex.answer, add_special_tokens=False)["input_ids"]
    assert enc.input_ids == prompt_ids + answer_ids + [tokenizer.eos_token_id]
    assert enc.labels == [IGNORE] * len(prompt_ids) + answer_ids + [tokenizer.eos_token_id]


def test_train_on_inputs_trains_prompt_too(tokenizer):
    enc = encode(tokenizer, example(), Limits(train_on_inputs=True), encoder_decoder=False)
    assert enc.labels == enc.input_ids


def test_eos_is_trained_even_when_pad_is_eos(tokenizer):
    tokenizer.pad_token = tokenizer.eos_token
    enc = encode(tokenizer, example(), Limits(), encoder_decoder=False)
    assert enc.labels[-1] == tokenizer.eos_token_id


def test_prompt_truncation_keeps_the_template_end(tokenizer):
    ex = example(tokenizer_input="9" * 200, fmt="Spell __input__ in words:")
    enc = encode(tokenizer, ex, Limits(max_input_tokens=12), encoder_decoder=False)
    prompt = [t for t, label in zip(enc.input_ids, enc.labels) if label == IGNORE]
    assert len(prompt) == 12 and enc.truncated
    assert tokenizer.decode(prompt).endswith(" in words:")


def test_answer_truncation_keeps_eos(tokenizer):
    ex = example(output="one two three four five six seven eight nine ten")
    enc = encode(tokenizer, ex, Limits(max_output_tokens=4), encoder_decoder=False)
    trained = [t for t in enc.labels if t != IGNORE]
    assert len(trained) == 4 and trained[-1] == tokenizer.eos_token_id


def test_overlong_drop(tokenizer):
    ex = example(tokenizer_input="9" * 200)
    assert encode(tokenizer, ex, Limits(max_input_tokens=8, overlong="drop"), False) is None


def test_encoder_decoder_separates_input_and_labels(tokenizer):
    ex = example()
    enc = encode(tokenizer, ex, Limits(), encoder_decoder=True)
    assert enc.input_ids == tokenizer(ex.prompt)["input_ids"]
    assert enc.labels[-1] == tokenizer.eos_token_id and IGNORE not in enc.labels


def test_example_keeps_source_for_errors():
    ex = input_output({"input": "1", "output": "one", "_source": "f.jsonl:3"}, DatasetEntry("f"))
    assert isinstance(ex, Example) and ex.source == "f.jsonl:3"
