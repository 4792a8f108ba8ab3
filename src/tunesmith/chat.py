"""`tunesmith chat RUN`: talk to a trained model or adapter in the terminal, tokens streamed.

    tunesmith chat runs/a --max-new-tokens 128 --do-sample --temperature 0.7
    tunesmith chat runs/sql --adapter summary=runs/summary     # then /adapter summary

Prompts are built as training built them (`conversation_example`): a run trained on chat data
keeps the whole conversation and renders it with the tokenizer's chat template; a run trained on
an input template (input_output, alpaca) answers each message on its own inside that template,
since that is the only shape it learned. Commands: /reset, /system TEXT, /adapter [NAME], /help,
/quit (or end of input).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import TextIO

import torch

from tunesmith.data.formats import Example, format_record
from tunesmith.errors import UserError
from tunesmith.generate import (
    GenerationSettings,
    LoadedForInference,
    encode_prompts,
    entry_from_record,
    generation_kwargs,
    prompt_limits,
)

HELP = (
    "commands: /reset (forget the conversation), /system TEXT (set or, without TEXT, clear the"
    " system message), /adapter [NAME] (list or switch adapters), /help, /quit"
)
USER_PROMPT, MODEL_PROMPT = "you> ", "model> "


def uses_chat_template(loaded: LoadedForInference) -> bool:
    """Whether the conversation goes through a chat template (else the run's input template).

    A run trained on chat data (or a plain model without a run record, or a completion run)
    with a tokenizer that has a chat template uses it; a run trained on an input template keeps
    it. A named template (`data.chat_template`) is already on the saved tokenizer.
    """
    data = loaded.record.get("data") or {}
    trained_on = data.get("format", "completion" if not loaded.record else "input_output")
    has_template = bool(getattr(loaded.tokenizer, "chat_template", None))
    return has_template and trained_on in ("chat", "completion")


def conversation_example(loaded: LoadedForInference, messages: list[dict[str, str]]) -> Example:
    """The example whose prompt asks the model for the next assistant turn of `messages`.

    The one place that picks the template: chat template with the whole history, or the run's
    input template around the last user message (formats.py does the filling either way).
    """
    entry = entry_from_record(loaded.record, "<chat>")
    if uses_chat_template(loaded):
        entry.format = "chat"
        return format_record({"messages": messages}, entry)
    text = messages[-1]["content"]
    field = {"alpaca": "instruction"}.get(entry.format, "input")
    if entry.format not in ("input_output", "alpaca"):
        entry.format, entry.input_format = "input_output", "__input__"
    return format_record({entry.fields.get(field, field): text}, entry)


class ChatSession:
    """A conversation with one loaded model: history, system message, active adapter."""

    def __init__(
        self, loaded: LoadedForInference, settings: GenerationSettings, system: str | None = None
    ):
        if loaded.encoder_decoder:
            raise UserError("chat is for decoder-only models", "use generate for seq2seq runs")
        self.loaded, self.settings, self.system = loaded, settings, system
        self.history: list[dict[str, str]] = []
        self.limits = prompt_limits(entry_from_record(loaded.record, "<chat>"))

    @property
    def adapters(self) -> list[str]:
        """Adapter names on the base ([] for a full model)."""
        return list(getattr(self.loaded.model, "peft_config", {}) or {})

    @property
    def active_adapter(self) -> str | None:
        """The adapter that answers (None for a full model)."""
        return getattr(self.loaded.model, "active_adapter", None) if self.adapters else None

    def use_adapter(self, name: str) -> None:
        """Switch the answering adapter; the conversation is kept."""
        if name not in self.adapters:
            known = ", ".join(self.adapters) or "none (a full model)"
            raise UserError(f"/adapter {name}: no adapter of that name", f"loaded: {known}")
        self.loaded.model.set_adapter(name)

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.history = []

    def messages_for(self, text: str) -> list[dict[str, str]]:
        """The conversation so far plus the new user message, system message first."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *self.history, {"role": "user", "content": text}]

    def reply(self, text: str) -> Iterator[str]:
        """Stream the model's answer to `text` as pieces of text; the answer joins the history."""
        from transformers import TextIteratorStreamer

        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        example = conversation_example(self.loaded, self.messages_for(text))
        ids = encode_prompts(tokenizer, [example], self.limits)[0]
        device = next(model.parameters()).device
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = {
            "input_ids": torch.tensor([ids], device=device),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=device),
            "streamer": streamer,
            **generation_kwargs(self.settings, tokenizer),
        }
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.no_grad():
                    model.generate(**kwargs)
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            yield piece
        worker.join()
        if failure:
            raise failure[0]
        self.history += [
            {"role": "user", "content": text},
            {"role": "assistant", "content": "".join(pieces).strip()},
        ]


def chat_loop(
    loaded: LoadedForInference,
    settings: GenerationSettings,
    system: str | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Read messages and commands until /quit or end of input; returns the exit code (0)."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    session = ChatSession(loaded, settings, system)
    mode = (
        "chat template" if uses_chat_template(loaded) else "input template, one message at a time"
    )
    adapter = f", adapter {session.active_adapter}" if session.adapters else ""
    print(f"tunesmith chat ({mode}{adapter}); /help for commands", file=stdout, flush=True)
    while True:
        print(USER_PROMPT, end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:  # end of input
            print(file=stdout)
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if run_command(session, line, stdout):
                return 0
            continue
        print(MODEL_PROMPT, end="", file=stdout, flush=True)
        for piece in session.reply(line):
            print(piece, end="", file=stdout, flush=True)
        print(file=stdout, flush=True)


def run_command(session: ChatSession, line: str, stdout: TextIO) -> bool:
    """Carry out one /command; True when the chat should end. Mistakes print and go on."""
    command, _, arg = line.partition(" ")
    arg = arg.strip()
    if command in ("/quit", "/exit"):
        return True
    if command == "/reset":
        session.reset()
        print("(conversation cleared)", file=stdout, flush=True)
    elif command == "/system":
        session.system = arg or None
        print(f"(system message {'set' if arg else 'cleared'})", file=stdout, flush=True)
    elif command == "/adapter":
        try:
            if arg:
                session.use_adapter(arg)
            known = ", ".join(session.adapters) or "none (a full model)"
            print(f"(adapter {session.active_adapter}; loaded: {known})", file=stdout, flush=True)
        except UserError as exc:
            print(f"error: {exc.one_line()}", file=stdout, flush=True)
    elif command == "/help":
        print(HELP, file=stdout, flush=True)
    else:
        print(f"unknown command {command}; {HELP}", file=stdout, flush=True)
    return False
