"""The one training loop, for every method and every strategy.

    tunesmith train configs/quickstart.yaml train.max_steps=50 output_dir=runs/a

Read top to bottom: build the strategy, method and objective, check the recipe, load the model,
apply the method, build data, let the strategy wrap the model and build the optimizer, then step.
The loop never asks which method, strategy or objective it runs; what differs sits behind their
interfaces (methods/base.py, strategies/base.py, objectives/base.py).
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from tunesmith import compat
from tunesmith.checkpoint import check_saved_weights, ensure_not_empty, publish
from tunesmith.config import Config
from tunesmith.data.loader import DataBundle, build_dataloaders, describe_stats, real_tokens
from tunesmith.errors import UserError
from tunesmith.evaluate import metrics_after_training, validation_metrics
from tunesmith.methods import METHODS
from tunesmith.methods.base import StepContext, count_parameters, unwrap
from tunesmith.models.load import (
    check_weights_readable,
    is_encoder_decoder,
    load_config_of,
    load_model,
    load_tokenizer,
    model_context,
)
from tunesmith.objectives import OBJECTIVES
from tunesmith.objectives.base import Objective, Reference
from tunesmith.objectives.reference import build_reference
from tunesmith.objectives.sft import Sft
from tunesmith.strategies import STRATEGIES
from tunesmith.tracking import Tracker
from tunesmith.train import compile as compiling
from tunesmith.train.host_memory import configure_host_memory
from tunesmith.train.kernels import apply_kernels
from tunesmith.train.loss import token_loss
from tunesmith.train.optim import build_optimizer, build_scheduler
from tunesmith.train.resume import Checkpointer, StopSignals, die_here_for_tests
from tunesmith.train.run_dir import (
    format_summary,
    peak_memory_bytes,
    prepare_output_dir,
    write_run_record,
)


@dataclass
class RunState:
    """What the loop carries from step to step (and what a resume checkpoint restores)."""

    step: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0
    skipped_steps: int = 0  # updates skipped for a non-finite loss or gradient norm
    best_val_loss: float | None = None
    last_eval: dict[str, Any] = field(default_factory=dict)  # {"step": ..., metric: value}
    last_metrics: dict[str, float] = field(default_factory=dict)  # the objective's, last window
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def resolve_grad_accum(cfg: Config, world: int) -> int:
    """Micro-batches per optimizer step, from grad_accum or global_batch_size."""
    t = cfg.train
    if t.global_batch_size is not None:
        per_step = t.batch_size * world
        if t.global_batch_size % per_step:
            raise UserError(
                f"train.global_batch_size={t.global_batch_size} is not a multiple of "
                f"batch_size x processes = {t.batch_size} x {world}",
                f"use a multiple of {per_step}",
            )
        derived = t.global_batch_size // per_step
        if t.grad_accum is not None and t.grad_accum != derived:
            raise UserError(
                f"train.grad_accum={t.grad_accum} contradicts global_batch_size (needs {derived})",
                "set only one of them",
            )
        return derived
    return t.grad_accum or 1


@dataclass
class StepTotals:
    """One step's loss sums and counts per normalising unit, and metric (sum, count) pairs, on
    this rank: what the log window adds up. Sums are device tensors (no host synchronisation)."""

    units: list[str]
    sums: torch.Tensor  # (units,) float64
    counts: torch.Tensor  # (units,) float64, this rank's
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [sum, count]


def forward_backward(
    model: torch.nn.Module,
    micro_batches: list[dict[str, torch.Tensor]],
    strategy: Any,
    objective: Objective | None = None,
    reference: Reference | None = None,
) -> StepTotals:
    """Forward and backward over one optimizer step's micro-batches.

    Each loss sum is normalised by the count of its unit (target tokens, pairs, examples) over the
    whole step on every rank, so the gradient equals that of one big batch whatever the
    accumulation or world size (a per-micro-batch mean would weight short answers more than long
    ones, and make a pair's weight depend on how the batch was split).
    """
    objective = objective or Sft()
    per_batch = [objective.counts(b) for b in micro_batches]
    units = sorted(per_batch[0])
    local = torch.tensor(
        [float(sum(c[u] for c in per_batch)) for u in units],
        dtype=torch.float64,
        device=strategy.device,
    )
    global_counts = strategy.reduce_sum(local.clone()).clamp(min=1)
    sums = torch.zeros(len(units), dtype=torch.float64, device=strategy.device)
    metrics: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(micro_batches):
        batch = _to(batch, strategy.device)
        with strategy.micro_batch(is_last=i == len(micro_batches) - 1):
            loss_sums, batch_metrics = objective.loss(model, batch, reference)
            loss = sum(
                loss_sums[u] / global_counts[k].to(loss_sums[u].dtype) for k, u in enumerate(units)
            )
            strategy.backward(loss)
        sums += torch.stack([loss_sums[u].detach().double() for u in units])
        for name, (value, count) in batch_metrics.items():
            pair = torch.stack([value.double(), count.double().to(value.device)])
            metrics[name] = metrics[name] + pair if name in metrics else pair
    return StepTotals(units, sums, local, metrics)


def window_means(totals: torch.Tensor, units: int, names: list[str]) -> tuple[float, dict]:
    """(loss, {metric: mean}) from a reduced [unit sums, unit counts, metric (sum, count)...].

    The loss is the sum over units of sum / count (NaN when nothing was counted: a window whose
    every update was skipped has no loss to report); a metric without any count is left out.
    """
    sums, counts = totals[:units], totals[units : 2 * units]
    loss = float("nan")
    if bool((counts > 0).any()):
        loss = float((sums[counts > 0] / counts[counts > 0]).sum())
    pairs = totals[2 * units :].reshape(-1, 2)
    means = {n: float(v[0] / v[1]) for n, v in zip(names, pairs) if v[1] > 0}
    return loss, means


def train(cfg: Config, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune as `cfg` says. Returns the run summary (also written to summary.json)."""
    method = METHODS[cfg.method.name](cfg.method)
    strategy = STRATEGIES[cfg.strategy.name](cfg.strategy, cfg.train)
    objective = OBJECTIVES[cfg.objective.name](cfg.objective)
    stop = StopSignals()  # once steps run, SIGTERM/SIGINT mean: checkpoint, then exit
    try:
        return _run(cfg, method, strategy, objective, overwrite, stop)
    finally:
        stop.restore()
        strategy.close()


def _run(
    cfg: Config, method: Any, strategy: Any, objective: Any, overwrite: bool, stop: StopSignals
) -> dict[str, Any]:
    # Preflight: everything that can fail on the recipe or the data fails here, before the run
    # folder exists, so a fixed command can simply be run again.
    hf_config = load_config_of(cfg.model)
    encoder_decoder = is_encoder_decoder(cfg.model, hf_config)
    check_weights_readable(cfg.model)
    compat.preflight(cfg, method.capabilities, strategy, hf_config.model_type, encoder_decoder)
    tokenizer = load_tokenizer(cfg.model, cfg.data.chat_template)
    compiled = compiling.resolve(
        cfg.train.compile,
        strategy.device,
        cfg.train.precision,
        quantized=cfg.model.quantization != "none",
        strategy_compiles=getattr(strategy, "compiles_by_default", False),
        encoder_decoder=encoder_decoder,
    )
    data = build_dataloaders(
        cfg,
        tokenizer,
        strategy.rank,
        strategy.world_size,
        encoder_decoder,
        model_context(hf_config),
        compiled.enabled,
    )

    out = prepare_output_dir(cfg, overwrite, strategy.is_main)
    strategy.barrier()
    seed_everything(cfg.seed)
    tracker = Tracker(cfg, out, strategy.is_main)
    tracker.info(compiled.describe())
    if (line := configure_host_memory(cfg.train.host_memory, strategy.device)) is not None:
        tracker.info(line)
    for split, s in data.stats.items():
        if s.examples:
            tracker.info(describe_stats(split, s))

    with strategy.model_init_context():
        loaded = load_model(
            cfg.model,
            cfg.train.precision,
            cfg.train.activation_checkpointing,
            tokenizer,
            objective.head,
        )
    fused_loss = apply_kernels(cfg.train.kernels, loaded.model, strategy.device)
    loss_fn = functools.partial(token_loss, chunk_size=cfg.train.loss_chunk_size, fused=fused_loss)
    if hasattr(objective, "use_token_loss"):  # objectives built on the token loss use this one
        objective.use_token_loss(loss_fn)
    model = method.apply(loaded.model, tokenizer)
    # Before the strategy wraps the policy: a frozen copy is of the starting weights.
    reference = build_reference(objective, method.capabilities, model, cfg)
    trainable, total = count_parameters(model)
    tracker.info(
        f"method {method.name}: training {trainable:,} of {total:,} parameters "
        f"({100 * trainable / max(total, 1):.2f}%) on {strategy.world_size} process(es)"
    )
    accum = resolve_grad_accum(cfg, strategy.world_size)
    steps_per_epoch = max(data.train.micro_batches_per_epoch // accum, 1)
    total_steps = cfg.train.max_steps or max(data.train.steps_for_epochs(cfg.train.num_epochs), 1)
    lr = cfg.train.lr if cfg.train.lr is not None else method.default_lr

    def optimizer_for(m: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(
            method.param_groups(unwrap(m), cfg.train.weight_decay), cfg.train, lr
        )

    model, optimizer = strategy.setup(model, optimizer_for)
    eval_batch = cfg.eval.batch_size or cfg.train.batch_size
    if reference is not None:  # precomputed log-probs: one pass of the starting policy (or cache)
        reference = reference.prepare(model, data, strategy, eval_batch, tracker.info)
    scheduler = build_scheduler(optimizer, cfg.train, total_steps, steps_per_epoch)
    state = RunState()
    checkpoints = Checkpointer(
        cfg, out, method, strategy, optimizer, scheduler, data.train, state, tracker.info
    )
    # Weights, optimizer, schedule, data position and RNG: after everything that draws randoms.
    resumed_from = checkpoints.resume(model)
    if resumed_from is not None:
        tracker.continue_from(resumed_from)
    compile_stats = compiling.CompileStats.begin(unwrap(model))
    if compiled.enabled and not compiling.compile_blocks(unwrap(model)):
        tracker.info("compile: the model has no repeated blocks to compile; it runs eager")
    model.train()

    def evaluate(step: int) -> None:
        if not cfg.eval.run_validation:
            return
        # Eager: compiling no_grad graphs too would double the compile time for a few batches.
        with compiling.eager() if compiled.enabled else contextlib.nullcontext():
            metrics = validation_metrics(
                model, data, strategy, eval_batch, cfg.eval.max_batches, objective, reference
            )
        if metrics:
            state.last_eval = {"step": step, **metrics}
            if state.best_val_loss is None or metrics["val_loss"] < state.best_val_loss:
                state.best_val_loss = metrics["val_loss"]
            tracker.log_metrics(step, metrics)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            tracker.info(f"step {step}: {shown}")

    if cfg.eval.eval_before_train and resumed_from is None:
        evaluate(state.step)

    ctx = StepContext(
        step=0,
        epoch=0,
        steps_per_epoch=steps_per_epoch,
        model=model,
        optimizer=optimizer,
        strategy=strategy,
        sample_batches=lambda n: [
            _to(b, strategy.device) for b in data.train.sample(n, cfg.seed + 7919 * (ctx.step + 1))
        ],
        loss_fn=loss_fn,
        log=tracker.info,
    )
    bar = tqdm(
        total=total_steps,
        initial=state.step,
        disable=not strategy.is_main,
        unit="step",
        dynamic_ncols=True,
    )
    window: torch.Tensor | None = None  # [unit sums, unit counts, metric (sum, count)...]
    metric_names: list[str] = []
    window_tokens, window_start = 0, time.perf_counter()
    last_loss, bad_in_a_row, stopped = None, 0, False
    stop.arm()
    while state.step < total_steps:
        ctx.step, ctx.epoch, ctx.model = state.step, data.train.epoch, model
        if method.on_step(ctx):
            model = strategy.on_trainable_change(model, optimizer)
        micro_batches = [data.train.next_batch() for _ in range(accum)]
        # Every rank votes on stopping; issued now, read after the step, so it never stalls.
        # One process needs no collective (and no device round trip to read it).
        stop_votes = torch.tensor(float(stop.flag), dtype=torch.float64)
        if strategy.world_size > 1:
            stop_votes = strategy.reduce_sum(stop_votes.to(strategy.device))
        window_tokens += sum(real_tokens(b) for b in micro_batches)
        step_totals = forward_backward(model, micro_batches, strategy, objective, reference)
        step_loss = step_totals.sums.sum()
        grad_norm = strategy.step(optimizer, cfg.train.max_grad_norm)
        scheduler.step()
        state.step += 1
        bar.update(1)
        # The step's one host synchronisation. A non-finite loss makes the global gradient norm
        # non-finite too, and the strategy has then skipped the update on every rank.
        metric_names = sorted(step_totals.metrics)
        units = len(step_totals.units)
        if window is None:
            window = torch.zeros(2 * units + 2 * len(metric_names), dtype=torch.float64)
            window = window.to(strategy.device)
        if torch.isfinite(grad_norm):
            window += torch.cat(
                [step_totals.sums, step_totals.counts]
                + [step_totals.metrics[n] for n in metric_names]
            )
            bad_in_a_row = 0
        elif cfg.train.precision == "fp16-mixed" and torch.isfinite(step_loss):
            # fp16 gradients overflowed at the current loss scale: the scaler skipped the
            # update and lowered the scale, as it is designed to. Not a sign of divergence.
            state.skipped_steps += 1
        else:
            state.skipped_steps += 1
            bad_in_a_row += 1
            tracker.info(
                f"step {state.step}: non-finite loss or gradient norm; update skipped "
                f"({bad_in_a_row} in a row, {state.skipped_steps} in all)"
            )
            if bad_in_a_row > cfg.train.max_bad_steps:
                raise checkpoints.diverged(bad_in_a_row, state.step)

        if state.step % cfg.train.log_every == 0 or state.step == total_steps:
            window_mean, window_metrics = window_means(
                strategy.reduce_sum(window), units, metric_names
            )
            if window_mean == window_mean:  # not NaN
                last_loss = window_mean
            state.last_metrics = window_metrics
            elapsed = time.perf_counter() - window_start
            state.train_seconds += elapsed
            tokens = window_tokens * strategy.world_size
            state.tokens_seen += tokens
            row = {
                "loss": window_mean,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "tokens_per_s": tokens / max(elapsed, 1e-9),
                "epoch": data.train.epoch,
                **window_metrics,
            }
            tracker.log_metrics(state.step, row)
            bar.set_postfix(
                loss=f"{window_mean:.4f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s']:.0f}"
            )
            window.zero_()
            window_tokens = 0
            window_start = time.perf_counter()
        if (
            cfg.eval.eval_every
            and state.step % cfg.eval.eval_every == 0
            and state.step < total_steps
        ):
            pause = time.perf_counter()
            evaluate(state.step)
            window_start += time.perf_counter() - pause  # evaluation is not training time
        # Only checkpoints of good steps: after a skipped update the last good one is kept.
        if checkpoints.due(state.step) and state.step < total_steps and not bad_in_a_row:
            pause = time.perf_counter()
            checkpoints.save(state.step, model)
            window_start += time.perf_counter() - pause
        die_here_for_tests("step", state.step, strategy.rank)
        if stop_votes.item() > 0 and state.step < total_steps:
            if checkpoints.saved_step != state.step:
                checkpoints.save(state.step, model)
            stopped = True
            break
    bar.close()
    if stopped:
        tracker.info(checkpoints.stop_message(stop.received))
        tracker.close()
        signum = stop.received or 15  # SIGTERM's number when only another rank got a signal
        return {"steps": state.step, "stopped_by_signal": signum, "exit_code": 128 + signum}
    evaluate(state.step)
    if cfg.checkpoint.save_every and checkpoints.saved_step != state.step:
        checkpoints.save(state.step, model)

    task_scores: dict[str, float] = {}
    if cfg.checkpoint.save_model:
        save_final(cfg, method, strategy, model, tokenizer, out / "final", data)
        if cfg.eval.metrics and strategy.is_main:
            task_scores = metrics_after_training(cfg, out / "final", data.test_examples)
            tracker.log_metrics(state.step, task_scores)
            tracker.info(
                "task metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in task_scores.items())
            )
    trainable, total = count_parameters(unwrap(model))
    summary = {
        "steps": state.step,
        "train_seconds": state.train_seconds,
        "tokens_per_s": state.tokens_seen / max(state.train_seconds, 1e-9),
        "peak_memory_bytes": peak_memory_bytes(strategy.device),
        "trainable_params": trainable,
        "total_params": total,
        "final_loss": last_loss,
        "best_val_loss": state.best_val_loss,
        "output_dir": str(out),
        "world_size": strategy.world_size,
        "resumed_from_step": resumed_from,
        "skipped_steps": state.skipped_steps,
        "examples_used": data.train.used_counts(),
        **state.last_metrics,
        **{k: v for k, v in state.last_eval.items() if k != "step" and k != "val_loss"},
        "reference": None if reference is None else reference.describe(),
        "compile": {"enabled": compiled.enabled, "reason": compiled.reason}
        | (compile_stats.result() if compiled.enabled else {}),
        **task_scores,
    }
    if strategy.is_main:
        import json

        (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        tracker.info("run summary:\n" + format_summary(summary))
    tracker.close()
    return summary


def save_final(
    cfg: Config,
    method: Any,
    strategy: Any,
    model: torch.nn.Module,
    tokenizer: Any,
    final_dir: Path,
    data: DataBundle,
) -> None:
    """Write the method's natural final format into final/, atomically (tmp folder + rename).

    A resumed run replaces the final/ of its earlier attempt. Weights that would be written
    empty (parameters a sharded engine did not gather) raise EmptyStateError instead.
    """
    state_dict = strategy.full_state(model)  # a collective on sharded strategies: every rank
    if strategy.is_main:
        ensure_not_empty(state_dict, "the final model")
        tmp = final_dir.with_name(final_dir.name + ".tmp")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        unwrap(model).config.use_cache = True  # off for training only; generation wants it
        method.save(unwrap(model), tokenizer, tmp, state_dict)
        check_saved_weights(tmp)
        write_run_record(cfg, tmp, data.encoder_decoder)
        publish(tmp, final_dir)
    strategy.barrier()


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch on the device. To CUDA from pinned memory, so the copy is truly asynchronous
    (from pageable memory `non_blocking` copies synchronously)."""
    if device.type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
