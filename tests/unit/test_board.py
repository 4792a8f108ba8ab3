"""The board without a browser: the form round-trips every recipe, run status from real run
folders, and the request guard (login, localhost only, same-origin JSON POSTs)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")

from starlette.requests import Request  # noqa: E402

from conftest import ROOT, chat_run_overrides, run_overrides  # noqa: E402
from tunesmith.board import form, runs  # noqa: E402
from tunesmith.board.app import _refusal, serve  # noqa: E402
from tunesmith.board.jobs import Jobs  # noqa: E402
from tunesmith.config import load_config, to_dict  # noqa: E402
from tunesmith.errors import UserError  # noqa: E402

RECIPES = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_form_round_trips_every_recipe(recipe):
    cfg = load_config(recipe)
    again = form.config_from_form(form.form_values(cfg))
    assert to_dict(again) == to_dict(cfg)


def test_form_errors_are_the_yaml_errors(tmp_path):
    values = form.form_values(load_config(ROOT / "configs" / "quickstart.yaml"))
    recipe = tmp_path / "r.yaml"
    for key, text, yaml_text in (
        ("train.lr_schedule", "cosin", "train:\n  lr_schedule: cosin\n"),
        ("data.fields", "3", "data:\n  fields: 3\n"),
        ("train.max_steps", "2O", "train:\n  max_steps: 2O\n"),
    ):
        recipe.write_text(yaml_text)
        with pytest.raises(UserError) as from_yaml:
            load_config(recipe)
        with pytest.raises(UserError) as from_form:
            form.config_from_form({**values, key: text})
        assert from_form.value.one_line() == from_yaml.value.one_line().replace(
            str(recipe), form.SOURCE
        )


def test_run_names_stay_inside_the_runs_folder(tmp_path):
    for name in ("../x", "a/b", "", ".hidden", "/etc"):
        with pytest.raises(UserError):
            runs.run_path(tmp_path, name)
    assert runs.run_path(tmp_path, "run-1.b_2") == tmp_path / "run-1.b_2"


def test_failed_launch_shows_the_clis_one_line_error(tmp_path):
    cfg = load_config(None, run_overrides(tmp_path, steps=2, **{"data.train": "missing.jsonl"}))
    jobs = Jobs(tmp_path / "runs", ROOT)
    run = jobs.launch("broken", form.recipe_dict(cfg))
    for _ in range(240):
        if (run / runs.EXIT).is_file():
            break
        time.sleep(0.25)
    status = runs.status_of(run)
    assert status.status == "failed"
    error_lines = [
        ln for ln in (run / runs.LOG).read_text().splitlines() if ln.startswith("error:")
    ]
    assert error_lines and status.detail == error_lines[-1][len("error: ") :]
    assert "missing.jsonl" in status.detail
    with pytest.raises(UserError):
        jobs.launch("broken", form.recipe_dict(cfg))  # an existing run is never overwritten


def request(method="GET", host="127.0.0.1:7860", **headers) -> Request:
    raw = [(b"host", host.encode())] + [
        (k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()
    ]
    return Request({"type": "http", "method": method, "path": "/", "headers": raw})


def test_guard_refuses_what_could_start_processes_from_elsewhere():
    assert _refusal(request(), None, True) is None
    assert _refusal(request(host="localhost:7860"), None, True) is None
    assert _refusal(request(host="evil.example:7860"), None, True).status_code == 403
    post = {"content_type": "application/json"}
    assert _refusal(request("POST", **post), None, True) is None
    assert _refusal(request("POST", content_type="text/plain"), None, True).status_code == 415
    cross = request("POST", origin="http://evil.example", **post)
    assert _refusal(cross, None, True).status_code == 403
    same = request("POST", origin="http://127.0.0.1:7860", **post)
    assert _refusal(same, None, True) is None


def test_auth_is_required_when_set_and_off_localhost(tmp_path):
    auth = ("alice", "s3cret")
    good = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    bad = "Basic " + base64.b64encode(b"alice:guess").decode()
    assert _refusal(request(host="10.0.0.5:7860"), auth, False).status_code == 401
    assert (
        _refusal(request(host="10.0.0.5:7860", authorization=bad), auth, False).status_code == 401
    )
    assert _refusal(request(host="10.0.0.5:7860", authorization=good), auth, False) is None
    with pytest.raises(UserError, match="--auth"):
        serve(Path(tmp_path), [ROOT / "configs"], host="0.0.0.0")


def test_try_streams_the_adapter_and_its_base(tmp_path):
    """A LoRA run: the tuned answer is generate.py's; the base answer is the same model with the
    adapter switched off."""
    from tunesmith.board.inspect import Chatter
    from tunesmith.cli import main
    from tunesmith.data.formats import format_record
    from tunesmith.generate import GenerationSettings, entry_from_record, generate_texts

    overrides = run_overrides(tmp_path, method="lora", steps=4, **{"train.lr": 5e-2})
    assert main(["train", "--", *overrides]) == 0
    chatter = Chatter.load(tmp_path / "run")
    ask = [{"role": "user", "content": "42"}]
    tuned = "".join(chatter.stream(ask, "tuned", 6)).strip()
    base = "".join(chatter.stream(ask, "base", 6)).strip()
    loaded = chatter.loaded
    entry = entry_from_record(loaded.record, str(tmp_path / "run"))
    example = format_record({"input": "42"}, entry)
    settings = GenerationSettings(6)
    assert (
        tuned
        == generate_texts(
            loaded.model, loaded.tokenizer, [example], False, settings, progress=False
        )[0]
    )
    with loaded.model.disable_adapter():
        reference = generate_texts(
            loaded.model, loaded.tokenizer, [example], False, settings, progress=False
        )[0]
    assert base == reference


def test_try_keeps_a_chat_runs_conversation(tmp_path):
    """A run trained on chat data: the Try tab answers the whole conversation, rendered with the
    run's chat template as `tunesmith chat` renders it, not only the last message."""
    from tunesmith.board.app import conversation
    from tunesmith.board.inspect import Chatter
    from tunesmith.chat import conversation_example
    from tunesmith.cli import main
    from tunesmith.generate import GenerationSettings, generate_texts

    overrides = chat_run_overrides(tmp_path)
    assert main(["train", *overrides]) == 0
    chatter = Chatter.load(tmp_path / "run")
    messages = conversation(
        {
            "messages": [
                {"role": "user", "content": "4"},
                {"role": "assistant", "content": "four"},
                {"role": "user", "content": "7"},
            ]
        }
    )
    prompt = chatter.loaded.tokenizer.decode(chatter.prompt_ids(messages))
    assert prompt.count("<|im_start|>user") == 2 and "four" in prompt
    answer = "".join(chatter.stream(messages, "tuned", 5)).strip()
    example = conversation_example(chatter.loaded, messages)
    loaded = chatter.loaded
    settings = GenerationSettings(5)
    expected = generate_texts(
        loaded.model, loaded.tokenizer, [example], False, settings, progress=False
    )[0]
    assert answer == expected
    with pytest.raises(UserError, match="end with a user message"):
        conversation({"messages": messages[:2]})
    with pytest.raises(UserError, match="role"):
        conversation({"messages": [{"role": "robot", "content": "hi"}]})


def test_plan_panel_says_what_would_fit_only_when_the_recipe_does_not():
    """The New run tab's plan ends as `tunesmith plan` does: the changes that fit, for a recipe
    that does not (a 1B full fp32 run on a 16 GB T4), and nothing for one that fits."""
    from conftest import TOKENIZER, tiny_config
    from tunesmith.estimate.fit import what_would_fit

    big = {**tiny_config("llama"), "hidden_size": 2048, "intermediate_size": 5504}
    big.update(num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16)
    cfg = load_config(None, [f"model.config={json.dumps(big)}", f"model.tokenizer={TOKENIZER}"])
    shown = form.would_fit(cfg, "t4-16gb", 1)
    seq_len = cfg.data.max_seq_len or cfg.data.cutoff_len or 512
    expected = what_would_fit(cfg, "t4-16gb", 1, seq_len)
    assert shown and [s["overrides"] for s in shown] == [s.overrides for s in expected]
    assert form.would_fit(cfg, "b200-180gb", 1) == []


def test_a_two_process_launch_trains_on_both_ranks(tmp_path):
    overrides = run_overrides(tmp_path, steps=2, **{"strategy.name": "ddp"})
    jobs = Jobs(tmp_path / "runs", ROOT)
    run = jobs.launch("ddp", form.recipe_dict(load_config(None, overrides)), nproc=2)
    for _ in range(720):
        if (run / runs.EXIT).is_file():
            break
        time.sleep(0.25)
    log = (run / runs.LOG).read_text()
    assert runs.status_of(run).status == "finished", log[-2000:]
    assert "--nproc-per-node 2" in log.splitlines()[0]
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
