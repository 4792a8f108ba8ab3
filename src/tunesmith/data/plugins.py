"""User plugins: Python files named in the config (`plugins: [my_task.py]`) that register things.

A plugin is an ordinary Python file. Importing it runs its registrations, e.g.

    from tunesmith.data.formats import Example, register, field_value
    from tunesmith.metrics import METRICS

    @register("qa")
    def qa(record, entry):
        return Example(f"Q: {record['q']}\\nA:", f" {record['a']}", record["q"], "Q: __input__\\nA:",
                       record["_source"])

    METRICS["first_word"] = lambda prediction, reference: float(
        prediction.split()[:1] == reference.split()[:1])

The YAML then names `format: qa` or `metrics: [first_word]`: names, never import paths.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tunesmith.errors import UserError

_loaded: set[Path] = set()


def load_plugins(paths: list[str]) -> None:
    """Import each plugin file once per process.

    Raises:
        UserError: a file that does not exist or fails to import (with the exception's message).
    """
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if path in _loaded:
            continue
        if not path.is_file():
            raise UserError(f"plugins: {raw}: no such file", "give the path of a .py file")
        name = f"tunesmith_plugin_{path.stem}_{len(_loaded)}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise UserError(f"plugins: {raw}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - report any plugin failure on one line
            sys.modules.pop(name, None)
            raise UserError(
                f"plugins: {raw}: failed to load ({type(exc).__name__}: {exc})",
                "run the file with python to see the traceback",
            ) from None
        _loaded.add(path)
