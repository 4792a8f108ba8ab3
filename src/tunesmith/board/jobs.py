"""Starting, stopping and resuming runs from the board, as separate processes.

Launch writes the form's recipe into a new run folder and starts

    python -m tunesmith train <run>/recipe.yaml output_dir=<run> resume=auto [--nproc-per-node N]

in its own session, with its output in <run>/board.log: closing the page (or the board) does not
stop it. `resume=auto` starts fresh in a folder without checkpoints and continues from the newest
one otherwise, so Resume is the same command. Stop sends SIGTERM: the run checkpoints at the next
step and exits (train/resume.py); under torchrun the launcher passes the signal to every rank.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from tunesmith.board.runs import EXIT, LOG, PID, RECIPE, board_pid, run_path
from tunesmith.errors import UserError


class Jobs:
    """The processes this board started; a watcher thread reaps each one and records its exit
    code in board.exit (a process the board no longer watches is reaped by init)."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.root = root
        self.workdir = workdir  # recipes name data and tokenizers relative to it, as on the CLI
        self._lock = threading.Lock()

    def launch(self, name: str, recipe: dict, nproc: int = 1) -> Path:
        """Create run folder `name`, write the recipe and start training it."""
        run = run_path(self.root, name)
        if run.exists():
            raise UserError(f"run {name!r} already exists", "choose another name, or Resume it")
        if nproc < 1:
            raise UserError("processes per node must be at least 1")
        run.mkdir(parents=True)
        (run / RECIPE).write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        self._start(run, nproc)
        return run

    def resume(self, name: str, nproc: int = 1) -> None:
        """Continue a stopped (or failed) run from its newest checkpoint."""
        run = run_path(self.root, name)
        if board_pid(run) is not None:
            raise UserError(f"run {name!r} is still running")
        if not (run / RECIPE).is_file() and not (run / "config.yaml").is_file():
            raise UserError(f"run {name!r} has no recipe.yaml or config.yaml to resume")
        if (run / "summary.json").is_file():
            raise UserError(f"run {name!r} has finished", "launch a new run to train further")
        self._start(run, nproc)

    def stop(self, name: str) -> None:
        """SIGTERM to the run's process: it writes a checkpoint and exits."""
        run = run_path(self.root, name)
        pid = board_pid(run)
        if pid is None:
            raise UserError(f"run {name!r} is not running (or was not started by the board)")
        os.kill(pid, signal.SIGTERM)

    def _start(self, run: Path, nproc: int) -> None:
        recipe = run / RECIPE if (run / RECIPE).is_file() else run / "config.yaml"
        command = [
            sys.executable,
            "-m",
            "tunesmith",
            "train",
            str(recipe.resolve()),
            f"output_dir={run.resolve()}",
            "resume=auto",
        ]
        if nproc > 1:
            command += ["--nproc-per-node", str(nproc)]
        with self._lock:
            (run / EXIT).unlink(missing_ok=True)
            log = (run / LOG).open("a", encoding="utf-8")
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            process = subprocess.Popen(
                command,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # not in the board's process group: Ctrl-C spares it
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            log.close()
            (run / PID).write_text(str(process.pid), encoding="utf-8")
        threading.Thread(target=self._watch, args=(process, run), daemon=True).start()

    @staticmethod
    def _watch(process: subprocess.Popen, run: Path) -> None:
        code = process.wait()
        (run / EXIT).write_text(str(code if code >= 0 else 128 - code), encoding="utf-8")
