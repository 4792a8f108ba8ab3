"""Where records come from: files on disk, resolved from the `data` config section."""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config import DataConfig
from tunesmith.errors import UserError

ENTRY_KEYS = (
    "format",
    "fields",
    "input_format",
    "output_format",
    "max_input_tokens",
    "max_output_tokens",
    "proportion",
)


@dataclass
class DatasetEntry:
    """One dataset of a split, with its own format settings (defaults from the `data` section)."""

    path: str
    format: str = "input_output"
    fields: dict = field(default_factory=dict)
    input_format: str = "__input__"
    output_format: str = "__output__"
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    proportion: float | None = None


def dataset_entries(data_cfg: DataConfig, split: str) -> list[DatasetEntry]:
    """The dataset entries of `split` ("train", "validation", "test"), defaults filled in.

    `data.<split>` is a path/glob, or a list of paths and/or mappings with a `path` and any of
    ENTRY_KEYS. Raises UserError on an unknown key in an entry.
    """
    value = getattr(data_cfg, split)
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    defaults = {key: getattr(data_cfg, key) for key in ENTRY_KEYS}
    entries = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or "path" not in item:
            raise UserError(
                f"data.{split}[{i}]: expected a path or a mapping with `path`",
                "e.g. {path: data/train.jsonl, proportion: 0.5}",
            )
        unknown = set(item) - set(ENTRY_KEYS) - {"path"}
        if unknown:
            raise UserError(
                f"data.{split}[{i}]: unknown key {sorted(unknown)[0]!r}",
                f"dataset entries take path, {', '.join(ENTRY_KEYS)}",
            )
        merged = {**defaults, **{k: v for k, v in item.items() if v is not None}}
        entries.append(DatasetEntry(**merged))
    return entries


def expand_paths(path: str) -> list[Path]:
    """Files named by a path, glob or folder (a folder contributes its data files, sorted)."""
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        files = sorted(
            p for p in candidate.iterdir() if p.suffix in (".jsonl", ".json") and p.is_file()
        )
    elif any(ch in path for ch in "*?["):
        files = [Path(p) for p in sorted(glob.glob(str(candidate)))]
    else:
        files = [candidate] if candidate.is_file() else []
    if not files:
        raise UserError(f"{path}: no data files found", "check the path (jsonl or json files)")
    return files


def read_records(path: str) -> list[dict[str, Any]]:
    """All records of the files a path names, each tagged with `_source` = "file:line"."""
    records: list[dict[str, Any]] = []
    for file in expand_paths(path):
        records.extend(_read_file(file))
    return records


def _read_file(file: Path) -> list[dict[str, Any]]:
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{file}: not UTF-8 (byte {exc.start})", "convert the file to UTF-8"
        ) from None
    stripped = text.lstrip()
    if file.suffix == ".json" and stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{file}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        return [_as_record(row, f"{file}[{i}]") for i, row in enumerate(rows)]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{file}:{number}: invalid JSON line: {exc.msg}",
                "each line must be one JSON object",
            ) from None
        records.append(_as_record(row, f"{file}:{number}"))
    return records


def _as_record(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return {**row, "_source": where}
