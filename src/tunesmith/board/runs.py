"""Run folders under the board's runs directory: their status, curves and config differences.

A run folder is what `tunesmith train` writes (train/run_dir.py): config.yaml, metrics.jsonl,
summary.json, checkpoints/latest. The board adds board.log (the process's output), board.pid
and board.exit when it launched the run itself (board/jobs.py).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunesmith.errors import UserError

LOG, PID, EXIT = "board.log", "board.pid", "board.exit"
RECIPE = "recipe.yaml"
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def run_path(root: Path, name: str) -> Path:
    """The folder of run `name` under `root`; names are one plain path component, so a request
    can never reach outside the runs directory."""
    if not _NAME.match(name or ""):
        raise UserError(
            f"run name {name!r} is not allowed", "use letters, digits, '.', '_' and '-' only"
        )
    return root / name


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl; a line cut short by a running writer is skipped."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (a finished child not yet reaped)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True
    return True


def metrics_writers() -> set[str]:
    """The metrics.jsonl files some tunesmith process holds open (a run that trains keeps its
    file open): how a run started outside the board is seen to be running. Linux /proc only."""
    found: set[str] = set()
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"tunesmith" not in (entry / "cmdline").read_bytes():
                continue
            for fd in (entry / "fd").iterdir():
                target = os.readlink(fd)
                if target.endswith("metrics.jsonl"):
                    found.add(target)
        except OSError:  # the process ended, or it is another user's
            continue
    return found


def board_pid(run: Path) -> int | None:
    """The pid the board launched for this run, while that process lives."""
    try:
        pid = int((run / PID).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) and not (run / EXIT).is_file() else None


def last_error(run: Path) -> str | None:
    """The one-line error of a failed run: the CLI's `error: ...` line, else the exception line
    of the last traceback in board.log."""
    path = run / LOG
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    lines = text.splitlines()
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: ") :].strip()
    starts = [i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line]
    if starts:
        after = lines[starts[-1] + 1 :]
        return next((ln.strip() for ln in after if _EXCEPTION.match(ln)), None)
    return None


def resume_point(run: Path) -> str | None:
    """The checkpoint `resume=auto` would continue from (the `latest` pointer), if any."""
    latest = run / "checkpoints" / "latest"
    if latest.is_file():
        step = latest.read_text(encoding="utf-8").strip()
        if (run / "checkpoints" / step).is_dir():
            return step
    return None


@dataclass
class RunStatus:
    """What the run list shows for one folder."""

    name: str
    status: str  # running | finished | stopped | failed
    detail: str
    steps: int | None
    updated: float
    summary: dict[str, Any] | None
    has_model: bool

    def as_json(self) -> dict[str, Any]:
        """Plain data for the page."""
        return dict(self.__dict__)


def status_of(run: Path, writers: set[str] | None = None) -> RunStatus:
    """The status of one run folder, from the files it holds and the process that writes it
    (`writers`: from `metrics_writers`, computed here when not given)."""
    metrics = read_metrics(run)
    steps = max((int(r.get("step", 0)) for r in metrics), default=None)
    files = [run / f for f in ("metrics.jsonl", "config.yaml", LOG, "summary.json")]
    updated = max((f.stat().st_mtime for f in files if f.exists()), default=run.stat().st_mtime)
    summary = None
    if (run / "summary.json").is_file():
        try:
            summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        except ValueError:
            summary = None
    point = resume_point(run)
    exit_code = _exit_code(run)
    if board_pid(run) is not None:
        status, detail = "running", f"step {steps or 0}"
    elif summary is not None and exit_code in (None, 0):
        status, detail = "finished", f"{summary.get('steps')} steps"
    elif exit_code is None and str((run / "metrics.jsonl").resolve()) in (
        metrics_writers() if writers is None else writers
    ):
        status, detail = "running", f"step {steps or 0} (started outside the board)"
    elif point is not None and (exit_code is None or exit_code >= 128 or exit_code == 0):
        status, detail = "stopped", f"resume point {point}"
    else:
        status = "failed"
        detail = last_error(run) or (
            f"exited with code {exit_code}" if exit_code else "no summary.json and no checkpoint"
        )
        if point is not None:
            detail += f" (resume point {point})"
    return RunStatus(
        name=run.name,
        status=status,
        detail=detail,
        steps=steps,
        updated=updated,
        summary=summary,
        has_model=(run / "final").is_dir(),
    )


def _exit_code(run: Path) -> int | None:
    try:
        return int((run / EXIT).read_text().strip())
    except (OSError, ValueError):
        return None


def list_runs(root: Path) -> list[RunStatus]:
    """Every run folder directly under `root` (it holds config.yaml, metrics.jsonl or a board
    recipe), newest first."""
    if not root.is_dir():
        return []
    writers = metrics_writers()
    runs = [
        status_of(p, writers)
        for p in root.iterdir()
        if p.is_dir()
        and _NAME.match(p.name)
        and any((p / f).exists() for f in ("config.yaml", "metrics.jsonl", RECIPE))
    ]
    return sorted(runs, key=lambda r: r.updated, reverse=True)


def read_run_config(run: Path) -> dict[str, Any]:
    """The run's resolved config.yaml (or the board's recipe before training wrote it)."""
    for name in ("config.yaml", RECIPE):
        path = run / name
        if path.is_file():
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
    return {}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 1}}` -> `{"train.lr": 1}`; the free-form dicts (a model config, field
    renames) stay one value."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in ("config", "fields"):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_diff(configs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows `{key, values: {run: value}}` for the keys whose values differ between the runs."""
    flat = {name: flatten(cfg) for name, cfg in configs.items()}
    keys = sorted(set().union(*(f.keys() for f in flat.values()))) if flat else []
    rows = []
    for key in keys:
        values = {name: f.get(key) for name, f in flat.items()}
        first = next(iter(values.values()))
        if any(v != first for v in values.values()):  # by value: 0 and 0.0 are the same
            rows.append({"key": key, "values": values})
    return rows
