"""Where records come from: files, folders, zips and hub datasets named by the `data` section.

A dataset entry names a path (file, glob, folder or zip) or a hub dataset. Readers by suffix
(data/readers.py): `.jsonl`/`.json` (JSON lines or one array), `.csv`, `.parquet`, `.txt` (one
record per paragraph, `{"text": ...}`), and line-aligned `X.src` + `X.ref0..N` pairs (JFLEG). A
folder or zip laid out by split (seed 003: `train/ val/ test/`, or files named `train.json`,
`validation.json`, ...) gives each split its own files, all files of a split concatenated. Every
record carries `_source` ("file:line") so any later error can point at it. Files are streamed
(through `datasets` from one chunk up), so records come one at a time in bounded memory.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tunesmith.config import DataConfig
from tunesmith.data.readers import (
    STREAM_BATCH_ROWS,
    STREAM_CHUNK_BYTES,
    DataFile,
    brief,
    datasets_module,
    read_file,
)
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
        if self.path:
            return self.path
        return f"hub:{self.hub}" + (f":{self.hub_config}" if self.hub_config else "")


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
    keep += ("max_input_tokens", "max_output_tokens", "cutoff_len", "truncation_side", "preset")
    # max_seq_len is a run setting, not an entry's: generate cuts prompts with it too.
    return {**{key: getattr(entry, key) for key in keep}, "max_seq_len": data_cfg.max_seq_len}


# ---------------------------------------------------------------- files of a split


def _disk_file(path: Path) -> DataFile:
    return DataFile(
        str(path),
        path.suffix.lower(),
        str(path.resolve()),
        lambda: open(path, "rb"),  # noqa: SIM115
        size=path.stat().st_size,
    )


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
            f"zip://{name}::{path.resolve()}",  # datasets streams the member; nothing is extracted
            lambda name=name: archive.open(name),
            size=archive.getinfo(name).file_size,
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
    elif glob.has_magic(path):
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
            refs = tuple(labels[f"{stem}.ref{i}"] for i in range(10) if f"{stem}.ref{i}" in labels)
            out.append(dataclasses.replace(f, partners=refs))
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
    return list(iter_records(path, split))


def iter_records(path: str, split: str | None = "train") -> Iterator[dict[str, Any]]:
    """The records of `read_records`, one at a time, streamed from the files (bounded memory).

    Raises (while iterating):
        UserError: as `read_records`.
    """
    count = 0
    for file in split_files(path, split):
        for record in read_file(file):
            count += 1
            yield record
    if not count:
        where = f"{path} ({split} split)" if split and has_split(path, split) else path
        raise UserError(f"{where}: the split is empty (no records)", "add data or remove the entry")


def read_entry(entry: DatasetEntry) -> Iterator[dict[str, Any]]:
    """The records of one dataset entry, streamed: its files, or its hub dataset."""
    if entry.path:
        return iter_records(entry.path, entry.split)
    return read_hub(entry)


def read_hub(entry: DatasetEntry) -> Iterator[dict[str, Any]]:
    """A hub dataset's split (`entry.split`: any split `datasets` knows, e.g. "validation" or
    "train[:1000]") through `datasets`, which downloads it once and keeps it as memory-mapped
    Arrow. `entry.hub` may also be a local folder laid out like a hub dataset repo (data files and
    a README.md whose YAML lists the configs). Needs network on first use of a remote name.

    Raises:
        UserError: the dataset, config or split cannot be loaded, or the split is empty.
    """
    config = f" (config {entry.hub_config!r})" if entry.hub_config else ""
    try:
        rows = datasets_module().load_dataset(entry.hub, entry.hub_config, split=entry.split)
    except Exception as exc:  # noqa: BLE001 - any loader failure is the user's to fix
        raise UserError(
            f"hub dataset {entry.hub!r}{config}, split {entry.split!r}: cannot load ({brief(exc)})",
            "check the name, config, split and network, or give a local `path`",
        ) from None
    if len(rows) == 0:
        raise UserError(
            f"hub dataset {entry.hub!r}{config}, split {entry.split!r}: the split is empty",
            "pick another split or remove the entry",
        )
    index = 0
    for batch in rows.with_format("arrow").iter(batch_size=STREAM_BATCH_ROWS):
        for row in batch.to_pylist():
            row["_source"] = f"{entry.label} {entry.split}[{index}]"
            yield row
            index += 1


def content_fingerprint(entry: DatasetEntry) -> str:
    """A hash of the bytes of every file the entry reads, read in chunks (a hub entry: its name,
    config and split, plus the files when it is a local folder)."""
    digest = hashlib.sha256()
    if not entry.path:
        digest.update(f"hub:{entry.hub}:{entry.hub_config}:{entry.split}".encode())
        folder = Path(str(entry.hub)).expanduser()
        if folder.is_dir():
            for path in sorted(
                p for p in folder.rglob("*") if p.is_file() and ".git" not in p.parts
            ):
                digest.update(str(path.relative_to(folder)).encode())
                digest.update(_file_digest(_disk_file(path)))
        return digest.hexdigest()
    for file in split_files(entry.path, entry.split):
        digest.update(file.label.encode())
        digest.update(_file_digest(file))
        for partner in file.partners:
            digest.update(_file_digest(partner))
    return digest.hexdigest()


def _file_digest(file: DataFile) -> bytes:
    digest = hashlib.sha256()
    with file.open_binary() as stream:
        while chunk := stream.read(STREAM_CHUNK_BYTES):
            digest.update(chunk)
    return digest.digest()
