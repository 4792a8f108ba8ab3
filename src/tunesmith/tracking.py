"""Metrics out of a run: metrics.jsonl always, plus TensorBoard / MLflow / W&B / Aim / trackio
when asked (`tracking.backends`), and a plot.

Only rank 0 writes; on other ranks every call is a no-op, so callers never branch on the rank.
Every tracker gets the resolved config as hyperparameters, the run name and every metrics.jsonl
row; by default each writes inside the run folder (tensorboard/, mlruns/, wandb/, aim/, trackio/)
so the folder stays self-contained. The tracker run ids go to trackers.json, so a resumed run
logs on into the same tracker run where the backend can reopen one (MLflow, W&B, Aim).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.config import Config
from tunesmith.errors import UserError

TRACKER_IDS = "trackers.json"  # {backend: its run id} in the run folder, for resuming


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
        if not cfg.tracking.backends:
            return
        run_name = cfg.tracking.run_name or output_dir.name
        ids_path = output_dir / TRACKER_IDS
        previous = (
            json.loads(ids_path.read_text(encoding="utf-8"))
            if cfg.resume is not None and ids_path.exists()
            else {}
        )
        hparams = flat_config(cfg)
        ids = {}
        for name in cfg.tracking.backends:
            backend = _open_backend(name, cfg, output_dir, run_name, hparams, previous.get(name))
            self._backends.append(backend)
            ids[name] = backend.run_id
        ids_path.write_text(json.dumps(ids, indent=2), encoding="utf-8")

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
        for backend in self._backends:
            backend.continue_from(step)

    def close(self) -> None:
        """Flush and close metrics.jsonl and every tracker; write loss.png if asked."""
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


# ---------------------------------------------------------------- tracker backends
#
# Each backend: opened with (cfg, output_dir, run_name, hparams, previous id), then log(step, row),
# continue_from(step), close(); `run_id` is what a resumed run passes back to reopen the same
# tracker run (None where the backend has no such thing).


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in row.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class _TensorBoard:
    run_id = None

    def __init__(self, cfg: Config, output_dir: Path, run_name: str, hparams: dict, _id) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        self._writer_class = SummaryWriter
        self.log_dir = cfg.tracking.tensorboard_dir or str(output_dir / "tensorboard")
        self.writer = SummaryWriter(log_dir=self.log_dir)
        # The hparams plugin's session start: the config shows in TensorBoard's HPARAMS tab.
        experiment, start, _ = hparams_summary(hparams, {}, hparam_domain_discrete=None)
        for summary in (experiment, start):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("run_name", run_name)

    def log(self, step: int, row: dict[str, Any]) -> None:
        for key, value in _numbers(row).items():
            self.writer.add_scalar(key, value, step)

    def continue_from(self, step: int) -> None:
        # purge_step makes readers drop the interrupted run's events after the checkpoint.
        self.writer.close()
        self.writer = self._writer_class(log_dir=self.log_dir, purge_step=step + 1)

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(
        self, cfg: Config, output_dir: Path, run_name: str, hparams: dict, run_id: str | None
    ) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        uri = cfg.tracking.mlflow_uri
        if uri is None:  # a sqlite store in the run folder (MLflow's file store is deprecated)
            (output_dir / "mlruns").mkdir(exist_ok=True)
            uri = f"sqlite:///{(output_dir / 'mlruns' / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is not None:  # a resumed run logs on into the same MLflow run
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(cfg.tracking.project)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else self.client.create_experiment(cfg.tracking.project)
        )
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in hparams.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, step: int, row: dict[str, Any]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in _numbers(row).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def continue_from(self, step: int) -> None:
        pass  # MLflow's history is append-only: repeated steps show both values

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class _WandB:
    def __init__(
        self, cfg: Config, output_dir: Path, run_name: str, hparams: dict, run_id: str | None
    ) -> None:
        import wandb

        self.run = wandb.init(
            project=cfg.tracking.project,
            name=run_name,
            dir=cfg.tracking.wandb_dir or str(output_dir),
            mode=cfg.tracking.wandb_mode,
            config=hparams,
            id=run_id,
            resume="allow" if run_id else None,
            settings=wandb.Settings(silent=True, console="off"),
            reinit="create_new",
        )
        self.run_id = self.run.id

    def log(self, step: int, row: dict[str, Any]) -> None:
        self.run.log(_numbers(row), step=step)

    def continue_from(self, step: int) -> None:
        pass  # W&B drops steps below the run's current one; the rest continue it

    def close(self) -> None:
        self.run.finish()


class _Aim:
    def __init__(
        self, cfg: Config, output_dir: Path, run_name: str, hparams: dict, run_id: str | None
    ) -> None:
        import aim

        repo = cfg.tracking.aim_repo or str(output_dir / "aim")
        # No terminal capture or system sampling thread: the run log and tqdm stay ours.
        self.run = aim.Run(
            run_hash=run_id,
            repo=repo,
            experiment=cfg.tracking.project,
            system_tracking_interval=None,
            log_system_params=False,
            capture_terminal_logs=False,
        )
        self.run.name = run_name
        self.run["hparams"] = hparams
        self.run_id = self.run.hash

    def log(self, step: int, row: dict[str, Any]) -> None:
        for key, value in _numbers(row).items():
            self.run.track(value, name=key, step=step)

    def continue_from(self, step: int) -> None:
        pass  # a re-tracked step replaces the value Aim had for it

    def close(self) -> None:
        from aim.sdk.index_manager import RepoIndexManager

        repo, run_hash = self.run.repo, self.run.hash
        self.run.close()
        # Aim 3.29 writes a run into its own chunk and leaves merging it into the repo's index
        # to `aim up`'s background indexer; until then aim.Repo lists no runs. Index it now, so
        # the folder is complete when training ends (readers, `aim runs ls`, a later resume).
        RepoIndexManager.get_index_manager(repo).index(run_hash)


class _Trackio:
    run_id = None

    def __init__(self, cfg: Config, output_dir: Path, run_name: str, hparams: dict, _id) -> None:
        # trackio fixes its store folder from TRACKIO_DIR when first imported (it has no
        # argument for it), so the variable is set before the import, and checked after it.
        store = Path(
            cfg.tracking.trackio_dir or os.environ.get("TRACKIO_DIR") or output_dir / "trackio"
        )
        os.environ["TRACKIO_DIR"] = str(store)
        import trackio
        import trackio.utils

        if trackio.utils.TRACKIO_DIR.resolve() != store.resolve():
            raise UserError(
                f"tracking.backends: trackio was imported earlier in this process with its store "
                f"at {trackio.utils.TRACKIO_DIR}, not {store}",
                "start a new process for each run that logs to trackio",
            )

        self.trackio = trackio
        self.run = trackio.init(
            project=cfg.tracking.project, name=run_name, config=hparams, resume="allow"
        )

    def log(self, step: int, row: dict[str, Any]) -> None:
        self.run.log(_numbers(row), step=step)

    def continue_from(self, step: int) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


@dataclass(frozen=True)
class Backend:
    """A tracker: its class, the module it needs and the extra that installs it."""

    opener: Callable[..., Any]
    module: str
    extra: str


BACKENDS: dict[str, Backend] = {
    "tensorboard": Backend(_TensorBoard, "tensorboard", "tracking"),
    "mlflow": Backend(_MLflow, "mlflow", "mlflow"),
    "wandb": Backend(_WandB, "wandb", "wandb"),
    "aim": Backend(_Aim, "aim", "aim"),
    "trackio": Backend(_Trackio, "trackio", "trackio"),
}


def check_available(backends: list[str]) -> None:
    """Refuse unknown or uninstalled trackers before a run starts (nothing is imported or made).

    Raises:
        UserError: the first backend that is unknown or whose library is not installed.
    """
    import importlib.util

    for name in backends:
        if name not in BACKENDS:
            raise UserError(
                f"tracking.backends: unknown tracker {name!r}", f"choose from {', '.join(BACKENDS)}"
            )
        backend = BACKENDS[name]
        if importlib.util.find_spec(backend.module) is None:
            raise UserError(
                f"tracking.backends: {name} is not installed (no module {backend.module!r})",
                f"pip install 'tunesmith[{backend.extra}]'",
            )


def _open_backend(
    name: str, cfg: Config, output_dir: Path, run_name: str, hparams: dict, run_id: str | None
) -> Any:
    check_available([name])
    return BACKENDS[name].opener(cfg, output_dir, run_name, hparams, run_id)


def flat_config(cfg: Config) -> dict[str, Any]:
    """The resolved config as dotted keys (`train.lr`): the hyperparameters every tracker shows."""
    from tunesmith.config import to_dict

    return flatten(to_dict(cfg))


def flatten(tree: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts as dotted keys; lists, empty dicts and None become JSON strings."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:
            flat[prefix] = json.dumps(value, default=str)

    walk("", tree)
    return flat


def plot_losses(rows: list[dict[str, Any]], path: Path) -> None:
    """Training and validation loss against step, as a PNG (skipped without matplotlib)."""
    plot_runs({"": rows}, path)


def plot_runs(
    runs: dict[str, list[dict[str, Any]]],
    path: Path,
    title: str | None = None,
    legend_title: str | None = None,
) -> bool:
    """Training loss (lines) and validation loss (dots) of several runs overlaid in one PNG.

    `runs` maps a label to its metrics rows (`step`, `loss`, `val_loss`); one unlabelled run is
    the run folder's loss.png. Returns False when there is nothing to plot or no matplotlib.
    """
    curves = []
    for label, rows in runs.items():
        for key, kind in (("loss", "train loss"), ("val_loss", "validation loss")):
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if points:
                curves.append((f"{label} {kind}".strip(), key, points))
    if not curves:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, key, points in curves:
        style = {"marker": "o", "markersize": 3} if key == "val_loss" else {}
        ax.plot(*zip(*points), label=label, **style)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per target token)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title=legend_title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
