"""Named prompt templates for instruction formats (`data.template`).

Each template is a pair (with an input, without one). `{instruction}` is the instruction and
`__input__` the part truncation may cut (the input when there is one, else the instruction).
"""

from __future__ import annotations

from tunesmith.errors import UserError

ALPACA_TEMPLATES: dict[str, tuple[str, str]] = {
    # tatsu-lab/stanford_alpaca's PROMPT_DICT, also used by llama-recipes' alpaca_dataset.
    "stanford": (
        "Below is an instruction that describes a task, paired with an input that provides further"
        " context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n__input__\n\n### Response:\n",
        "Below is an instruction that describes a task. Write a response that appropriately"
        " completes the request.\n\n### Instruction:\n__input__\n\n### Response:\n",
    ),
    # The same sections without the preamble: shorter prompts for small models.
    "plain": (
        "### Instruction:\n{instruction}\n\n### Input:\n__input__\n\n### Response:\n",
        "### Instruction:\n__input__\n\n### Response:\n",
    ),
}


def alpaca_template(name: str | None, with_input: bool) -> str:
    """The named template's variant for records with or without an input."""
    key = name or "stanford"
    if key not in ALPACA_TEMPLATES:
        raise UserError(
            f"data.template={key!r} is not a known prompt template",
            f"choose one of {', '.join(ALPACA_TEMPLATES)}",
        )
    return ALPACA_TEMPLATES[key][0 if with_input else 1]
