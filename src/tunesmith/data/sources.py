"""Where records come from: files, folders, zips and hub datasets named by the `data` section.

A dataset entry names a path (file, glob, folder or zip) or a hub dataset. Readers by suffix:
`.jsonl`/`.json` (JSON lines or one array), `.csv`, `.parquet`, `.txt` (one record per paragraph,
`{"text": ...}`), and line-aligned `X.src` + `X.ref0..N` pairs (JFLEG). A folder or zip laid out by
split (seed 003: `train/ val/ test/`, or files named `train.json`, `validation.json`, ...) gives
each split its own files, all files of a split concatenated. Every record carries `_source`
("file:line") so any later error can point at it.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tunesmith.config import DataConfig
from tunesmith.errors import UserError

# Keys a dataset entry may set; the ones that are also `data` fields default from there.
ENTRY_KEYS = (
    "format",
    "fields",
    "input_format",
    "output_format",
    "template",
    "system",
    "max_input_tokens",
    "max_output_tokens",
    "cutoff_len",
    "overlong",
    "truncation_side",
    "proportion",
)
OWN_KEYS = ("path", "preset", "hub", "hub_config", "split")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
SPLIT_NAMES = {
    "train": ("train",),
    "validation": ("validation", "val", "valid", "dev"),
    "test": ("test",),
}


@dataclass
class DatasetEntry:
    """One dataset of a split, with its own format settings (defaults from the `data` section)."""

    path: str | None = None
    format: str = "input_output"
    fields: dict = field(default_factory=dict)
    input_format: str = "__input__"
    output_format: str = "__output__"
    template: str | None = None
    system: str | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    cutoff_len: int | None = None
    overlong: str = "truncate"
    truncation_side: str = "right"
    proportion: float | None = None
    preset: str | None = None
    hub: str | None = None
    hub_config: str | None = None
    split: str = "train"

    @property
    def label(self) -> str:
        """How messages name this entry."""
        return self.path or f"hub:{self.hub}"


def dataset_entries(data_cfg: DataConfig, split: str) -> list[DatasetEntry]:
    """The dataset entries of `split` ("train", "validation", "test"), defaults filled in.

    `data.<split>` is a path, glob, folder, zip or preset name, or a list of those and/or mappings
    with a `path` (or `hub`, or `preset`) and any of ENTRY_KEYS. When `data.validation`/`test` is
    unset, a train entry that is a split folder or zip lends its own val/test split.

    Raises:
        UserError: an unknown key or preset, or an entry without a path, hub name or preset.
    """
    from tunesmith.data.presets import apply_preset  # presets import this module

    value = getattr(data_cfg, split)
    if value is None and split != "train" and data_cfg.train is not None:
        lent = [
            DatasetEntry(**{**vars(e), "split": split, "proportion": None})
            for e in dataset_entries(data_cfg, "train")
            if e.path and has_split(e.path, split)
        ]
        return lent
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    defaults = {key: getattr(data_cfg, key) for key in ENTRY_KEYS if hasattr(data_cfg, key)}
    if getattr(data_cfg, "preset", None):
        defaults["preset"] = data_cfg.preset
    entries = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or not ({"path", "hub", "preset"} & set(item)):
            raise UserError(
                f"data.{split}[{i}]: expected a path, preset name or a mapping with `path`",
                "e.g. {path: data/train.jsonl, proportion: 0.5}",
            )
        unknown = set(item) - set(ENTRY_KEYS) - set(OWN_KEYS)
        if unknown:
            raise UserError(
                f"data.{split}[{i}]: unknown key {sorted(unknown)[0]!r}",
                f"dataset entries take {', '.join(OWN_KEYS + ENTRY_KEYS)}",
            )
        given = {k: v for k, v in item.items() if v is not None}
        entry = apply_preset(defaults, given, split)
        entries.append(DatasetEntry(**{"split": split, **entry}))
    return entries


def entry_settings(data_cfg: DataConfig) -> dict[str, Any]:
    """The format settings of the first training entry, presets resolved: what a saved model
    records so `generate` and evaluation apply the same templates and limits."""
    entries = dataset_entries(data_cfg, "train") if data_cfg.train is not None else []
    entry = entries[0] if entries else DatasetEntry()
    keep = ("format", "fields", "input_format", "output_format", "template", "system")
    keep += ("max_input_tokens", "max_output_tokens", "truncation_side")
    return {key: getattr(entry, key) for key in keep}


# ---------------------------------------------------------------- files of a split


@dataclass
class DataFile:
    """A data file on disk or inside a zip; `label` names it in messages."""

    label: str
    suffix: str
    read_bytes: Callable[[], bytes]
    partner_labels: tuple[str, ...] = ()


def _disk_file(path: Path) -> DataFile:
    return DataFile(str(path), path.suffix.lower(), path.read_bytes)


def _is_data_file(name: str) -> bool:
    lower = name.lower()
    return lower.endswith((*DATA_SUFFIXES, ".src")) or re.search(r"\.ref\d+$", lower) is not None


def _zip_tree(path: Path) -> dict[str, DataFile]:
    """Data files inside a zip, by their path inside it (a single top folder is stripped)."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise UserError(f"{path}: not a valid zip file", "re-download or re-create it") from None
    names = [n for n in archive.namelist() if not n.endswith("/") and _is_data_file(n)]
    tops = {PurePosixPath(n).parts[0] for n in names}
    strip = len(tops) == 1 and all(len(PurePosixPath(n).parts) > 1 for n in names)
    tree = {}
    for name in names:
        inner = str(PurePosixPath(*PurePosixPath(name).parts[1:])) if strip else name
        tree[inner] = DataFile(
            f"{path}:{name}",
            PurePosixPath(name).suffix.lower(),
            lambda name=name: archive.read(name),
        )
    return tree


def _folder_tree(path: Path) -> dict[str, DataFile]:
    return {
        str(p.relative_to(path).as_posix()): _disk_file(p)
        for p in sorted(path.rglob("*"))
        if p.is_file() and _is_data_file(p.name)
    }


def _tree(path: Path) -> dict[str, DataFile] | None:
    if path.is_dir():
        return _folder_tree(path)
    if path.suffix.lower() == ".zip" and path.is_file():
        return _zip_tree(path)
    return None


def _split_members(tree: dict[str, DataFile], split: str) -> list[str] | None:
    """Names in `tree` that belong to `split` (a `split/` folder or a `split.*` file), or None
    when the tree is not laid out by split at all."""
    for alias in SPLIT_NAMES[split]:
        in_folder = sorted(n for n in tree if n.split("/")[0] == alias and "/" in n)
        if in_folder:
            return in_folder
        as_file = sorted(
            n
            for n in tree
            if "/" not in n and n.rsplit(".", 1)[0] == alias and n.lower().endswith(DATA_SUFFIXES)
        )
        if as_file:
            return as_file
    return None


def _laid_out_by_split(tree: dict[str, DataFile]) -> bool:
    return any(_split_members(tree, s) for s in SPLIT_NAMES)


def has_split(path: str, split: str) -> bool:
    """True when `path` is a folder or zip laid out by split and has `split`."""
    tree = _tree(Path(path).expanduser())
    return bool(tree) and _split_members(tree, split) is not None


def split_files(path: str, split: str | None = "train") -> list[DataFile]:
    """The data files `path` names for `split` (a plain file or glob ignores the split).

    Raises:
        UserError: nothing found, or a split folder/zip without that split.
    """
    candidate = Path(path).expanduser()
    tree = _tree(candidate)
    if tree is not None:
        if _laid_out_by_split(tree) and split is not None:
            members = _split_members(tree, split)
            if members is None:
                raise UserError(
                    f"{path}: no {split} split (looked for {'/, '.join(SPLIT_NAMES[split])}/)",
                    "add the folder or file, or name the split's data explicitly",
                )
            files = [tree[n] for n in members]
        else:
            files = [tree[n] for n in sorted(tree)]
    elif any(ch in path for ch in "*?["):
        files = [
            _disk_file(Path(p)) for p in sorted(glob.glob(str(candidate))) if Path(p).is_file()
        ]
    else:
        files = [_disk_file(candidate)] if candidate.is_file() else []
    files = _pair_line_aligned(files)
    if not files:
        import difflib

        from tunesmith.data.presets import PRESETS

        close = difflib.get_close_matches(path, PRESETS, n=1) if "/" not in path else []
        hint = f"did you mean the preset {close[0]!r}?" if close else None
        raise UserError(
            f"{path}: no data files found",
            hint or "give a jsonl/json/csv/parquet/txt file, folder, zip or preset name",
        )
    return files


def _pair_line_aligned(files: list[DataFile]) -> list[DataFile]:
    """`X.src` files become one reader over X.src + X.ref0..N; the refs themselves are dropped."""
    labels = {f.label: f for f in files}
    out = []
    for f in files:
        if f.label.endswith(".src"):
            if f.label.endswith(".spellchecked.src"):
                continue
            stem = f.label[: -len(".src")]
            refs = tuple(
                labels[f"{stem}.ref{i}"].label for i in range(10) if f"{stem}.ref{i}" in labels
            )
            out.append(DataFile(f.label, ".src", f.read_bytes, refs))
        elif re.search(r"\.ref\d+$", f.label):
            continue
        else:
            out.append(f)
    return out


# ---------------------------------------------------------------- reading records


def read_records(path: str, split: str | None = "train") -> list[dict[str, Any]]:
    """All records of the files `path` names for `split`, each tagged `_source` = "file:line".

    Raises:
        UserError: malformed line (file:line), non-UTF-8 file, no files, a split with no records.
    """
    records: list[dict[str, Any]] = []
    for file in split_files(path, split):
        records.extend(read_file(file))
    if not records:
        where = f"{path} ({split} split)" if split and has_split(path, split) else path
        raise UserError(f"{where}: the split is empty (no records)", "add data or remove the entry")
    return records


def read_entry(entry: DatasetEntry) -> list[dict[str, Any]]:
    """The records of one dataset entry: its files, or its hub dataset when it names one."""
    if entry.path:
        return read_records(entry.path, entry.split)
    return read_hub(entry)


def read_hub(entry: DatasetEntry) -> list[dict[str, Any]]:
    """A hub dataset's split through `datasets` (which caches it); needs network on first use."""
    try:
        import datasets

        split = {"validation": "validation", "test": "test"}.get(entry.split, "train")
        rows = datasets.load_dataset(entry.hub, entry.hub_config, split=split)
    except Exception as exc:  # noqa: BLE001 - any loader failure is the user's to fix
        raise UserError(
            f"hub dataset {entry.hub!r}: cannot load ({str(exc).splitlines()[0][:200]})",
            "check the name and network, or give a local `path`",
        ) from None
    return [{**row, "_source": f"hub:{entry.hub}[{i}]"} for i, row in enumerate(rows)]


def _text(file: DataFile, data: bytes | None = None) -> str:
    data = file.read_bytes() if data is None else data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{file.label}:{line}: not UTF-8 (byte {exc.start})", "convert the file to UTF-8"
        ) from None


def read_file(file: DataFile) -> list[dict[str, Any]]:
    """Records of one file, by its suffix."""
    reader = READERS.get(file.suffix, _read_json)
    return reader(file)


def _read_json(file: DataFile) -> list[dict[str, Any]]:
    text = _text(file)
    if file.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{file.label}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        return [_as_record(row, f"{file.label}[{i}]") for i, row in enumerate(rows)]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{file.label}:{number}: invalid JSON line: {exc.msg}",
                "each line must be one JSON object",
            ) from None
        records.append(_as_record(row, f"{file.label}:{number}"))
    return records


def _read_csv(file: DataFile) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(_text(file), newline=""))
    records = []
    try:
        for row in reader:
            if None in row:
                raise UserError(
                    f"{file.label}:{reader.line_num}: more values than the header has columns",
                    "quote fields that contain commas",
                )
            records.append({**row, "_source": f"{file.label}:{reader.line_num}"})
    except csv.Error as exc:
        raise UserError(f"{file.label}:{reader.line_num}: invalid CSV: {exc}") from None
    return records


def _read_parquet(file: DataFile) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(file.read_bytes()))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise UserError(f"{file.label}: not a readable parquet file ({exc})") from None
    return [{**row, "_source": f"{file.label}[{i}]"} for i, row in enumerate(table.to_pylist())]


def _read_text(file: DataFile) -> list[dict[str, Any]]:
    """Plain text: one record per paragraph (blank-line separated), for continued pre-training."""
    records, lines, start = [], [], 1
    for number, line in enumerate(_text(file).splitlines() + [""], start=1):
        if line.strip():
            if not lines:
                start = number
            lines.append(line)
        elif lines:
            records.append({"text": "\n".join(lines), "_source": f"{file.label}:{start}"})
            lines = []
    return records


def _read_line_aligned(file: DataFile) -> list[dict[str, Any]]:
    """`X.src` with `X.ref0..N` (JFLEG): input, target (= ref0) and all references."""
    sources = _text(file).splitlines()
    partners = [
        _text(file, _partner_bytes(file, label)).splitlines() for label in file.partner_labels
    ]
    for label, refs in zip(file.partner_labels, partners):
        if len(refs) != len(sources):
            raise UserError(
                f"{label}: {len(refs)} lines, but {file.label} has {len(sources)}",
                "line-aligned files must have the same number of lines",
            )
    records = []
    for i, line in enumerate(sources):
        refs = [p[i].strip() for p in partners]
        record = {"input": line.strip(), "_source": f"{file.label}:{i + 1}"}
        if refs:
            record.update(target=refs[0], references=refs)
        records.append(record)
    return records


def _partner_bytes(file: DataFile, label: str) -> bytes:
    if ".zip:" in label:
        archive, _, name = label.partition(".zip:")
        with zipfile.ZipFile(archive + ".zip") as z:
            return z.read(name)
    return Path(label).read_bytes()


READERS: dict[str, Callable[[DataFile], list[dict[str, Any]]]] = {
    ".jsonl": _read_json,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
    ".txt": _read_text,
    ".src": _read_line_aligned,
}


def _as_record(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return {**row, "_source": where}


def content_fingerprint(entry: DatasetEntry) -> str:
    """A hash of the bytes of every file the entry reads (hub entries: name, config, split)."""
    import hashlib

    digest = hashlib.sha256()
    if not entry.path:
        digest.update(f"hub:{entry.hub}:{entry.hub_config}:{entry.split}".encode())
        return digest.hexdigest()
    for file in split_files(entry.path, entry.split):
        digest.update(file.label.encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
        for label in file.partner_labels:
            digest.update(hashlib.sha256(_partner_bytes(file, label)).digest())
    return digest.hexdigest()
