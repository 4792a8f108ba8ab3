"""What every benchmark script shares: per-step probes, one subprocess per system, result files.

Not a benchmark itself (the leading underscore keeps `run_all.py` from running it).

Measuring the same way in every system is the point: instead of trusting each trainer's own
throughput log, `StepProbe` hooks torch itself. Global optimizer-step hooks mark step boundaries
(every trainer ends a step with `optimizer.step()`), and a wrapper around the model class's
`forward` counts the tokens each training forward sees. So a step's time includes everything the
trainer does between two optimizer steps (data collation, logging, clipping), and tokens are
counted from the tensors the model actually receives.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
SHARED_DATA = REPO / ".." / "shared" / "data"
TINY_TOKENIZER = REPO / "examples" / "tiny" / "tokenizer"
SMOLLM2_TOKENIZER = Path.home() / ".cache" / "tunesmith" / "smollm2" / "hf"


def default_tokenizer() -> tuple[Path, str]:
    """SmolLM2's real 49k-token tokenizer when `examples/smollm2.py` has cached it, else the
    embedded 512-token one (English text then falls back to bytes: more tokens per example)."""
    if (SMOLLM2_TOKENIZER / "tokenizer.json").exists():
        return SMOLLM2_TOKENIZER, "SmolLM2-135M-Instruct tokenizer"
    return TINY_TOKENIZER, "examples/tiny tokenizer (run examples/smollm2.py for the real one)"


@dataclass
class StepRecord:
    wall_s: float  # wall time since the previous optimizer step ended
    cpu_s: float  # CPU time of the whole process (all threads) over the same interval
    forward_s: float  # of which inside the model's forward
    optimizer_s: float  # of which inside optimizer.step()
    real_tokens: int  # non-padding input tokens the model saw in this step
    padded_tokens: int  # all input positions, padding included


@dataclass
class StepProbe:
    """Per-optimizer-step timings and token counts, identical for every trainer."""

    steps: list[StepRecord] = field(default_factory=list)
    sync_cuda: bool = False  # wait for the GPU at step boundaries (its work is asynchronous)
    _last_wall: float | None = None
    _last_cpu: float = 0.0
    _opt_start: float = 0.0
    _forward_s: float = 0.0
    _real: int = 0
    _padded: int = 0
    _depth: int = 0

    def install(self, model_classes: list[type]) -> None:
        """Hook optimizer steps globally and wrap `forward` of the given model classes.

        Pass the causal-LM class and its backbone class: trainers that compute the loss from the
        backbone's hidden states (TRL's fused LM head) never call the causal-LM forward. Tokens
        are counted and time is taken in the outermost wrapped call only.
        """
        from torch.optim.optimizer import (
            register_optimizer_step_post_hook,
            register_optimizer_step_pre_hook,
        )

        register_optimizer_step_pre_hook(self._before_step)
        register_optimizer_step_post_hook(self._after_step)
        for cls in model_classes:
            cls.forward = self._wrap_forward(cls.forward)

    def start(self) -> None:
        """Mark the start of training (the first step's time is measured from here)."""
        self._last_wall, self._last_cpu = time.perf_counter(), time.process_time()
        self._forward_s, self._real, self._padded = 0.0, 0, 0

    def _wrap_forward(self, original: Any) -> Any:
        probe = self

        @functools.wraps(original)
        def forward(module: Any, *args: Any, **kwargs: Any) -> Any:
            if not module.training or probe._depth:
                return original(module, *args, **kwargs)
            if probe._last_wall is None:
                probe.start()
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None and kwargs.get("inputs_embeds") is not None:
                ids = kwargs["inputs_embeds"][..., 0]  # prompt tuning feeds embeddings
            if ids is not None:
                real, padded = count_tokens(
                    ids, kwargs.get("attention_mask"), kwargs.get("position_ids")
                )
                probe._real += real
                probe._padded += padded
            begin = time.perf_counter()
            probe._depth += 1
            try:
                return original(module, *args, **kwargs)
            finally:
                probe._depth -= 1
                probe._forward_s += time.perf_counter() - begin

        return forward

    def _sync(self) -> None:
        if self.sync_cuda:
            import torch

            torch.cuda.synchronize()

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._sync()
        self._opt_start = time.perf_counter()

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._sync()
        now, cpu = time.perf_counter(), time.process_time()
        if self._last_wall is None:
            self._last_wall, self._last_cpu = self._opt_start, cpu
        self.steps.append(
            StepRecord(
                wall_s=now - self._last_wall,
                cpu_s=cpu - self._last_cpu,
                forward_s=self._forward_s,
                optimizer_s=now - self._opt_start,
                real_tokens=self._real,
                padded_tokens=self._padded,
            )
        )
        self._last_wall, self._last_cpu = now, cpu
        self._forward_s, self._real, self._padded = 0.0, 0, 0

    def summary(self, warmup: int) -> dict[str, Any]:
        """Median step time and real tokens/s over the steps after the first `warmup` ones."""
        timed = self.steps[warmup:] or self.steps
        wall = sum(s.wall_s for s in timed)
        cpu = sum(s.cpu_s for s in timed)
        real = sum(s.real_tokens for s in timed)
        padded = sum(s.padded_tokens for s in timed)
        return {
            "steps": len(self.steps),
            "timed_steps": len(timed),
            "median_step_s": statistics.median(s.wall_s for s in timed),
            "median_forward_s": statistics.median(s.forward_s for s in timed),
            "median_optimizer_s": statistics.median(s.optimizer_s for s in timed),
            "real_tokens_per_s": real / max(wall, 1e-9),
            "real_tokens_per_cpu_s": real / max(cpu, 1e-9),
            "real_tokens_per_step": real / len(timed),
            "padding_fraction": 1 - real / max(padded, 1),
            "first_step_s": self.steps[0].wall_s if self.steps else None,
            "per_step": [asdict(s) for s in self.steps],
        }


def count_tokens(ids: Any, attention_mask: Any, position_ids: Any) -> tuple[int, int]:
    """(real, all) input positions of one forward.

    Padded batches carry an attention mask. Packed rows carry none: a padding-free row (one long
    sequence) is all real; a packed row padded at its end has position ids that are 0 from the last
    example's end on, so a trailing run of two or more zeros is padding.
    """
    padded = int(ids.numel())
    if attention_mask is not None and attention_mask.dim() == 2:
        return int(attention_mask.sum()), padded
    if position_ids is None:
        return padded, padded
    pad = 0
    for row in position_ids.reshape(-1, position_ids.shape[-1]).tolist():
        run = 0
        for p in reversed(row):
            if p != 0:
                break
            run += 1
        pad += run if run >= 2 else 0
    return padded - pad, padded


def rss_bytes() -> int:
    """Current resident memory of this process (Linux; 0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """What a reader needs to interpret timings: CPU count, threads, load, versions."""
    import torch

    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": load_average(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for name in ("transformers", "trl", "peft", "accelerate"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def run_isolated(script: Path, args: list[str], timeout: float, threads: int) -> dict[str, Any]:
    """Run `script --worker ... --out FILE` in a fresh interpreter and return what it wrote.

    One process per system: peak RSS is then that system's own, and no allocator or thread state
    leaks from one system into the next. `threads` sets OMP_NUM_THREADS: on a shared machine one
    thread is the stable choice, because a team of two stalls whenever the other process holding
    a core deschedules one of its threads (15x slower at load 8 on 2 cores, measured).
    Failures come back as {"error": ...} rows.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tunesmith-bench-") as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p
        )
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["OMP_NUM_THREADS"] = str(threads)
        cmd = [sys.executable, str(script), *args, "--out", str(out), "--tmp", tmp]
        started = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        if proc.returncode != 0 or not out.exists():
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return {
                "error": f"exit {proc.returncode}: {lines[-1] if lines else ''}",
                "log": lines[-40:],
            }
        result = json.loads(out.read_text())
        result["process_s"] = time.perf_counter() - started
        return result


def write_results(name: str, payload: dict[str, Any], markdown: str) -> None:
    """bench/results/<name>.json and .md."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS_DIR / f"{name}.md").write_text(markdown)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; floats as given (format them before)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
