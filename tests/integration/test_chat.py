"""`tunesmith chat` driven in a real terminal (a pty): streamed answers equal `generate`'s for the
same prompt and adapter, and the commands work; plus the chat-template path keeping history."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TOKENIZER, run_overrides
from tunesmith import load_config
from tunesmith.chat import MODEL_PROMPT, USER_PROMPT, ChatSession, conversation_example
from tunesmith.generate import (
    GenerationSettings,
    LoadedForInference,
    encode_prompts,
    generate_texts,
    load_for_inference,
)
from tunesmith.train.loop import train

SETTINGS = GenerationSettings(max_new_tokens=8)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def adapter_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two LoRA runs on the same config-built base (same seed), trained differently."""
    base = tmp_path_factory.mktemp("chat")
    runs = []
    for name, lr, r in (("a", 3e-2, 8), ("b", 1e-1, 4)):
        overrides = run_overrides(
            base / name,
            "llama",
            "lora",
            4,
            **{"data.validation": "null", "train.lr": lr, "method.r": r},
        )
        train(load_config(None, overrides))
        runs.append(base / name / "run")
    return runs[0], runs[1]


def greedy_answer(run: Path, text: str) -> str:
    """What `generate` answers to one chat message, built the way chat builds it."""
    loaded = load_for_inference(run)
    example = conversation_example(loaded, [{"role": "user", "content": text}])
    return generate_texts(loaded.model, loaded.tokenizer, [example], False, SETTINGS, None, False)[
        0
    ]


class Terminal:
    """A child process on a pseudo-terminal: type lines, read the screen's text."""

    def __init__(self, argv: list[str], log: Path):
        master, slave = pty.openpty()
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TERM": "xterm"}
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=self.log, env=env, close_fds=True
        )
        os.close(slave)
        self.master, self.screen, self.cursor = master, "", 0

    def type(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def read_until(self, text: str, timeout: float = 120) -> str:
        """Everything printed since the last read, up to and including `text`."""
        deadline = time.monotonic() + timeout
        while text not in self.screen[self.cursor :]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{text!r} never appeared; screen: {self.screen[-800:]!r}")
            if select.select([self.master], [], [], min(remaining, 1.0))[0] and not self._read():
                raise AssertionError(f"exited before {text!r}; screen: {self.screen[-800:]!r}")
        end = self.screen.index(text, self.cursor) + len(text)
        out, self.cursor = self.screen[self.cursor : end], end
        return out

    def _read(self) -> bool:
        try:
            chunk = os.read(self.master, 4096).decode(errors="replace")
        except OSError:  # the child closed the terminal
            return False
        self.screen += chunk.replace("\r\n", "\n")
        return bool(chunk)

    def close(self) -> int:
        code = self.proc.wait(timeout=60)
        os.close(self.master)
        self.log.close()
        return code


def answer_of(screen: str) -> str:
    """The model's line in a screen chunk that ends with the next user prompt."""
    return screen.split(MODEL_PROMPT, 1)[1].rsplit(USER_PROMPT, 1)[0].strip()


@pytest.mark.slow
def test_chat_in_a_terminal_streams_generate_answers_and_switches_adapters(adapter_runs, tmp_path):
    run_a, run_b = adapter_runs
    message = "one hundred and five"
    argv = [sys.executable, "-m", "tunesmith", "chat", str(run_a), "--adapter", f"b={run_b}"]
    term = Terminal([*argv, "--max-new-tokens", str(SETTINGS.max_new_tokens)], tmp_path / "err")
    try:
        term.read_until(USER_PROMPT)
        term.type(message)
        first = answer_of(term.read_until(USER_PROMPT))
        term.type("/adapter b")
        assert "(adapter b; loaded: default, b)" in term.read_until(USER_PROMPT)
        term.type(message)
        second = answer_of(term.read_until(USER_PROMPT))
        term.type("/system answer in words")
        assert "(system message set)" in term.read_until(USER_PROMPT)
        term.type("/reset")
        assert "(conversation cleared)" in term.read_until(USER_PROMPT)
        term.type("/adapter nope")
        assert "no adapter of that name" in term.read_until(USER_PROMPT)
        term.type("/quit")
    finally:
        code = term.close()
    assert code == 0, (tmp_path / "err").read_text()[-2000:]
    # Greedy, so the streamed answers are exactly what each run alone generates for the prompt.
    assert first == greedy_answer(run_a, message)
    assert second == greedy_answer(run_b, message)
    assert first != second  # the switch changed which adapter answers


def test_reply_streams_in_pieces_that_make_the_generated_answer(adapter_runs):
    run_a, _ = adapter_runs
    session = ChatSession(load_for_inference(run_a), SETTINGS)
    pieces = list(session.reply("seven"))
    assert len(pieces) > 1  # text arrives as it is generated, not at the end
    assert "".join(pieces).strip() == greedy_answer(run_a, "seven")
    assert session.history[-1] == {"role": "assistant", "content": "".join(pieces).strip()}


def test_chat_template_keeps_the_conversation_and_system_message():
    from transformers import AutoTokenizer

    from conftest import build_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    loaded = LoadedForInference(build_tiny_model("llama").eval(), tokenizer, {}, False)
    session = ChatSession(loaded, GenerationSettings(max_new_tokens=3), system="be kind")
    answer = "".join(session.reply("hello"))
    example = conversation_example(loaded, session.messages_for("again"))
    prompt = tokenizer.apply_chat_template(
        example.messages, tokenize=False, add_generation_prompt=True
    )
    assert prompt == (
        f"<system>be kind\n<user>hello\n<assistant>{answer.strip()}\n<user>again\n<assistant>"
    )
    # What the model is given: the whole conversation, not the turns before the first answer.
    (ids,) = encode_prompts(tokenizer, [example], session.limits)
    assert ids == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    session.reset()
    assert session.messages_for("x") == [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "x"},
    ]
