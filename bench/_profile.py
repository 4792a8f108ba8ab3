"""Where a training step's time goes: torch profiler events grouped into what a user can act on.

    with StepBreakdown(vocab_size, skip_steps=3, steps=4) as breakdown:
        train()                       # any trainer: steps are counted by optimizer-step hooks
    breakdown.result()                # {"step_s": ..., "share": {"attention": 0.12, ...}}

Each profiler event's *self* time goes to one category: ops run under `Optimizer.step` are
the optimizer and ops under the data loader's `next_batch` are data, whatever they are; then
attention (SDPA forward and backward), the LM head's matmuls (a dimension equal to the
vocabulary), the other matmuls, the loss (log-softmax / NLL / cross-entropy), inductor's fused
kernels (compiled runs; their names are recorded with `cpp.enable_kernel_profile`) and the
remaining aten ops. What no op accounts for (Python in the model and the loop, dispatch,
autograd bookkeeping, dynamo guards) is the step's wall time minus all of that: "python &
framework". Self times are measured on the calling thread, which on CPU also runs backward.
"""

from __future__ import annotations

import time
from typing import Any

MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_int_mm"}
LOSS = ("cross_entropy", "log_softmax", "nll_loss", "logsumexp")
ATTENTION = ("scaled_dot_product", "flash_attention", "efficient_attention")
DATA_SCOPE = "tunesmith.data.next_batch"
LOSS_SCOPE = "tunesmith.cross_entropy"  # train/loss.py's PROFILE_SCOPE
CATEGORIES = [
    "attention",
    "LM head matmul",
    "other matmul",
    "loss",
    "optimizer",
    "data",
    "inductor fused kernels",
    "other aten ops",
    "python & framework",
]


def category(event: Any, vocab: int) -> str | None:
    """The category of one event's self time (None: a scope, counted as python & framework)."""
    parent = event
    while parent is not None:
        if parent.name.startswith("Optimizer.step"):
            return "optimizer"
        if parent.name == DATA_SCOPE:
            return "data"
        if parent.name == LOSS_SCOPE:  # tunesmith's cross-entropy (its ops are plain aten ops)
            return "loss"
        parent = parent.cpu_parent
    name = event.name
    if any(key in name for key in ATTENTION):
        return "attention"
    if name in MATMULS:
        head = any(vocab in shape for shape in event.input_shapes or [] if shape)
        return "LM head matmul" if head else "other matmul"
    if any(key in name for key in LOSS):
        return "loss"
    if "cpp_fused" in name or "triton_" in name:
        return "inductor fused kernels"
    if name.startswith("aten::"):
        return "other aten ops"
    return None


class StepBreakdown:
    """Profile `steps` optimizer steps after `skip_steps` (compiles, caches) of whatever trains."""

    def __init__(self, vocab: int, skip_steps: int, steps: int) -> None:
        self.vocab, self.skip_steps, self.steps = vocab, skip_steps, steps
        self._profiler: Any = None
        self._hooks: list[Any] = []
        self._step_ends: list[float] = []  # wall clock at each optimizer step's end

    def __enter__(self) -> StepBreakdown:
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook
        from torch.profiler import ProfilerActivity, profile, schedule

        torch._inductor.config.cpp.enable_kernel_profile = True  # name the fused kernels
        self._scope_the_data_loader()
        self._profiler = profile(
            activities=[ProfilerActivity.CPU],
            schedule=schedule(wait=self.skip_steps, warmup=1, active=self.steps, repeat=1),
            record_shapes=True,  # the LM head is told apart by its vocabulary dimension
        )
        self._profiler.__enter__()
        self._hooks.append(register_optimizer_step_post_hook(self._step_ended))
        return self

    def _step_ended(self, *_: Any) -> None:
        self._step_ends.append(time.perf_counter())
        self._profiler.step()

    def __exit__(self, *exc: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._profiler.__exit__(*exc)

    @staticmethod
    def _scope_the_data_loader() -> None:
        from torch.profiler import record_function

        from tunesmith.data.loader import TrainBatches

        original = TrainBatches.next_batch

        def next_batch(self: TrainBatches) -> Any:
            with record_function(DATA_SCOPE):
                return original(self)

        TrainBatches.next_batch = next_batch  # type: ignore[method-assign]

    def result(self) -> dict[str, Any]:
        """Seconds per step by category and their shares of the profiled steps' wall time."""
        # Recording starts at the end of step skip_steps + 1 (the profiler's warm-up step) and
        # stops at the end of `steps` more.
        first = self.skip_steps  # index of the warm-up step's end
        ends = self._step_ends[first : first + self.steps + 1]
        profiled = len(ends) - 1
        if profiled < 1:
            raise RuntimeError(f"training ran {len(self._step_ends)} steps: too few to profile")
        wall = ends[-1] - ends[0]
        seconds = dict.fromkeys(CATEGORIES, 0.0)
        other_ops: dict[str, float] = {}  # "other aten ops" by op: what the largest bucket holds
        for event in self._profiler.events():
            name = category(event, self.vocab)
            if name is not None:
                seconds[name] += event.self_cpu_time_total / 1e6
            if name == "other aten ops":
                other_ops[event.name] = other_ops.get(event.name, 0.0) + event.self_cpu_time_total
        seconds["python & framework"] = max(0.0, wall - sum(seconds.values()))
        per_step = {k: v / profiled for k, v in seconds.items()}
        total = sum(per_step.values())
        return {
            "profiled_steps": profiled,
            "step_s": wall / profiled,
            "seconds_per_step": per_step,
            "share": {k: v / total for k, v in per_step.items()},
            "top_other_aten_ops": {
                op: us / 1e6 / profiled
                for op, us in sorted(other_ops.items(), key=lambda kv: -kv[1])[:8]
            },
        }
