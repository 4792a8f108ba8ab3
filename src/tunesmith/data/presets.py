"""Named datasets from the seeds: the right format, field mapping and prompt, by name.

    data:
      train: {preset: samsum, path: ../shared/data/samsum/samsum.zip}
      train: alpaca                 # no local path: the hub dataset (needs network)

A preset fills entry settings; anything the entry sets itself wins. Without a `path`, the preset's
hub dataset is read through `datasets`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.errors import UserError

_GRAMMAR = {
    "format": "input_output",
    "fields": {"input": "input", "output": "target"},
    "input_format": "Correct this to standard English: __input__\n---\nCorrected: ",
    "output_format": "__output__",
}

PRESETS: dict[str, dict[str, Any]] = {
    # llama-recipes' samsum_dataset prompt.
    "samsum": {
        "format": "input_output",
        "fields": {"input": "dialogue", "output": "summary"},
        "input_format": "Summarize this dialog:\n__input__\n---\nSummary:\n",
        "output_format": "__output__",
        "hub": "knkarthick/samsum",
    },
    # llama-recipes' grammar_dataset prompt; reads its csv (input, target) and JFLEG's
    # line-aligned X.src + X.ref0..3 files (read as input, target = ref0, references).
    "grammar": _GRAMMAR,
    # The same for JFLEG by name (its 4 references are scored by GLEU).
    "jfleg": _GRAMMAR,
    "alpaca": {"format": "alpaca", "template": "stanford", "hub": "tatsu-lab/alpaca"},
    "dolly": {
        "format": "alpaca",
        "template": "stanford",
        "fields": {"instruction": "instruction", "input": "context", "output": "response"},
        "hub": "databricks/databricks-dolly-15k",
    },
    "english_quotes": {
        "format": "completion",
        "fields": {"text": "quote"},
        "hub": "Abirate/english_quotes",
    },
}


# What `tunesmith evaluate` scores for a preset's data when no --metrics are given.
PRESET_METRICS: dict[str, list[str]] = {
    "jfleg": ["gleu"],
    "grammar": ["gleu"],
    "samsum": ["rouge1", "rouge2", "rougeL", "rougeLsum"],
}


def apply_preset(defaults: dict[str, Any], given: dict[str, Any], split: str) -> dict[str, Any]:
    """Entry settings: `data` defaults, then the preset's, then the entry's own.

    A bare string that is a preset name and not an existing path selects that preset.

    Raises:
        UserError: an unknown preset, or a preset without a path and without a hub dataset.
    """
    given = dict(given)
    path = given.get("path")
    if path in PRESETS and not Path(path).exists():
        given["preset"] = given.pop("path")
    name = given.get("preset", defaults.get("preset"))
    merged = {k: v for k, v in defaults.items() if k != "preset"}
    if name is not None:
        if name not in PRESETS:
            import difflib

            close = difflib.get_close_matches(str(name), PRESETS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"presets: {', '.join(PRESETS)}"
            raise UserError(f"data.{split}: unknown preset {name!r}", hint)
        merged.update(PRESETS[name])
        merged["preset"] = name
    merged.update(given)
    if not merged.get("path"):
        merged.pop("path", None)
        if not merged.get("hub"):
            raise UserError(
                f"data.{split}: preset {name!r} has no hub dataset",
                "give the local files with `path:`",
            )
    elif "hub" in merged and "hub" not in given:
        merged.pop("hub")  # a local path wins over the preset's hub dataset
    return merged
