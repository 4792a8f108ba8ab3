"""The run folder: creating it safely, recording what `generate`/`export` need, the summary."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tunesmith.config import Config, save_config
from tunesmith.data.sources import entry_settings
from tunesmith.errors import UserError
from tunesmith.models.load import base_model_record

RUN_RECORD = "tunesmith.json"


def resolve_output_dir(cfg: Config) -> Path:
    """`output_dir`, defaulting to runs/<date-time> (fixed into the config so ranks agree)."""
    if cfg.output_dir is None:
        cfg.output_dir = os.environ.get("TUNESMITH_RUN_DIR") or time.strftime("runs/%Y%m%d-%H%M%S")
    return Path(cfg.output_dir)


def prepare_output_dir(cfg: Config, overwrite: bool, is_main: bool) -> Path:
    """Create the run folder, refusing to overwrite an existing non-empty one.

    With `overwrite`, only a folder that tunesmith itself made (it holds config.yaml) is removed;
    anything else is refused, so a typo like `output_dir=.` cannot delete a user's files.
    Resuming (`resume` set) reuses the folder.
    """
    out = resolve_output_dir(cfg)
    if is_main:
        if out.exists() and any(out.iterdir()) and cfg.resume is None:
            if not overwrite:
                raise UserError(
                    f"output_dir {out} exists and is not empty",
                    "pass --overwrite to replace it, choose another output_dir, or resume=auto",
                )
            if not (out / "config.yaml").is_file():
                raise UserError(
                    f"output_dir {out} was not made by tunesmith (no config.yaml); not deleting it",
                    "choose another output_dir",
                )
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    return out


def write_run_record(cfg: Config, directory: Path, encoder_decoder: bool) -> None:
    """tunesmith.json beside a saved model: the base it needs, the method and the data templates."""
    d = cfg.data
    record: dict[str, Any] = {
        "base_model": base_model_record(cfg.model),
        "encoder_decoder": encoder_decoder,
        "method": dataclasses.asdict(cfg.method),
        "data": entry_settings(d),
    }
    (directory / RUN_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")


def peak_memory_bytes(device: torch.device) -> int:
    """Peak accelerator memory (CUDA) or peak resident memory of this process (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-run table printed to the terminal."""
    rows = [
        ("steps", f"{summary['steps']}"),
        ("time", f"{summary['train_seconds']:.1f} s"),
        ("tokens/s", f"{summary['tokens_per_s']:.0f}"),
        ("peak memory", f"{summary['peak_memory_bytes'] / 2**30:.2f} GiB"),
        (
            "trainable params",
            f"{summary['trainable_params']:,} of {summary['total_params']:,} "
            f"({100 * summary['trainable_params'] / max(summary['total_params'], 1):.2f}%)",
        ),
        ("final train loss", _fmt(summary.get("final_loss"))),
        ("best val loss", _fmt(summary.get("best_val_loss"))),
        ("output", summary["output_dir"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
