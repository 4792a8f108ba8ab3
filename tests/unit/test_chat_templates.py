"""Named chat templates: a base tokenizer (no template of its own) trains chat data with each, and
only the assistant turns carry a loss."""

from __future__ import annotations

import copy

import pytest

from conftest import TOKENIZER, chat_run_overrides, token_spans
from tunesmith.data.chat_templates import CHAT_TEMPLATES, chat_template, use_chat_template
from tunesmith.data.formats import Example
from tunesmith.data.tokenize import Limits, encode_chat
from tunesmith.errors import UserError

MESSAGES = [
    {"role": "system", "content": "Answer in words."},
    {"role": "user", "content": "What is 12?"},
    {"role": "assistant", "content": "twelve"},
    {"role": "user", "content": "And 30?"},
    {"role": "assistant", "content": "thirty"},
]


@pytest.mark.parametrize("name", list(CHAT_TEMPLATES))
def test_only_assistant_turns_are_trained(tokenizer, name):
    tok = copy.deepcopy(tokenizer)
    assert not getattr(tok, "chat_template", None)  # a base tokenizer
    use_chat_template(tok, name)
    example = Example("", "", "", "", "test", messages=MESSAGES)
    encoded = encode_chat(tok, example, Limits(), encoder_decoder=False)
    trained = token_spans(tok, encoded, trained=True)
    context = "".join(token_spans(tok, encoded, trained=False))
    # One trained span per assistant turn, each opening with that turn's words (its header is
    # context), then at most the template's end-of-turn marker and EOS.
    assert len(trained) == 2
    for span, answer in zip(trained, ["twelve", "thirty"]):
        assert span.strip().startswith(answer)
        assert "?" not in span and "Answer in words" not in span
    for text in ("What is 12?", "And 30?"):
        assert text in context
    assert "twelve" not in context and "thirty" not in context
    assert encoded.labels[-1] == tok.eos_token_id


def test_the_tokenizers_own_template_wins(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = CHAT_TEMPLATES["phi"]
    use_chat_template(tok, "llama3")
    assert tok.chat_template == CHAT_TEMPLATES["phi"]


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UserError, match="chatml"):
        chat_template("chatlm")


def test_base_model_trains_chat_data_and_saves_the_template(tmp_path):
    """format: chat on a tokenizer without a template: the run trains and final/ keeps it."""
    from transformers import AutoTokenizer

    from tunesmith.cli import main

    overrides = chat_run_overrides(tmp_path)
    assert main(["train", *overrides]) == 0
    saved = AutoTokenizer.from_pretrained(tmp_path / "run" / "final")
    assert saved.chat_template == CHAT_TEMPLATES["chatml"]
    assert not getattr(AutoTokenizer.from_pretrained(TOKENIZER), "chat_template", None)
