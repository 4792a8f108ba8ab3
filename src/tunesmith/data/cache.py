"""On-disk cache of tokenised splits, keyed by everything that changes the tokens.

The key hashes the data files' bytes, the tokenizer (its full serialisation, special tokens and
chat template), every entry's format settings and templates, the length limits, the model kind
and the seed (which picks a held-out validation share). A second run of the same config reads the
arrays back instead of tokenising. Processes of one run share the cache through a file lock: the
first to take the lock builds and writes; the others wait on the lock and then read what it wrote.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.data.tokenize import Encoded

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """`$TUNESMITH_CACHE` or ~/.cache/tunesmith, plus data/."""
    root = os.environ.get("TUNESMITH_CACHE") or Path.home() / ".cache" / "tunesmith"
    return Path(root) / "data"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what decides a tokenizer's output."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    special = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    digest.update(json.dumps([special, getattr(tokenizer, "chat_template", None)]).encode())
    return digest.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    """The hex key of a JSON-serialisable description."""
    text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


Splits = dict[str, tuple[list[Encoded], dict[str, Any]]]


def cached_splits(
    folder: Path | None, key: str, build: Callable[[], Splits]
) -> tuple[Splits, bool]:
    """The splits stored under `key`, building and storing them on a miss.

    Returns the splits and whether they came from the cache. `folder=None` disables caching.
    """
    if folder is None:
        return build(), False
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / key
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (target / "meta.json").is_file():
            return _load(target), True
        splits = build()
        _save(splits, target)
        return splits, False


def _save(splits: Splits, target: Path) -> None:
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    meta = {}
    for name, (examples, stats) in splits.items():
        ids = [e.input_ids for e in examples]
        labels = [e.labels for e in examples]
        np.savez(
            tmp / f"{name}.npz",
            ids=np.fromiter((t for row in ids for t in row), dtype=np.int32),
            labels=np.fromiter((t for row in labels for t in row), dtype=np.int32),
            id_lens=np.array([len(r) for r in ids], dtype=np.int64),
            label_lens=np.array([len(r) for r in labels], dtype=np.int64),
            truncated=np.array([e.truncated for e in examples], dtype=bool),
            source=np.array([e.source for e in examples], dtype=np.int32),
            **_preference_arrays(examples),
        )
        meta[name] = stats
    (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    os.replace(tmp, target)


def _split_rows(flat: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    values = flat.tolist()
    out, start = [], 0
    for n in lengths.tolist():
        out.append(values[start : start + n])
        start += n
    return out


def _load(target: Path) -> Splits:
    meta = json.loads((target / "meta.json").read_text(encoding="utf-8"))
    splits: Splits = {}
    for name, stats in meta.items():
        with np.load(target / f"{name}.npz") as arrays:
            ids = _split_rows(arrays["ids"], arrays["id_lens"])
            labels = _split_rows(arrays["labels"], arrays["label_lens"])
            flags = arrays["truncated"].tolist()
            sources = arrays["source"].tolist()
            examples = [Encoded(i, lab, t, s) for i, lab, t, s in zip(ids, labels, flags, sources)]
            _attach_preference(examples, arrays)
        splits[name] = (examples, stats)
    return splits


def _preference_arrays(examples: list[Encoded]) -> dict[str, np.ndarray]:
    """The rejected rows of pairs and the desirable flags of KTO examples (none for SFT data)."""
    out: dict[str, np.ndarray] = {}
    if examples and examples[0].rejected_ids is not None:
        ids = [e.rejected_ids or [] for e in examples]
        labels = [e.rejected_labels or [] for e in examples]
        out["rejected_ids"] = np.fromiter((t for row in ids for t in row), dtype=np.int32)
        out["rejected_labels"] = np.fromiter((t for row in labels for t in row), dtype=np.int32)
        out["rejected_lens"] = np.array([len(r) for r in ids], dtype=np.int64)
    if examples and examples[0].desirable is not None:
        out["desirable"] = np.array([bool(e.desirable) for e in examples], dtype=bool)
    return out


def _attach_preference(examples: list[Encoded], arrays: Any) -> None:
    if "rejected_ids" in arrays:
        ids = _split_rows(arrays["rejected_ids"], arrays["rejected_lens"])
        labels = _split_rows(arrays["rejected_labels"], arrays["rejected_lens"])
        for e, i, lab in zip(examples, ids, labels):
            e.rejected_ids, e.rejected_labels = i, lab
    if "desirable" in arrays:
        for e, flag in zip(examples, arrays["desirable"].tolist()):
            e.desirable = flag
