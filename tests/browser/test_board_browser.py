"""`tunesmith board` in a real browser: headless Chromium (Debian's package) driven by Playwright.

The board runs as its own process over a runs folder the tests make with real tiny runs; the
page is clicked like a user would: the run list and a curve, a typo in the form, a launched
quickstart run that finishes, a run stopped and resumed, the data preview, the Try tab.
Set TUNESMITH_BOARD_SCREENSHOTS=docs/img to also write the screenshots docs/board.md shows.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import NUMBERS, ROOT, run_overrides
from tunesmith.board.form import recipe_dict
from tunesmith.board.jobs import Jobs
from tunesmith.board.runs import read_metrics
from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.errors import UserError

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="chromium is not installed"),
]
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = os.environ.get("TUNESMITH_BOARD_SCREENSHOTS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Two finished tiny runs that differ in their learning rate, and one the board launched
    that failed (its data file does not exist)."""
    root = tmp_path_factory.mktemp("runs")
    for name, lr in (("alpha", 3e-3), ("beta", 1e-3)):
        overrides = run_overrides(root, steps=8, **{"train.lr": lr, "output_dir": root / name})
        assert main(["train", "--", *overrides]) == 0
    cfg = load_config(None, run_overrides(root, steps=2, **{"data.train": "no/such.jsonl"}))
    failed = Jobs(root, ROOT).launch("broken", recipe_dict(cfg))
    for _ in range(240):
        if (failed / "board.exit").is_file():
            break
        time.sleep(0.25)
    return root


@pytest.fixture(scope="module")
def board(runs_dir):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tunesmith", "board", "--runs", str(runs_dir), "--port", str(port)]
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/api/runs", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    yield url
    server.send_signal(signal.SIGINT)
    server.wait(timeout=20)
    for run in runs_dir.iterdir():  # runs the board launched and the tests left running
        pid_file = run / "board.pid"
        if pid_file.is_file() and not (run / "board.exit").is_file():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.fixture(scope="module")
def page(board):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        tab = browser.new_page(viewport={"width": 1500, "height": 1000})
        tab.set_default_timeout(30_000)
        tab.goto(board)
        tab.wait_for_selector("body[data-ready='1']")
        yield tab
        browser.close()


def shot(page, name: str, full_page: bool = True) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"board-{name}.png"), full_page=full_page)


def row(page, name: str):
    return page.locator(f"#runs-table tr[data-run='{name}']")


def wait_status(page, name: str, status: str, timeout: float = 120) -> None:
    row(page, name).locator(f".status.{status}").wait_for(timeout=timeout * 1000)


def open_tab(page, tab: str) -> None:
    page.click(f"#tab-{tab}")


def test_run_list_curves_and_config_diff(page, runs_dir):
    open_tab(page, "runs")
    wait_status(page, "alpha", "finished", 10)
    wait_status(page, "beta", "finished", 10)
    wait_status(page, "broken", "failed", 10)
    assert "no/such.jsonl" in row(page, "broken").locator(".detail").inner_text()
    for name, wanted in (("broken", False), ("alpha", True), ("beta", True)):
        row(page, name).locator("input[type=checkbox]").set_checked(wanted)
    losses = [r for r in read_metrics(runs_dir / "alpha") if "loss" in r]
    curve = page.locator("#chart-loss polyline[data-series='alpha loss']")
    curve.wait_for()
    assert int(curve.get_attribute("data-points")) == len(losses) > 1
    page.locator("#chart-lr polyline[data-series='beta lr']").wait_for()
    page.wait_for_function("document.querySelectorAll('#diff-table th').length === 3")
    lr_row = page.locator("#diff-table tr[data-key='train.lr']")
    heads = page.locator("#diff-table th").all_inner_texts()[1:]
    cells = lr_row.locator("td").all_inner_texts()[1:]
    assert dict(zip(heads, cells)) == {"alpha": json.dumps(3e-3), "beta": json.dumps(1e-3)}
    assert page.locator("#diff-table tr[data-key='train.max_steps']").count() == 0  # same in both
    shot(page, "runs")


def test_form_typo_gives_the_yaml_paths_one_line_error(page, tmp_path):
    open_tab(page, "new")
    page.fill("[data-key='train.max_steps']", "2O")
    error = page.locator("#form-error")
    error.filter(has_text="2O").wait_for()
    assert page.locator("#plan-table td.total").count() == 0  # no plan passes for this form
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("train:\n  max_steps: 2O\n")
    with pytest.raises(UserError) as caught:
        load_config(recipe)
    assert error.inner_text() == caught.value.one_line().replace(str(recipe), "<form>")
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "new-run", full_page=False)

    # The plan follows the form: a larger batch needs more activation memory.
    page.fill("[data-key='train.max_steps']", "8")
    page.locator("#plan-table td.total").wait_for()
    page.wait_for_function("document.querySelector('#form-error').textContent === ''")
    before = page.locator("#plan-table td.total").inner_text()
    page.fill("[data-key='train.batch_size']", "64")
    page.wait_for_function(
        f"document.querySelector('#plan-table td.total').textContent !== {json.dumps(before)}"
    )
    page.fill("[data-key='train.batch_size']", "16")


def launch(page, name: str, **values: str) -> None:
    open_tab(page, "new")
    page.select_option("#start-from", "configs/quickstart.yaml")
    page.click("#load-recipe")
    page.wait_for_selector("#config-form:not([data-loading])", state="attached")
    page.wait_for_function(
        "document.querySelector('[data-key=\"train.max_steps\"]').value === '200'"
    )
    for key, value in values.items():
        page.fill(f"[data-key='{key}']", value)
    page.locator("[data-key='tracking.plot']").uncheck()
    page.fill("#run-name", name)
    page.click("#launch")
    page.locator("#form-note").filter(has_text=f"launched {name}").wait_for()
    open_tab(page, "runs")


@pytest.mark.slow
def test_launch_watch_finish_then_try(page, runs_dir):
    launch(page, "quick", **{"train.max_steps": "6", "train.log_every": "2"})
    assert (runs_dir / "quick" / "recipe.yaml").is_file()
    wait_status(page, "quick", "finished", 150)
    summary = json.loads((runs_dir / "quick" / "summary.json").read_text())
    assert summary["steps"] == 6
    curve = page.locator("#chart-loss polyline[data-series='quick loss']")
    curve.wait_for()
    assert int(curve.get_attribute("data-points")) == 3  # steps 2, 4, 6

    # Try: the streamed answer is what generate.py gives for the same prompt.
    from tunesmith.data.formats import format_record
    from tunesmith.generate import (
        GenerationSettings,
        entry_from_record,
        generate_texts,
        load_for_inference,
    )

    open_tab(page, "try")
    page.select_option("#try-run", "alpha")
    page.fill("#try-tokens", "8")
    page.fill("#try-input", "42")
    page.click("#try-send")
    page.wait_for_selector("#try-base[data-done='1']")
    loaded = load_for_inference(runs_dir / "alpha")
    entry = entry_from_record(loaded.record, str(runs_dir / "alpha"))

    def greedy(text: str) -> str:
        example = format_record({"input": text}, entry)
        settings = GenerationSettings(8)
        return generate_texts(
            loaded.model, loaded.tokenizer, [example], False, settings, progress=False
        )[0]

    first = greedy("42")
    assert page.locator("#try-tuned").inner_text().strip() == first
    assert page.locator("#try-base").inner_text().strip() != ""
    # A second turn: the first exchange moves into the conversation log; this run learned an
    # input template, so (as in `tunesmith chat`) the answer is to the new message.
    page.fill("#try-input", "7")
    page.click("#try-send")
    page.wait_for_selector("#try-base[data-done='1']")
    turns = page.locator("#try-tuned-log .turn").all_inner_texts()
    assert [t.strip() for t in turns] == ["42", first]
    assert page.locator("#try-tuned").inner_text().strip() == greedy("7")
    shot(page, "try")
    page.click("#try-reset")
    assert page.locator("#try-tuned-log .turn").count() == 0


@pytest.mark.slow
def test_stop_then_resume(page, runs_dir):
    launch(page, "long", **{"train.max_steps": "100000", "train.log_every": "1"})
    wait_status(page, "long", "running", 30)
    page.wait_for_function(
        "[...document.querySelectorAll('#runs-table tr[data-run=\"long\"] td')][4].textContent >= 3",
        timeout=120_000,
    )
    row(page, "long").locator("button[data-stop]").click()
    wait_status(page, "long", "stopped", 60)
    first = int((runs_dir / "long" / "checkpoints" / "latest").read_text().split("-")[1])
    assert f"step-{first}" in row(page, "long").locator(".detail").inner_text()

    row(page, "long").locator("button[data-resume]").click()
    wait_status(page, "long", "running", 30)
    page.wait_for_function(
        "[...document.querySelectorAll('#runs-table tr[data-run=\"long\"] td')][4].textContent"
        f" > {first + 2}",
        timeout=120_000,
    )
    row(page, "long").locator("button[data-stop]").click()
    wait_status(page, "long", "stopped", 60)
    second = int((runs_dir / "long" / "checkpoints" / "latest").read_text().split("-")[1])
    assert second > first
    log = (runs_dir / "long" / "board.log").read_text()
    assert f"step-{first}" in log and "resume=auto" in log
    steps = [r["step"] for r in read_metrics(runs_dir / "long") if "loss" in r]
    assert steps == list(range(1, second + 1))  # the resumed run continued, nothing twice


def test_data_preview(page):
    open_tab(page, "new")
    page.select_option("#start-from", "configs/quickstart.yaml")
    page.click("#load-recipe")
    page.wait_for_selector("#config-form:not([data-loading])", state="attached")
    page.wait_for_function(
        "document.querySelector('[data-key=\"train.max_steps\"]').value === '200'"
    )
    open_tab(page, "data")
    page.fill("#data-n", "3")
    page.click("#data-preview")
    page.locator("#data-splits tr[data-split='train']").wait_for()
    train_count = len((NUMBERS / "train.jsonl").read_text().splitlines())
    cells = page.locator("#data-splits tr[data-split='train'] td")
    assert int(cells.nth(1).inner_text()) == train_count
    assert int(cells.nth(2).inner_text()) == 0  # nothing truncated without limits
    bins = page.locator("#data-hist rect.bin")
    assert sum(int(bins.nth(i).get_attribute("data-count")) for i in range(bins.count())) == (
        train_count
    )
    assert page.locator("#data-examples .example").count() == 3
    first_trained = page.locator("#data-examples .example mark").first.inner_text()
    assert first_trained.strip() and "Spell" not in first_trained  # only the answer is trained
    shot(page, "data")
