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
    rejected: str | None = None  # preference pairs: `answer` is the chosen response
    rejected_messages: list[dict[str, str]] | None = None  # chat pairs: `messages` ends in chosen
    desirable: bool | None = None  # KTO: whether `answer` is a desirable completion


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
    if entry.format in ("input_output", "preference", "kto"):
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


def _response(record: dict[str, Any], name: str, entry: DatasetEntry) -> Any:
    """A chosen/rejected/completion value: text, or the assistant turn(s) of a chat record."""
    value = field_value(record, name, entry)
    source = record.get("_source", entry.label)
    if isinstance(value, list):
        turns = [t for t in value if isinstance(t, dict) and t.get("role") == "assistant"]
        if not turns:
            raise UserError(
                f"{source}: {name!r} is a list without an assistant turn",
                "give the response as text or as [{role: assistant, content: ...}]",
            )
        value = [{"role": "assistant", "content": str(t.get("content", ""))} for t in turns]
        text = value[-1]["content"]
    else:
        text = str(value)
    if not text.strip():
        raise UserError(f"{source}: empty {name!r} response", "every response needs text")
    return value


def _prompt_of(
    record: dict[str, Any], entry: DatasetEntry, chat: bool
) -> tuple[str, str, list[dict[str, str]] | None]:
    """(prompt text filled into input_format, raw input, chat messages or None)."""
    value = field_value(record, "prompt", entry)
    if not chat:
        if isinstance(value, list):
            value = "\n".join(str(t.get("content", "")) for t in value if isinstance(t, dict))
        text = str(value)
        return fill(entry.input_format, INPUT, text, "input_format"), text, None
    messages = (
        [{"role": str(t["role"]), "content": str(t["content"])} for t in value]
        if isinstance(value, list)
        else [{"role": "user", "content": str(value)}]
    )
    if entry.system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": entry.system})
    return "", "", messages


@register("preference")
def preference(record: dict[str, Any], entry: DatasetEntry) -> Example:
    """`{prompt, chosen, rejected}` pairs (DPO, ORPO, SimPO, reward models).

    The responses are text (filled into output_format) or, as in TRL's conversational format,
    lists of assistant turns; then the prompt is a message list (or text, taken as one user turn)
    and the tokenizer's chat template renders both conversations, only the responses scored.
    """
    source = record.get("_source", entry.label)
    chosen, rejected = _response(record, "chosen", entry), _response(record, "rejected", entry)
    chat = isinstance(chosen, list) or isinstance(rejected, list)
    if chat and not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise UserError(
            f"{source}: 'chosen' and 'rejected' must both be text or both be chat turns",
            "write both in the same form",
        )
    if chosen == rejected:
        raise UserError(
            f"{source}: 'chosen' equals 'rejected'", "a pair needs two different responses"
        )
    prompt, text, messages = _prompt_of(record, entry, chat)
    if chat:
        return Example(
            prompt="",
            answer=chosen[-1]["content"],
            input_text="",
            input_format=INPUT,
            source=source,
            messages=[*messages, *chosen],
            rejected=rejected[-1]["content"],
            rejected_messages=[*messages, *rejected],
        )
    return Example(
        prompt=prompt,
        answer=fill(entry.output_format, OUTPUT, chosen, "output_format"),
        input_text=text,
        input_format=entry.input_format,
        source=source,
        rejected=fill(entry.output_format, OUTPUT, rejected, "output_format"),
        reference=record.get("references"),
    )


@register("kto")
def kto(record: dict[str, Any], entry: DatasetEntry) -> Example:
    """KTO's unpaired `{prompt, completion, label}` records (label true: desirable)."""
    source = record.get("_source", entry.label)
    completion = _response(record, "completion", entry)
    label = field_value(record, "label", entry)
    if isinstance(label, str) and label.lower() in ("true", "false", "1", "0"):
        label = label.lower() in ("true", "1")
    if not isinstance(label, (bool, int)) or label not in (0, 1):
        raise UserError(f"{source}: 'label' must be true or false, got {label!r}")
    chat = isinstance(completion, list)
    prompt, text, messages = _prompt_of(record, entry, chat)
    if chat:
        return Example(
            prompt="",
            answer=completion[-1]["content"],
            input_text="",
            input_format=INPUT,
            source=source,
            messages=[*messages, *completion],
            desirable=bool(label),
        )
    return Example(
        prompt=prompt,
        answer=fill(entry.output_format, OUTPUT, completion, "output_format"),
        input_text=text,
        input_format=entry.input_format,
        source=source,
        desirable=bool(label),
    )


def format_record(record: dict[str, Any], entry: DatasetEntry) -> Example:
    """Apply the entry's format to one record."""
    fn = FORMATS.get(entry.format)
    if fn is None:
        check_entry(entry)
    return fn(record, entry)
