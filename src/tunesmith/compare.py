"""`tunesmith compare RUN RUN...`: what differs between run folders and how they ended.

    tunesmith compare runs/a runs/b --plot compare.png

Prints the config keys whose values differ (from each run's config.yaml) and the final metrics
(from summary.json: steps, final and best losses, throughput, task scores), and writes one PNG with
every run's training and validation loss overlaid (from metrics.jsonl).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tunesmith.errors import UserError
from tunesmith.tracking import flatten, plot_runs

# summary.json entries shown as final metrics, in this order; task scores follow.
SUMMARY_KEYS = ("steps", "final_loss", "best_val_loss", "tokens_per_s", "train_seconds")
NOT_METRICS = {"output_dir", "world_size", "resumed_from_step", "skipped_steps", "total_params"}
# Keys that differ by construction between runs and say nothing about the recipe.
IGNORED_KEYS = {"output_dir", "resume"}


def read_run(path: Path) -> dict[str, Any]:
    """A run folder's flat config, summary and metrics rows.

    Raises:
        UserError: the folder has no config.yaml (not a run folder).
    """
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise UserError(f"{path}: not a run folder (no config.yaml)", "give folders `train` wrote")
    config = flatten(yaml.safe_load(config_path.read_text(encoding="utf-8")) or {})
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    rows = []
    metrics_path = path / "metrics.jsonl"
    if metrics_path.is_file():
        for line in metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a killed run's last line
                continue
    return {"config": config, "summary": summary, "rows": rows}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def compare_runs(paths: list[Path], plot_path: Path | None = None) -> str:
    """The markdown report (config differences, final metrics); writes the loss plot if asked.

    Runs are labelled by folder name (the parent's name too where two folders share a name).
    """
    if len(paths) < 2:
        raise UserError("compare needs at least two run folders", "tunesmith compare RUN RUN...")
    names = [p.name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.name}" for p in paths]
    runs = [read_run(p) for p in paths]
    keys = sorted(set().union(*(r["config"] for r in runs)) - IGNORED_KEYS)
    differing = [k for k in keys if len({json.dumps(r["config"].get(k)) for r in runs}) > 1]
    config_rows = [[k, *(_cell(r["config"].get(k)) for r in runs)] for k in differing]
    metric_keys = [k for k in SUMMARY_KEYS if any(k in r["summary"] for r in runs)]
    extra = {
        k
        for r in runs
        for k, v in r["summary"].items()
        if isinstance(v, (int, float)) and k not in SUMMARY_KEYS and k not in NOT_METRICS
    }
    metric_keys += sorted(extra)
    metric_rows = [[k, *(_cell(r["summary"].get(k)) for r in runs)] for k in metric_keys]
    parts = ["## Config differences", ""]
    parts.append(
        _table(["key", *names], config_rows) if config_rows else "(the configs are identical)"
    )
    parts += ["", "## Final metrics", "", _table(["metric", *names], metric_rows)]
    if plot_path is not None:
        if plot_runs(dict(zip(names, (r["rows"] for r in runs))), plot_path):
            parts += ["", f"loss plot: {plot_path}"]
        else:
            parts += ["", "no loss plot (no losses logged, or matplotlib is missing)"]
    return "\n".join(parts)
