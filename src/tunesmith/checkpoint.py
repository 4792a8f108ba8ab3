"""Resume checkpoints: everything a run needs to continue at the exact next example.

    tunesmith train cfg.yaml checkpoint.save_every=100    # writes <output_dir>/checkpoints/step-N/
    tunesmith train cfg.yaml resume=auto                  # continues from the newest valid one

Three owners answer three questions. The method says WHAT model state is kept
(`resume_state_names`: its `trainable_state`, plus every parameter that trains). The strategy says
HOW it is gathered and written (`save_resume` / `load_resume`; strategies whose ranks all hold
the whole model call `save_replicated` / `load_replicated` below). This module says WHERE, in
which format, and when a folder counts as a checkpoint:

    checkpoints/
      latest               text: the folder name of the newest complete checkpoint
      step-N/
        model.safetensors  model or adapter tensors (replicated strategies; sharded ones write
        optimizer.pt       their own files here)    optimizer state
        scheduler.pt       learning-rate schedule
        rng-rank00000.pt   python, torch CPU and CUDA generator states and data position, per rank
        method_state.pt    the method's own training-time state, when it has one (optional)
        trainer_state.json step, tokens seen, best metric, data position, batch geometry
        config.yaml        the resolved config of the run that wrote it
        manifest.json      written last: size and sha256 of every other file
      .tmp-step-N/         a checkpoint being written; never loaded

A checkpoint is written into `.tmp-step-N`, every file is flushed to disk, the manifest goes last,
then the folder is renamed to `step-N` and `latest` is replaced. A crash at any moment leaves the
earlier checkpoints untouched; a folder whose manifest does not verify is skipped with a warning.
Pickled state (optimizer, scheduler, RNG) is only read with `torch.load(weights_only=True)`, which
restores tensors and plain containers and never runs code; weights are safetensors. When to save
and how a run resumes from these folders is train/resume.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tunesmith.errors import UserError
from tunesmith.methods.base import unwrap

FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
LATEST = "latest"
MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
TRAINER_STATE = "trainer_state.json"
METHOD_STATE = "method_state.pt"
CONFIG_FILE = "config.yaml"
_STEP_DIR = re.compile(r"^step-(\d+)$")

Log = Callable[[str], None]


class EmptyStateError(RuntimeError):
    """A model or adapter would be written without weights (e.g. ZeRO-3 partitions not gathered)."""


# ---------------------------------------------------------------- tensors and pickles


def ensure_not_empty(state: dict[str, torch.Tensor], what: str) -> None:
    """Refuse to write `what` when it has no tensors or placeholder (0-element) weights.

    Raises:
        EmptyStateError: the state is empty, or a floating tensor has no elements (the shape a
            ZeRO-3 / sharded parameter has when it was not gathered before saving).
    """
    empty = [k for k, v in state.items() if v.is_floating_point() and v.numel() == 0]
    if state and not empty:
        return
    detail = "no tensors" if not state else f"{len(empty)} empty tensor(s), e.g. {empty[0]!r}"
    raise EmptyStateError(
        f"refusing to write {what} with {detail}: the weights were not gathered "
        "(a sharded strategy must gather parameters before saving)"
    )


def save_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write tensors as safetensors; tied tensors (one storage, several names) are stored once."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, tensor in state.items():
        t = tensor.detach()
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            key = (ptr, t.storage_offset(), tuple(t.shape), t.dtype)
            if key in seen:
                aliases[name] = seen[key]
                continue
            seen[key] = name
            if ptr in storages:  # an overlapping view of another entry: safetensors needs a copy
                t = t.clone()
            storages.add(ptr)
        unique[name] = t.cpu().contiguous()
    save_file(unique, str(path), metadata={"aliases": json.dumps(aliases)})


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read what `save_tensors` wrote (tied names restored), on CPU."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    for alias, source in aliases.items():
        tensors[alias] = tensors[source]
    return tensors


def load_pickled(path: Path) -> Any:
    """Optimizer, scheduler or RNG state: tensors and plain containers only, never code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def resume_state_names(method: Any, model: nn.Module) -> set[str]:
    """The model state-dict entries a resume checkpoint holds.

    The method's `trainable_state` entries (matched by name; all of them for full fine-tuning),
    plus every parameter that currently trains (PEFT names its adapter files differently from the
    live module, and prompt methods save computed tensors), or the whole state when the method's
    trainable set changes during training (frozen-now tensors may have trained before).
    """
    inner = unwrap(model)
    keys = set(inner.state_dict())
    if method.capabilities.dynamic_trainable:
        return keys
    named = set(method.trainable_state(inner)) & keys
    return named | {n for n, p in inner.named_parameters() if p.requires_grad}


def save_replicated(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    names: Collection[str] | None,
    write: bool,
) -> None:
    """`save_resume` of strategies whose ranks all hold the whole model (single, DDP).

    The rank with `write` (rank 0) writes model.safetensors (the `names` entries of the model's
    state dict; all when None) and optimizer.pt (unless `optimizer` is None).
    """
    if not write:
        return
    state = unwrap(model).state_dict()
    if names is not None:
        state = {k: v for k, v in state.items() if k in names}
    ensure_not_empty(state, "a resume checkpoint")
    save_tensors(state, directory / MODEL_FILE)
    if optimizer is not None:
        torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)


def load_replicated(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> None:
    """`load_resume` of replicated strategies: every rank reads the same files."""
    load_model_state(model, load_tensors(directory / MODEL_FILE))
    if optimizer is not None and (directory / OPTIMIZER_FILE).is_file():
        optimizer.load_state_dict(load_pickled(directory / OPTIMIZER_FILE))


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a (partial) state into the model; every saved tensor must fit one of the model's.

    Raises:
        UserError: a saved name the model lacks, or a shape that differs.
    """
    try:
        result = unwrap(model).load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise UserError(
            f"the checkpoint does not fit this model: {str(exc).splitlines()[-1].strip()}",
            "resume with the same model and method options as the run that wrote it",
        ) from None
    if result.unexpected_keys:
        raise UserError(
            f"the checkpoint holds {len(result.unexpected_keys)} tensor(s) this model lacks, "
            f"e.g. {result.unexpected_keys[0]!r}",
            "resume with the same model and method options as the run that wrote it",
        )


# ---------------------------------------------------------------- files on disk


def _digest(path: Path, flush: bool = False) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            sha.update(chunk)
        if flush:  # fsync works on any descriptor of the file: its dirty pages reach the disk
            os.fsync(f.fileno())
    return sha.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically: a temporary file, fsync, rename, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_manifest(directory: Path, info: dict[str, Any]) -> None:
    """Flush every file of `directory` to disk and record its size and sha256 in manifest.json.

    The manifest is the last file written: a folder without a valid one is not a checkpoint.
    """
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel != MANIFEST:
            files[rel] = {"bytes": path.stat().st_size, "sha256": _digest(path, flush=True)}
    for sub in sorted({p.parent for p in directory.rglob("*")} | {directory}):
        _fsync_dir(sub)
    manifest = {"format": FORMAT_VERSION, **info, "files": files}
    write_durably(directory / MANIFEST, json.dumps(manifest, indent=2))


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MANIFEST).read_text(encoding="utf-8"))


def verify(directory: Path) -> str | None:
    """None if `directory` is a complete, intact checkpoint; otherwise what is wrong with it."""
    if not (directory / MANIFEST).is_file():
        return "no manifest.json (the write did not finish)"
    try:
        manifest = read_manifest(directory)
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return "manifest.json is unreadable"
    if manifest.get("format", 0) > FORMAT_VERSION:
        return f"format {manifest['format']} is newer than this tunesmith reads ({FORMAT_VERSION})"
    for rel, entry in files.items():
        path = directory / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != entry["bytes"]:
            return f"{rel} has {path.stat().st_size} bytes, the manifest says {entry['bytes']}"
        if _digest(path) != entry["sha256"]:
            return f"{rel} does not match its checksum (the file is corrupted)"
    return None


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every `step-N` folder under `root`, newest first (not verified)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return sorted(found, reverse=True)


def read_latest(root: Path) -> Path | None:
    """The folder `latest` names, if it exists."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    target = root / pointer.read_text(encoding="utf-8").strip()
    return target if target.is_dir() else None


def publish(tmp: Path, final: Path) -> None:
    """Move a finished folder into place (replacing an older one of that name) atomically.

    `final` either keeps its old content or has the new one; between the two renames it is
    briefly absent, never half written.
    """
    old = final.with_name(f".old-{final.name}")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    _fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)


def best_checkpoint(found: list[tuple[int, Path]], metric: str | None, mode: str) -> Path | None:
    """The checkpoint whose manifest records the best `metric` (lowest for mode=min)."""
    if not metric:
        return None
    scored = []
    for _, path in found:
        try:
            value = read_manifest(path).get("metrics", {}).get(metric)
        except (OSError, ValueError):
            continue
        if isinstance(value, (int, float)):
            scored.append((value if mode == "min" else -value, path))
    return min(scored, key=lambda s: s[0])[1] if scored else None


def prune(root: Path, keep_last: int, metric: str | None, mode: str) -> list[Path]:
    """Delete checkpoints except the newest `keep_last`, the best by `metric` and `latest`.

    `keep_last` <= 0 keeps everything. Returns the deleted folders.
    """
    found = [(s, p) for s, p in list_checkpoints(root) if (p / MANIFEST).is_file()]
    if keep_last <= 0:
        return []
    keep = {p for _, p in found[:keep_last]}
    keep |= {p for p in (best_checkpoint(found, metric, mode), read_latest(root)) if p}
    deleted = [p for _, p in found if p not in keep]
    for path in deleted:
        shutil.rmtree(path, ignore_errors=True)
    return deleted


def check_saved_weights(folder: Path) -> None:
    """Every safetensors file under `folder` must hold real weights (the ZeRO-3 empty-adapter bug).

    Raises:
        EmptyStateError: no weight file, or one with no tensors or 0-element tensors.
    """
    files = sorted(folder.rglob("*.safetensors"))
    if not files:
        raise EmptyStateError(f"{folder}: no weights were written")
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118
        empty = [k for k, shape in shapes.items() if 0 in shape]
        if not shapes or empty:
            detail = "no tensors" if not shapes else f"empty tensor {empty[0]!r}"
            raise EmptyStateError(f"{path} holds {detail}: the weights were not gathered")


def choose_checkpoint(resume: str, output_dir: Path, log: Log) -> Path | None:
    """The checkpoint folder `resume` names, verified.

    `auto`: the newest valid checkpoint under output_dir/checkpoints (None when there is none).
    A checkpoint folder (or a `latest` file): that one. A run folder or a checkpoints folder: its
    newest valid checkpoint. Invalid newer checkpoints are skipped with a warning.

    Raises:
        UserError: an explicit path that is not a valid checkpoint or holds none.
    """
    hint = "point resume at a checkpoints/step-N folder, a run folder, or use resume=auto"
    if resume == "auto":
        root, explicit = output_dir / CHECKPOINTS, False
    else:
        path, explicit = Path(resume).expanduser(), True
        if path.is_file() and path.name == LATEST:
            path = path.parent / path.read_text(encoding="utf-8").strip()
        if _STEP_DIR.match(path.name) or (path / MANIFEST).exists():
            problem = verify(path) if path.is_dir() else "no such folder"
            if problem:
                raise UserError(f"resume={resume}: not a usable checkpoint: {problem}", hint)
            return path
        root = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
        if not root.is_dir():
            raise UserError(f"resume={resume}: no such folder", hint)
    for _, candidate in list_checkpoints(root):
        problem = verify(candidate)
        if problem is None:
            return candidate
        log(f"warning: skipping checkpoint {candidate}: {problem}")
    if explicit:
        raise UserError(f"resume={resume}: no valid checkpoint in {root}", hint)
    return None


def rank_file(rank: int) -> str:
    """The file of one rank's RNG states and data position."""
    return f"rng-rank{rank:05d}.pt"
