"""Record formats: a raw record -> the prompt and answer text of one example.

Each format is a small function registered by name (`data.format`). Templates follow seed 003:
`input_format` contains `__input__`, `output_format` contains `__output__`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunesmith.data.sources import DatasetEntry
from tunesmith.errors import UserError

INPUT, OUTPUT = "__input__", "__output__"


@dataclass
class Example:
    """A formatted example. `input_text` is the raw input, kept so truncation cuts it and not the
    template around it; `prompt` = input_format with input_text substituted."""

    prompt: str
    answer: str | None
    input_text: str
    input_format: str
    source: str


Format = Callable[[dict[str, Any], DatasetEntry], Example]
FORMATS: dict[str, Format] = {}


def register(name: str) -> Callable[[Format], Format]:
    """Register a format function under `name`."""

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
        f"{record.get('_source', entry.path)}: missing field {key!r} (the record has: {have})",
        f"map it with data.fields: {{{name}: <field>}}",
    )


def fill(template: str, placeholder: str, value: str, what: str) -> str:
    """Substitute a placeholder; a template without it is a config error."""
    if placeholder not in template:
        raise UserError(f"data.{what}={template!r} has no {placeholder}", f"add {placeholder}")
    return template.replace(placeholder, value)


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
        source=record.get("_source", entry.path),
    )


ALPACA_TEMPLATES = {
    "with_input": (
        "Below is an instruction that describes a task, paired with an input that provides further"
        " context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n__input__\n\n### Response:\n"
    ),
    "no_input": (
        "Below is an instruction that describes a task. Write a response that appropriately"
        " completes the request.\n\n### Instruction:\n__input__\n\n### Response:\n"
    ),
}


@register("alpaca")
def alpaca(record: dict[str, Any], entry: DatasetEntry) -> Example:
    """Stanford Alpaca records: instruction, optional input, output."""
    instruction = str(field_value(record, "instruction", entry))
    context = field_value(record, "input", entry, required=False)
    output = field_value(record, "output", entry, required=False)
    if context:
        template = ALPACA_TEMPLATES["with_input"].replace("{instruction}", instruction)
        text = str(context)
    else:
        template, text = ALPACA_TEMPLATES["no_input"], instruction
    return Example(
        prompt=template.replace(INPUT, text),
        answer=None if output is None else str(output),
        input_text=text,
        input_format=template,
        source=record.get("_source", entry.path),
    )


def format_record(record: dict[str, Any], entry: DatasetEntry) -> Example:
    """Apply the entry's format to one record."""
    fn = FORMATS.get(entry.format)
    if fn is None:
        raise UserError(
            f"data.format={entry.format!r} is not a known format",
            f"choose one of {', '.join(sorted(FORMATS))}",
        )
    return fn(record, entry)
