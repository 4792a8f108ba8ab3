"""Metrics out of a run: metrics.jsonl always, plus TensorBoard / Aim / W&B when asked, and a plot.

Only rank 0 writes; on other ranks every call is a no-op, so callers never branch on the rank.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from tunesmith.config import Config
from tunesmith.errors import UserError


class Tracker:
    """Rank-0-aware log sink. `log_metrics(step, row)` and `info(text)` are the whole API."""

    def __init__(self, cfg: Config, output_dir: Path, is_main: bool) -> None:
        self.is_main = is_main
        self.output_dir = output_dir
        self.plot = cfg.tracking.plot
        self.rows: list[dict[str, Any]] = []
        self._file = None
        self._backends: list[Any] = []
        if not is_main:
            return
        self._file = (output_dir / "metrics.jsonl").open("a", encoding="utf-8")
        run_name = cfg.tracking.run_name or output_dir.name
        for name in cfg.tracking.backends:
            self._backends.append(_open_backend(name, cfg, output_dir, run_name))

    def info(self, text: str) -> None:
        """A human-readable line (above the progress bar)."""
        if self.is_main:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)

    def log_metrics(self, step: int, row: dict[str, Any]) -> None:
        """One JSON object per call in metrics.jsonl, mirrored to the trackers."""
        if not self.is_main:
            return
        row = {"step": step, **{k: _plain(v) for k, v in row.items()}}
        self.rows.append(row)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        for backend in self._backends:
            backend.log(step, row)

    def continue_from(self, step: int) -> None:
        """After a resume from `step`: drop the rows the interrupted run logged after its checkpoint.

        Those steps are trained again, so without this metrics.jsonl and the plot would hold them
        twice. The rows up to `step` are kept (and plotted with the new ones); a line cut short by
        the kill is dropped. The file is replaced atomically.
        """
        if not self.is_main:
            return
        path = self.output_dir / "metrics.jsonl"
        self._file.close()
        kept = [row for row in _read_rows(path) if row.get("step", 0) <= step]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
        os.replace(tmp, path)
        self.rows = kept + self.rows
        self._file = path.open("a", encoding="utf-8")

    def close(self) -> None:
        if not self.is_main:
            return
        if self._file:
            self._file.close()
        for backend in self._backends:
            backend.close()
        if self.plot:
            plot_losses(self.rows, self.output_dir / "loss.png")


def _read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a killed run may be cut short
            continue
    return rows


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class _TensorBoard:
    def __init__(self, output_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"))

    def log(self, step: int, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _Aim:
    def __init__(self, cfg: Config, output_dir: Path, run_name: str) -> None:
        import aim

        self.run = aim.Run(
            repo=cfg.tracking.aim_repo or str(output_dir / "aim"), experiment=cfg.tracking.project
        )
        self.run.name = run_name

    def log(self, step: int, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self.run.track(value, name=key, step=step)

    def close(self) -> None:
        self.run.close()


class _WandB:
    def __init__(self, cfg: Config, output_dir: Path, run_name: str) -> None:
        import wandb

        self.run = wandb.init(project=cfg.tracking.project, name=run_name, dir=str(output_dir))

    def log(self, step: int, row: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def close(self) -> None:
        self.run.finish()


# The module each backend imports: what `check_available` looks for before a run folder exists.
BACKEND_MODULES = {"tensorboard": "tensorboard", "aim": "aim", "wandb": "wandb"}


def check_available(backends: list[str]) -> None:
    """Refuse unknown or uninstalled trackers before a run starts (nothing is imported or made).

    Raises:
        UserError: the first backend that is unknown or whose library is not installed.
    """
    import importlib.util

    for name in backends:
        if name not in BACKEND_MODULES:
            raise UserError(
                f"tracking.backends: unknown tracker {name!r}",
                f"choose from {', '.join(BACKEND_MODULES)}",
            )
        module = BACKEND_MODULES[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(
                f"tracking.backends: {name} is not installed (no module {module!r})",
                f"pip install 'tunesmith[tracking]' or pip install {module}",
            )


def _open_backend(name: str, cfg: Config, output_dir: Path, run_name: str) -> Any:
    makers = {
        "tensorboard": lambda: _TensorBoard(output_dir),
        "aim": lambda: _Aim(cfg, output_dir, run_name),
        "wandb": lambda: _WandB(cfg, output_dir, run_name),
    }
    if name not in makers:
        raise UserError(
            f"tracking.backends: unknown tracker {name!r}", f"choose from {', '.join(makers)}"
        )
    try:
        return makers[name]()
    except ImportError as exc:
        raise UserError(
            f"tracking.backends: {name} is not installed ({exc.name})",
            f"pip install 'tunesmith[tracking]' or pip install {name}",
        ) from None


def plot_losses(rows: list[dict[str, Any]], path: Path) -> None:
    """Training and validation loss against step, as a PNG (skipped without matplotlib)."""
    train = [(r["step"], r["loss"]) for r in rows if isinstance(r.get("loss"), (int, float))]
    val = [(r["step"], r["val_loss"]) for r in rows if isinstance(r.get("val_loss"), (int, float))]
    if not train and not val:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per target token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
