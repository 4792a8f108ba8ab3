"""`train.compile`: whether a run compiles, what it compiles, and how many graphs that made.

    train: {compile: auto}      # the default: on where it is measured to pay, with a log line
    train: {compile: true}      # force it (any device, precision or strategy)

What is compiled: the `forward` of each repeated transformer block (the children of the model's
ModuleLists that share one class: decoder layers, T5 blocks), in place. Every block of a model
has the same code, so dynamo compiles it once and reuses the graph for all layers (a cold compile
costs one block, not the whole model), parameter names and state dicts stay unchanged
(checkpoints, adapters and `unwrap` do not see a wrapper), and the embeddings, the LM head and the
loss stay eager: the head then runs on the target positions only (train/loss.py), whose count
changes every step and would otherwise recompile.

Shapes: padded batches are padded to a multiple of `data.pad_to_multiple_of` (64 when compiling),
packed rows to `data.max_seq_len`. Dynamo compiles the first length statically; at the second
length it marks the sequence dimension dynamic (automatic dynamic shapes) and compiles one graph
that serves every later length. So a run makes at most two training graphs per block variant,
whatever the data (one variant per class for Llama-style models; T5 has four). `CompileStats` reads those counts from dynamo's own counters.

Compiled code persists between runs in inductor's on-disk caches, under
$TORCHINDUCTOR_CACHE_DIR (default here: ~/.cache/tunesmith/inductor): a second run of the same
recipe skips code generation (measured: 134 s cold -> 11 s warm for a tiny Llama on a loaded
2-core machine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.strategies.fsdp import transformer_blocks  # what FSDP shards is what we compile


@dataclass
class CompileChoice:
    """The resolved `train.compile` and the reason, for the log line and summary.json."""

    enabled: bool
    reason: str

    def describe(self) -> str:
        return f"compile {'on' if self.enabled else 'off'}: {self.reason}"


def resolve(
    setting: bool | str,
    device: torch.device,
    precision: str,
    quantized: bool,
    strategy_compiles: bool,
    encoder_decoder: bool = False,
) -> CompileChoice:
    """Decide `train.compile`: true/false as given; `auto` by where compiling was measured to pay.

    auto is on for one-process runs on CUDA. On CPU it is off: compiled blocks once gave 2.2x
    with bf16 autocast (../shared/design/FACTS.md), but against today's eager path (one-buffer
    cross-entropy, reused host memory) they measured 1.02x padded and 1.07x packed in bf16
    (bench/README.md, 2026-12-04) and 1.07-1.17x in fp32, for a cold compile of 30-60 s.
    It stays off for bitsandbytes-quantized models, for strategies that do not declare
    `compiles_by_default` (multi-process runs are not measured compiled yet), and for
    encoder-decoder models (T5 makes 8 graph variants: its first block owns the position bias,
    encoder and decoder differ; 200 s of tracing for a tiny T5 even without code generation).
    """
    if setting is True:
        return CompileChoice(True, "train.compile=true")
    if setting is False:
        return CompileChoice(False, "train.compile=false")
    if quantized:
        return CompileChoice(False, "auto: bitsandbytes-quantized layers are not compiled")
    if encoder_decoder:
        return CompileChoice(False, "auto: encoder-decoder models are not compiled by default")
    if not strategy_compiles:
        return CompileChoice(False, "auto: this strategy is not measured compiled (set true)")
    if device.type == "cuda":
        return CompileChoice(True, "auto: CUDA device")
    return CompileChoice(
        False, f"auto: {device.type} with {precision} gains too little to pay (docs/speed.md)"
    )


def default_cache_dir() -> Path:
    """Inductor's on-disk cache folder: $TORCHINDUCTOR_CACHE_DIR, else under the user's cache."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tunesmith" / "inductor"


def persist_caches() -> Path:
    """Point inductor's caches at a persistent folder unless the user chose one (before compiling)."""
    folder = os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default_cache_dir()))
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder)


def compile_blocks(model: nn.Module) -> int:
    """Compile every repeated block's forward in place; returns how many (0: none found).

    The block class's own `forward` is compiled, not `nn.Module._call_impl` (what
    `module.compile()` wraps): dynamo counts its recompile limit per code object, and
    `_call_impl` is one code object for every module of the process. The limit is raised to 64
    so a process that trains several models (a sweep, the test suite), or a method that changes
    its trainable set (each set is a graph), keeps compiling instead of silently running eager.

    `TUNESMITH_COMPILE_BACKEND` picks another dynamo backend (e.g. `aot_eager`, which traces and
    partitions like inductor but generates no code: for isolating an inductor problem, and for
    tests of the graph bookkeeping that need no C++ compiler).
    """
    persist_caches()
    backend = os.environ.get("TUNESMITH_COMPILE_BACKEND", "inductor")
    blocks = transformer_blocks(model, [])
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for block in blocks:
        block.forward = torch.compile(block.forward, backend=backend)
    return len(blocks)


class eager:  # noqa: N801 (used like a function: `with eager():`)
    """Run compiled blocks eagerly inside this context (validation, generation)."""

    def __enter__(self) -> None:
        self._stance = torch.compiler.set_stance("force_eager")
        self._stance.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._stance.__exit__(*exc)


@dataclass
class CompileStats:
    """Graphs dynamo made during a run: a difference of its process-wide counters."""

    start: dict[str, float]
    code_objects: int = 1  # block classes compiled: each one's first compile is not a recompile

    @classmethod
    def begin(cls, model: nn.Module | None = None) -> CompileStats:
        kinds = {type(b) for b in transformer_blocks(model, [])} if model is not None else set()
        return cls(_snapshot(), max(len(kinds), 1))

    def result(self) -> dict[str, float]:
        """`compiled_graphs` (distinct graphs), `compiles` (frames compiled: the first compile of
        each block class plus every recompile), `recompiles`, `graph_breaks`, and
        `compile_seconds` (dynamo + backend, forward and backward graphs)."""
        now = _snapshot()
        diff = {k: now[k] - self.start.get(k, 0) for k in now}
        return {
            "compiled_graphs": int(diff["unique_graphs"]),
            "compiles": int(diff["frames"]),
            "recompiles": int(max(diff["frames"] - self.code_objects, 0)),
            "graph_breaks": int(diff["graph_breaks"]),
            "compile_seconds": round(diff["seconds"], 2),
        }


def _snapshot() -> dict[str, float]:
    from torch._dynamo.utils import compilation_time_metrics, counters

    return {
        "unique_graphs": counters["stats"]["unique_graphs"],
        "frames": counters["frames"]["ok"],
        "graph_breaks": sum(counters["graph_break"].values()),
        # Forward graphs compile in the first call, backward graphs in the first backward.
        "seconds": sum(compilation_time_metrics.get("_compile.compile_inner", []))
        + sum(compilation_time_metrics.get("backward._backward_impl", [])),
    }
