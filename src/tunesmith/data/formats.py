"""Record formats: a raw record -> the prompt and answer (or chat messages) of one example.

Each format is a small function registered by name (`data.format`); plugins add more with
`@register("name")`. Templates follow seed 003: `input_format` contains `__input__`,
`output_format` contains `__output__`. Field mapping (`data.fields: {input: dialogue}`) lets any
record shape feed any format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunesmith.data.sources import DatasetEntry
from tunesmith.data.templates import alpaca_template
from tunesmith.errors import UserError

INPUT, OUTPUT = "__input__", "__output__"


@dataclass
class Example:
    """A formatted example.

    `input_text` is the raw input, kept so truncation cuts it and not the template around it;
    `prompt` = input_format with input_text substituted. Chat examples also carry `messages`
    (rendered by the tokenizer's chat template; loss on every assistant turn).
    """

    prompt: str
    answer: str | None
    input_text: str
    input_format: str
    source: str
    messages: list[dict[str, str]] | None = None
    reference: Any = None  # all references when a record has several (JFLEG)


Format = Callable[[dict[str, Any], DatasetEntry], Example]
FORMATS: dict[str, Format] = {}


def register(name: str) -> Callable[[Format], Format]:
    """Register a format function `(record, entry) -> Example` under `name`."""

    def add(fn: Format) -> Format:
        FORMATS[name] = fn
        return fn

    return add


def field_value(
    record: dict[str, Any], name: str, entry: DatasetEntry, required: bool = True
) -> Any:
    """`record[name]` after the entry's field mapping; a missing field is a one-line error."""
    key = entry.fields.get(name, name)
    if key in record and record[key] is not None:
        return record[key]
    if not required:
        return None
    have = ", ".join(k for k in record if not k.startswith("_")) or "none"
    raise UserError(
        f"{record.get('_source', entry.label)}: missing field {key!r} (the record has: {have})",
        f"map it with data.fields: {{{name}: <field>}}",
    )


def fill(template: str, placeholder: str, value: str, what: str) -> str:
    """Substitute a placeholder; a template without it is a config error."""
    check_template(template, placeholder, what)
    return template.replace(placeholder, value)


def check_template(template: str, placeholder: str, what: str) -> None:
    """Raise a one-line UserError when `template` lacks `placeholder`."""
    if placeholder not in template:
        raise UserError(
            f"data.{what}={template!r} has no {placeholder}", f"add {placeholder} to the template"
        )


def check_entry(entry: DatasetEntry) -> None:
    """Config checks that need no record: known format, templates with their placeholders."""
    if entry.format not in FORMATS:
        raise UserError(
            f"data.format={entry.format!r} is not a known format",
            f"choose one of {', '.join(sorted(FORMATS))} (or register one in a plugin)",
        )
    if entry.format == "input_output":
        check_template(entry.input_format, INPUT, "input_format")
        check_template(entry.output_format, OUTPUT, "output_format")
    if entry.format == "alpaca":
        alpaca_template(entry.template, True)  # an unknown template name is refused here


@register("input_output")
def input_output(record: dict[str, Any], entry: DatasetEntry) -> Example:
    """`{"input": ..., "output": ...}` records (seed 003); output may be absent at test time."""
    text = str(field_value(record, "input", entry))
    output = field_value(record, "output", entry, required=False)
    return Example(
        prompt=fill(entry.input_format, INPUT, text, "input_format"),
        answer=None
        if output is None
        else fill(entry.output_format, OUTPUT, str(output), "output_format"),
        input_text=text,
        input_format=entry.input_format,
        source=record.get("_source", entry.label),
        # Every reference in the answer's template, so each compares like the answer does.
        reference=[
            fill(entry.output_format, OUTPUT, str(ref), "output_format")
            for ref in record.get("references") or ()
        ]
        or None,
    )


@register("alpaca")
def alpaca(record: dict[str, Any], entry: DatasetEntry) -> Example:
    """Alpaca records: instruction, optional input, output; prompt from `data.template`."""
    instruction = str(field_value(record, "instruction", entry))
    context = field_value(record, "input", entry, required=False)
    output = field_value(record, "output", entry, required=False)
    if context:
        template = alpaca_template(entry.template, True).replace("{instruction}", instruction)
        text = str(context)
    else:
        template, text = alpaca_template(entry.template, False), instruction
    return Example(
        prompt=template.replace(INPUT, text),
        answer=None if output is None else str(output),
        input_text=text,
        input_format=template,
        source=record.get("_source", entry.label),
    )


@register("completion")
def completion(record: dict[str, Any], entry: DatasetEntry) -> Example:
    """Raw text, every token trained (continued pre-training): the `text` field."""
    text = str(field_value(record, "text", entry))
    return Example("", text, "", INPUT, record.get("_source", entry.label))


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
SHAREGPT_ROLES |= {"system": "system", "chatgpt": "assistant", "bing": "assistant"}


@register("chat")
def chat(record: dict[str, Any], entry: DatasetEntry) -> Example:
    """OpenAI `messages` ({role, content}) or ShareGPT `conversations` ({from, value}).

    The prompt is everything before the last assistant turn (for generation); training renders all
    turns with the tokenizer's chat template and trains on every assistant turn.
    """
    source = record.get("_source", entry.label)
    key = entry.fields.get("messages")
    if key is None:
        key = "messages" if "messages" in record else "conversations"
    turns = record.get(key)
    if not isinstance(turns, list):
        have = ", ".join(k for k in record if not k.startswith("_")) or "none"
        raise UserError(
            f"{source}: missing field 'messages' or 'conversations' (the record has: {have})",
            "map it with data.fields: {messages: <field>}",
        )
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise UserError(f"{source}: turn {i} is not an object")
        role = turn.get("role", SHAREGPT_ROLES.get(str(turn.get("from", "")).lower()))
        content = turn.get("content", turn.get("value"))
        if role is None or content is None:
            raise UserError(
                f"{source}: turn {i} needs role/content (OpenAI) or from/value (ShareGPT)",
                f"the turn has: {', '.join(turn) or 'none'}",
            )
        messages.append({"role": role, "content": str(content)})
    if entry.system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": entry.system})
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None and entry.split != "test":
        raise UserError(f"{source}: chat record without an assistant turn", "nothing to train on")
    return Example(
        prompt="",
        answer=None if last is None else messages[last]["content"],
        input_text="",
        input_format=INPUT,
        source=source,
        messages=messages,
    )


def format_record(record: dict[str, Any], entry: DatasetEntry) -> Example:
    """Apply the entry's format to one record."""
    fn = FORMATS.get(entry.format)
    if fn is None:
        check_entry(entry)
    return fn(record, entry)
