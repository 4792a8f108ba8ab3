"""`tunesmith compare`: two tiny runs that differ in the learning rate, compared for real."""

from __future__ import annotations

import json

from conftest import run_overrides
from tunesmith.cli import main


def test_compare_shows_the_differing_key_final_metrics_and_writes_the_plot(tmp_path, capsys):
    runs = []
    for lr in ("3e-3", "1e-3"):
        out = tmp_path / f"lr{lr}"
        overrides = run_overrides(
            tmp_path, steps=3, **{"train.lr": lr, "output_dir": out, "eval.eval_every": 1}
        )
        assert main(["train", "--", *overrides, "checkpoint.save_model=false"]) == 0
        runs.append(out)
    capsys.readouterr()
    png = tmp_path / "compare.png"
    assert main(["compare", *map(str, runs), "--plot", str(png)]) == 0
    report = capsys.readouterr().out
    config_part, metrics_part = report.split("## Final metrics")
    diff_rows = [line for line in config_part.splitlines() if line.startswith("| train.")]
    assert diff_rows == ["| train.lr | 0.003 | 0.001 |"]  # the only recipe difference
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    final = next(line for line in metrics_part.splitlines() if line.startswith("| final_loss"))
    assert (
        final == "| final_loss | " + " | ".join(f"{s['final_loss']:.4g}" for s in summaries) + " |"
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
