"""Every tracker, for real: the quickstart trains a few steps, is resumed, and the values each
tracker logged are read back through that library's own reader and compared with metrics.jsonl.

`make test` installs every tracker library through `.[dev]`; a backend whose library is missing
is skipped.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import ROOT
from tunesmith.cli import main

KEYS = ("loss", "lr", "val_loss")


def train_quickstart(run: Path, backend: str, steps: int, *extra: str) -> None:
    overrides = [
        f"tracking.backends=[{backend}]",
        "tracking.run_name=quick",
        "tracking.plot=false",
        f"train.max_steps={steps}",
        "train.log_every=1",
        "train.warmup_steps=0",
        "eval.eval_every=2",
        "eval.max_batches=1",
        "eval.eval_before_train=false",
        "checkpoint.save_every=2",
        "checkpoint.save_model=false",
        f"output_dir={run}",
        *extra,
    ]
    assert main(["train", "configs/quickstart.yaml", *overrides]) == 0


def jsonl_history(run: Path) -> dict[str, list[tuple[int, float]]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {k: [(r["step"], r[k]) for r in rows if isinstance(r.get(k), float)] for k in KEYS}


def read_tensorboard(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    history = {k: [(e.step, e.value) for e in acc.Scalars(k)] for k in KEYS}
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    hparams = {k: v.number_value or v.string_value for k, v in start.hparams.items()}
    name = acc.Tensors("run_name/text_summary")[0].tensor_proto.string_val[0].decode()
    return history, hparams, name, 1


def read_mlflow(run: Path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tunesmith")
    runs = client.search_runs([experiment.experiment_id])
    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in KEYS}
    data = client.get_run(run_id)
    return history, data.data.params, data.info.run_name, len(runs)


def wandb_records(path: Path):
    """The protobuf records of a W&B offline .wandb file, parsed with wandb's own Record schema.

    wandb 0.31 ships no Python reader (its Go core reads the file), so the container is read here:
    a 7-byte ":W&B" header, then LevelDB's log format (32 KiB blocks of checksum, length, type
    chunks; a record split over blocks comes as FIRST, MIDDLE..., LAST).
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # block padding
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def read_wandb(run: Path):
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2  # the first run, then its resumption
    history: dict[str, list[tuple[int, float]]] = {k: [] for k in KEYS}
    hparams, names, ids = {}, set(), set()
    for path in files:
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                items = {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in record.history.item
                }
                for k in KEYS:
                    if k in items:
                        history[k].append((items["_step"], items[k]))
            elif kind == "run":
                names.add(record.run.display_name)
                ids.add(record.run.run_id)
                for item in record.run.config.update:
                    value = json.loads(item.value_json)
                    hparams[item.key] = (
                        value.get("value", value) if isinstance(value, dict) else value
                    )
    (name,) = names
    return history, hparams, name, len(ids)


def read_aim(run: Path):
    import aim

    repo = aim.Repo(str(run / "aim"))
    runs = list(repo.iter_runs())
    history = {}
    for k in KEYS:
        (metric,) = [m for m in runs[0].metrics() if m.name == k]
        steps, (values, *_) = metric.data.items_list()
        history[k] = list(zip(steps, values))
    return history, dict(runs[0]["hparams"]), runs[0].name, len(runs)


def read_trackio(run: Path):
    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs(project="tunesmith", run="quick")
    history = {k: [(r["step"], r[k]) for r in logs if k in r] for k in KEYS}
    config = SQLiteStorage.get_run_config(project="tunesmith", run="quick") or {}
    return history, config, "quick", len(SQLiteStorage.get_runs("tunesmith"))


READERS = {
    "tensorboard": ("tensorboard", read_tensorboard),
    "mlflow": ("mlflow", read_mlflow),
    "wandb": ("wandb", read_wandb),
    "aim": ("aim", read_aim),
    "trackio": ("trackio", read_trackio),
}


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(READERS))
def test_tracker_mirrors_metrics_jsonl_and_a_resume_continues_its_run(
    backend, tmp_path, monkeypatch
):
    module, read = READERS[backend]
    # Not imported here: trackio fixes its store folder when first imported (by the run).
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    monkeypatch.setenv("TRACKIO_DIR", "")  # empty is unset, for trackio as for tunesmith
    monkeypatch.chdir(ROOT)  # the quickstart's paths are relative to the repository
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train_quickstart(run, backend, 4)
    assert (run / {"mlflow": "mlruns"}.get(backend, backend)).is_dir()  # inside the run folder
    train_quickstart(run, backend, 6, "resume=auto")  # continues from the step-4 checkpoint

    history, hparams, name, n_runs = read(run)
    expected = jsonl_history(run)
    assert [s for s, _ in expected["loss"]] == [1, 2, 3, 4, 5, 6]
    for key in KEYS:
        got = sorted(dict(history[key]).items())  # a step logged twice: its last value
        assert [s for s, _ in got] == [s for s, _ in expected[key]], key
        assert [v for _, v in got] == pytest.approx([v for _, v in expected[key]], rel=1e-6)
    assert float(hparams["train.lr"]) == pytest.approx(3e-3)
    assert hparams["method.name"] == "full"
    assert name == "quick" and n_runs == 1  # the resumed run logged into the same tracker run


def test_unknown_or_missing_tracker_is_a_one_line_error_with_the_install_command(monkeypatch):
    import dataclasses

    from tunesmith.errors import UserError
    from tunesmith.tracking import BACKENDS, check_available

    with pytest.raises(UserError, match="unknown tracker 'tensorbord'"):
        check_available(["tensorbord"])
    # `.[dev]` installs every tracker; the aim entry is pointed at a module nobody has.
    absent = dataclasses.replace(BACKENDS["aim"], module="aim_is_not_installed_here")
    monkeypatch.setitem(BACKENDS, "aim", absent)
    with pytest.raises(UserError, match="aim is not installed") as info:
        check_available(["tensorboard", "aim"])
    assert info.value.hint == "pip install 'tunesmith[aim]'"
