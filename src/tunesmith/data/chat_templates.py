"""Named chat templates (`data.chat_template`) for tokenizers that have none (base models).

    data: {format: chat, chat_template: llama3}

Each is a Jinja template in the form `tokenizer.apply_chat_template` renders, written after the
model family's published format. They render every turn as a pure prefix of the next rendering
(no dates, no look-ahead), which the assistant-only loss mask needs (data/tokenize.py): the text an
assistant turn adds, including its end-of-turn marker, is trained; its opening header is not.
A tokenizer's own template always wins; the named one only fills the gap, and is saved with the
run's tokenizer so `generate` and `chat` format prompts the same way.
"""

from __future__ import annotations

from typing import Any

from tunesmith.errors import UserError

# System text goes where each family puts it; families without a system role (Mistral, Gemma)
# prepend it to the first user message, as their own templates do.
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CHAT_TEMPLATES: dict[str, str] = {
    "chatml": _CHATML,
    # Qwen2.5: ChatML with a default system message when the conversation has none.
    "qwen": (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are Qwen, created by "
        "Alibaba Cloud. You are a helpful assistant.<|im_end|>\n{% endif %}" + _CHATML
    ),
    "llama3": (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
        "<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}"
        "{% elif m['role'] == 'user' %}[INST] {{ ns.system }}{{ m['content'] }} [/INST]"
        "{% set ns.system = '' %}{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    "gemma": (
        "{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}"
        "{% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
        "{% if m['role'] == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
        "{{ m['content'] | trim }}<end_of_turn>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
    "phi": (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    ),
    # Stanford Alpaca's sections, turn after turn (its preamble stands in for a system message).
    "alpaca": (
        "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n"
        "{% else %}Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request.\n\n{% endif %}{% for m in messages %}"
        "{% if m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
        "{% elif m['role'] == 'assistant' %}### Response:\n{{ m['content'] }}{{ eos_token }}\n\n"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}### Response:\n{% endif %}"
    ),
}


def chat_template(name: str) -> str:
    """The Jinja text of a named chat template (the one lookup: training, `generate`, `chat`).

    Raises:
        UserError: an unknown name, with the known ones.
    """
    if name not in CHAT_TEMPLATES:
        raise UserError(
            f"data.chat_template={name!r} is not a known chat template",
            f"choose one of {', '.join(CHAT_TEMPLATES)}",
        )
    return CHAT_TEMPLATES[name]


def use_chat_template(tokenizer: Any, name: str | None) -> None:
    """Give a tokenizer without a chat template the named one (a tokenizer's own one wins)."""
    if name is None:
        return
    template = chat_template(name)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = template
