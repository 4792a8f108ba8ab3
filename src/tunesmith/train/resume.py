"""Stopping and continuing a run: periodic and signal checkpoints, resume, numerics stops.

    tunesmith train cfg.yaml checkpoint.save_every=100    # checkpoints/step-100, step-200, ...
    kill -TERM <pid>                                     # checkpoint at the next step, then exit
    tunesmith train cfg.yaml resume=auto                  # continue at the exact next example

The loop calls a `Checkpointer` (save, resume) and reads `StopSignals`; the folder format lives
in tunesmith/checkpoint.py. Every rank calls every method: saving and resuming are collectives.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from tunesmith.checkpoint import (
    CHECKPOINTS,
    CONFIG_FILE,
    LATEST,
    METHOD_STATE,
    OPTIMIZER_FILE,
    SCHEDULER_FILE,
    TRAINER_STATE,
    Log,
    choose_checkpoint,
    load_pickled,
    prune,
    publish,
    rank_file,
    read_manifest,
    resume_state_names,
    write_durably,
    write_manifest,
)
from tunesmith.config import Config, save_config, to_dict
from tunesmith.errors import UserError

KILL_ENV = "TUNESMITH_TEST_KILL_AT"
# Config keys a resumed run may change without the resume being any less exact.
_FREE_TO_CHANGE = ("output_dir", "resume", "train.max_steps", "train.num_epochs", "train.log_every")
_FREE_SECTIONS = ("checkpoint.", "eval.", "tracking.")


def config_changes(saved: dict, current: dict) -> list[str]:
    """`key: old -> new` for config values that differ and matter for an exact resume."""

    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict) and k not in ("config", "fields"):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    old, new = flat(saved), flat(current)
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
        and k not in _FREE_TO_CHANGE
        and not k.startswith(_FREE_SECTIONS)
    ]


def convert_position(saved: dict[str, int], batch_size: int, world: int) -> tuple[dict, str]:
    """The loader position for another batch geometry: the same count of examples into the epoch.

    Returns (position state, note); the note is empty when nothing changed.
    """
    epoch, position = int(saved["epoch"]), int(saved["position"])
    old_b, old_w = int(saved["batch_size"]), int(saved["world_size"])
    if (old_b, old_w) == (batch_size, world):
        return {"epoch": epoch, "position": position}, ""
    consumed = position * old_b * old_w
    new_position, rest = divmod(consumed, batch_size * world)
    note = (
        f"data position {position} micro-batches of {old_b} x {old_w} process(es) = {consumed} "
        f"examples into epoch {epoch} -> {new_position} micro-batches of {batch_size} x {world}"
    )
    if rest:
        note += f" ({rest} examples of the interrupted global batch are seen again)"
    return {"epoch": epoch, "position": new_position}, note


def rng_state() -> dict[str, Any]:
    """This process's random generators: python, torch CPU, and every CUDA device."""
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def die_here_for_tests(point: str, step: int, rank: int = 0) -> None:
    """Signal this process where the test harness asks, so kills land at a known point.

    `TUNESMITH_TEST_KILL_AT=point:step[:SIGNAL[:rank]]`, e.g. `step:5` (SIGKILL once step 5 and
    its checkpoint are done), `checkpoint:4` (SIGKILL with step 4's checkpoint half written),
    `step:3:SIGTERM:1` (SIGTERM to rank 1 after step 3). Unset in real runs: a no-op.
    """
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] != point or int(parts[1]) != step:
        return
    if len(parts) > 3 and int(parts[3]) != rank:
        return
    os.kill(os.getpid(), getattr(signal, parts[2]) if len(parts) > 2 else signal.SIGKILL)


class StopSignals:
    """SIGTERM and SIGINT become a request to checkpoint and stop at the next step boundary.

    A second SIGINT stops at once (KeyboardInterrupt), for a user who means it. `arm()` installs
    the handlers when the step loop starts (before that, Ctrl-C interrupts loading as usual),
    from the main thread only; `restore()` puts the previous handlers back.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def arm(self) -> None:
        if threading.current_thread() is threading.main_thread() and not self._previous:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    @property
    def flag(self) -> float:
        """1.0 once a stop signal arrived in this process (summed over ranks by the loop)."""
        return 0.0 if self.received is None else 1.0

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Checkpointer:
    """Writes a run's resume checkpoints and restores one; every rank calls every method.

    Holds the objects a checkpoint captures (optimizer, scheduler, loader, RunState); the model
    is passed per call because a strategy may re-wrap it during training.
    """

    def __init__(
        self,
        cfg: Config,
        output_dir: Path,
        method: Any,
        strategy: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        batches: Any,
        state: Any,
        log: Log,
    ) -> None:
        self.cfg, self.method, self.strategy = cfg, method, strategy
        self.optimizer, self.scheduler, self.batches, self.state = (
            optimizer,
            scheduler,
            batches,
            state,
        )
        self.root = output_dir / CHECKPOINTS
        self.log = log
        self.saved_step: int | None = None
        self.last_saved: Path | None = None

    def due(self, step: int) -> bool:
        """True when `checkpoint.save_every` asks for a checkpoint after `step`."""
        every = self.cfg.checkpoint.save_every
        return every > 0 and step % every == 0

    def save(self, step: int, model: nn.Module) -> Path:
        """Write `step-<step>` atomically, then prune old ones. Returns its folder."""
        started = time.perf_counter()
        strategy, is_main = self.strategy, self.strategy.is_main
        final = self.root / f"step-{step}"
        tmp = self.root / f".tmp-step-{step}"
        if is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        strategy.barrier()
        optimizer = self.optimizer if self.cfg.checkpoint.save_optimizer else None
        names = resume_state_names(self.method, model)
        strategy.save_resume(tmp, model, optimizer, names=names)
        rank_state = {"rng": rng_state(), "data": self.batches.state_dict()}
        torch.save(rank_state, tmp / rank_file(strategy.rank))
        die_here_for_tests("checkpoint", step, strategy.rank)
        strategy.barrier()
        if is_main:
            self._write_run_files(tmp, step)
            publish(tmp, final)
            write_durably(self.root / LATEST, final.name + "\n")
            c = self.cfg.checkpoint
            for path in prune(self.root, c.keep_last, c.best_metric, c.best_mode):
                self.log(f"removed old checkpoint {path.name}")
        strategy.barrier()
        self.saved_step, self.last_saved = step, final
        self.log(f"checkpoint {final} written in {time.perf_counter() - started:.1f} s")
        return final

    def _write_run_files(self, tmp: Path, step: int) -> None:
        torch.save(self.scheduler.state_dict(), tmp / SCHEDULER_FILE)
        trainer_state = {
            "run_state": dataclasses.asdict(self.state),
            "data": {
                **self.batches.state_dict(),
                "batch_size": self.cfg.train.batch_size,
                "world_size": self.strategy.world_size,
            },
        }
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2), encoding="utf-8")
        save_config(self.cfg, tmp / CONFIG_FILE)
        # A method's own training-time state (Green Trainer's current selection), if it has any;
        # methods decide identically on every rank, so rank 0's copy serves all.
        if hasattr(self.method, "state_dict"):
            torch.save(self.method.state_dict(), tmp / METHOD_STATE)
        last_eval = self.state.last_eval
        metrics = {k: v for k, v in last_eval.items() if k != "step"}
        info = {
            "step": step,
            "world_size": self.strategy.world_size,
            "strategy": self.cfg.strategy.name,
            "method": self.cfg.method.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            # Only a validation at this very step describes these weights.
            "metrics": metrics if last_eval.get("step") == step else {},
        }
        write_manifest(tmp, info)

    def resume(self, model: nn.Module) -> int | None:
        """Restore the checkpoint `cfg.resume` names. Returns its step, or None to start fresh.

        Restores model (or adapter) weights, optimizer, schedule, RunState, data position and this
        rank's RNG. Logs what changed since the checkpoint (config, process count).
        """
        if self.cfg.resume is None:
            return None
        started = time.perf_counter()
        directory = self._agree_on_checkpoint()
        if directory is None:
            self.log(f"resume=auto: no checkpoint in {self.root}; starting from step 0")
            return None
        manifest = read_manifest(directory)
        if manifest.get("method") != self.cfg.method.name:
            raise UserError(
                f"{directory} was written by method {manifest.get('method')!r}, this run uses "
                f"{self.cfg.method.name!r}",
                "resume with the method that wrote the checkpoint",
            )
        saved_cfg = yaml.safe_load((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        changes = config_changes(saved_cfg, to_dict(self.cfg))
        if changes:
            self.log(f"config changed since {directory.name}: " + "; ".join(changes))
        self.strategy.load_resume(directory, model, self.optimizer)
        if not (directory / OPTIMIZER_FILE).is_file() and manifest.get("strategy") in (
            "single",
            "ddp",
        ):
            self.log("warning: the checkpoint has no optimizer state; the optimizer restarts")
        self.scheduler.load_state_dict(load_pickled(directory / SCHEDULER_FILE))
        if (directory / METHOD_STATE).is_file() and hasattr(self.method, "load_state_dict"):
            self.method.load_state_dict(load_pickled(directory / METHOD_STATE))
        trainer = json.loads((directory / TRAINER_STATE).read_text(encoding="utf-8"))
        for key, value in trainer["run_state"].items():
            if hasattr(self.state, key):
                setattr(self.state, key, value)
        world = self.strategy.world_size
        position, note = convert_position(trainer["data"], self.cfg.train.batch_size, world)
        self.batches.load_state_dict(position)
        rank_path = directory / rank_file(self.strategy.rank)
        if rank_path.is_file():
            set_rng_state(load_pickled(rank_path)["rng"])
        if manifest["world_size"] != world:
            self.log(
                f"{directory.name} was written by {manifest['world_size']} process(es) with "
                f"strategy {manifest['strategy']}; resuming on {world} with "
                f"{self.cfg.strategy.name}: {note or 'same data position'}; random generators "
                f"restored for ranks below {min(world, manifest['world_size'])}"
            )
        elif note:
            self.log(f"batch size changed: {note}")
        if self.strategy.is_main:
            for leftover in self.root.glob(".tmp-step-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        self.saved_step, self.last_saved = manifest["step"], directory
        self.log(
            f"resumed from {directory} at step {manifest['step']} (epoch {position['epoch']}, "
            f"micro-batch {position['position']} of it) in {time.perf_counter() - started:.1f} s"
        )
        return int(manifest["step"])

    def _agree_on_checkpoint(self) -> Path | None:
        """Rank 0 verifies and chooses; every rank receives its choice (no N-fold hashing)."""
        text, error = "", None
        if self.strategy.is_main:
            try:
                chosen = choose_checkpoint(self.cfg.resume, self.root.parent, self.log)
                text = str(chosen) if chosen else ""
            except Exception as exc:  # tell the other ranks before raising, or they would hang
                text, error = "\0error", exc
        text = _broadcast_text(self.strategy, text)
        if error is not None:
            raise error
        if text == "\0error":
            raise UserError("rank 0 found no usable checkpoint to resume from", "see its message")
        return Path(text) if text else None

    def stop_message(self, signum: int | None) -> str:
        """What to tell the user after a signal stopped the run at a checkpoint."""
        name = signal.Signals(signum).name if signum else "a stop signal on another rank"
        return (
            f"stopped by {name} at step {self.saved_step}; checkpoint {self.last_saved}. "
            f"To continue, run the same command with resume=auto "
            f"(output_dir={self.root.parent})"
        )

    def diverged(self, bad_steps: int, step: int) -> UserError:
        """The error that ends a run after too many non-finite steps in a row."""
        where = (
            f"the last good checkpoint is {self.last_saved}"
            if self.last_saved
            else "no checkpoint was written (set checkpoint.save_every)"
        )
        return UserError(
            f"training diverged: {bad_steps} steps in a row with a non-finite loss or gradient "
            f"norm (up to step {step}, train.max_bad_steps={self.cfg.train.max_bad_steps}); {where}",
            "lower train.lr, raise warmup_steps, or use fp32/bf16; resume=auto restarts from the "
            "last good checkpoint",
        )


def _broadcast_text(strategy: Any, text: str) -> str:
    """Rank 0's string on every rank (two small broadcasts)."""
    if strategy.world_size == 1:
        return text
    data = torch.tensor(list(text.encode()), dtype=torch.uint8)
    length = strategy.broadcast(torch.tensor([data.numel()], device=strategy.device), src=0)
    buffer = torch.zeros(int(length.item()), dtype=torch.uint8, device=strategy.device)
    if strategy.is_main:
        buffer.copy_(data)
    return bytes(strategy.broadcast(buffer, src=0).cpu().tolist()).decode()
