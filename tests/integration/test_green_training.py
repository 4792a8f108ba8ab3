"""Green Trainer training tiny models: through the library API, and step by step with the loop's
own pieces to watch gradients, optimizer moments and the FLOPs actually spent."""

from __future__ import annotations

import collections
import contextlib
import io
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import build_tiny_model, run_overrides
from tunesmith.config import TrainConfig, load_config
from tunesmith.errors import UserError
from tunesmith.estimate.flops import MATMUL_KINDS, profile_flops
from tunesmith.methods.base import StepContext
from tunesmith.methods.green import Green, GreenOptions
from tunesmith.strategies.single import Single, SingleOptions
from tunesmith.train.loop import forward_backward, train
from tunesmith.train.loss import token_loss


def run_green(tmp_path, kind: str, steps: int, **method: object) -> tuple[list[float], str]:
    """Train through the library API; returns (logged losses, the run's stderr)."""
    options = {f"method.{k}": v for k, v in method.items()}
    cfg = load_config(None, run_overrides(tmp_path, kind, method="green", steps=steps, **options))
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    return [r["loss"] for r in rows if "loss" in r], stderr.getvalue().replace("\r", "\n")


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("green")
    return run_green(tmp, "llama", 30, rho=0.6, select_unit="step", select_every=10)


def test_loss_falls(llama_run):
    losses, _ = llama_run
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_each_selection_is_logged(llama_run):
    _, log = llama_run
    lines = [line.strip() for line in log.splitlines() if line.strip().startswith("green")]
    assert any("rho_min 0.3" in line and "budget rho=0.6" in line for line in lines)
    selections = [line for line in lines if line.startswith("green step")]
    assert [s.split(" (")[0] for s in selections] == [f"green step {k}" for k in (0, 10, 20)]
    for line in selections:
        assert "% of parameters; planned backward" in line and "x); backward stops at" in line
        share = float(line.split("step FLOPs ")[1].split("%")[0])
        assert share <= 60.0  # never over the rho=0.6 budget
    assert sum(line.startswith("green selected: ") for line in lines) == 3


def test_encoder_decoder_trains(tmp_path):
    losses, log = run_green(tmp_path, "t5", 12, rho=0.7, select_unit="step", select_every=6)
    assert losses[-1] < losses[0]
    assert "decoder tokens" in log  # profiled with the target length too


def test_rho_below_the_floor_stops_before_the_first_step(tmp_path):
    cfg = load_config(None, run_overrides(tmp_path, "llama", method="green", **{"method.rho": 0.3}))
    with pytest.raises(UserError) as raised:
        train(cfg)
    assert "rho_min=0.3" in raised.value.one_line()
    assert not (tmp_path / "run" / "metrics.jsonl").read_text().strip()  # no step was taken


def random_batch(seed: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 512, (4, 24), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids.clone()}


def test_selection_trains_only_selected_tensors_and_keeps_moments_across_reselection():
    method = Green(GreenOptions(rho=0.6, select_unit="step", select_every=1))
    model = method.apply(build_tiny_model("llama"), None)
    strategy = Single(SingleOptions(device="cpu"), TrainConfig())
    model, optimizer = strategy.setup(
        model, lambda m: torch.optim.AdamW(method.param_groups(m, 0.1), lr=1e-3)
    )
    ctx = StepContext(
        step=0, epoch=0, steps_per_epoch=100, model=model, optimizer=optimizer,
        strategy=strategy, loss_fn=token_loss, log=lambda line: None,
        sample_batches=lambda n: [random_batch(1000 + 7 * ctx.step + k) for k in range(n)],
    )  # fmt: skip
    params = dict(model.named_parameters())
    history = collections.defaultdict(list)
    for step in range(12):
        ctx.step = step
        if method.on_step(ctx):
            model = strategy.on_trainable_change(model, optimizer)
        selected = {n for n, p in params.items() if p.requires_grad}
        for name in params:
            history[name].append(name in selected)
        frozen_before = {
            n: (params[n].detach().clone(), _moments(optimizer, params[n]))
            for n in params
            if n not in selected
        }
        forward_backward(model, [random_batch(step % 3)], strategy)
        assert {n for n, p in params.items() if p.grad is not None} == selected
        strategy.step(optimizer, 1.0)
        for name, (weight, moments) in frozen_before.items():  # no update, no weight decay
            assert torch.equal(params[name], weight), name
            assert _same(moments, _moments(optimizer, params[name])), name
    # Moments survive leaving and re-entering the set: AdamW's step count of every tensor is the
    # number of steps it trained, not the steps since it last came back.
    for name, trained in history.items():
        state = optimizer.state.get(params[name], {})
        assert float(state.get("step", 0)) == sum(trained), name
    assert any(_leaves_and_returns(trained) for trained in history.values())
    assert len({tuple(h[k] for h in history.values()) for k in range(12)}) > 1


def test_backward_stops_at_the_earliest_selected_tensor_under_activation_checkpointing():
    model = build_tiny_model("llama")
    # As models/load.py does. transformers then also forces the embeddings' output to require
    # grad (backward would run to the bottom); Green.apply removes that for non-reentrant
    # checkpoints.
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = Green(GreenOptions()).apply(model, None).train()
    profile = profile_flops(model, 4, 24)
    top = {"model.layers.1.mlp.down_proj.weight", "model.norm.weight", "lm_head.weight"}
    mask = [name in top for name in profile.names]
    for name, param in model.named_parameters():
        param.requires_grad_(name in top)
    # Recomputing layer 1's forward is the only extra work; nothing below it runs backward.
    layer_forward = sum(t.forward for t in profile.tensors if ".layers.1." in t.name)
    allowed = profile.backward_flops(mask, MATMUL_KINDS) + layer_forward
    assert backward_flops(model) <= allowed
    assert {n for n, p in model.named_parameters() if p.grad is not None} == top
    model.enable_input_require_grads()  # what transformers does: backward reaches layer 0
    model.zero_grad(set_to_none=True)
    assert backward_flops(model) > allowed + layer_forward


def backward_flops(model) -> int:
    loss, tokens = token_loss(model, random_batch(0))
    with FlopCounterMode(display=False) as counter:
        (loss / tokens).backward()
    return counter.get_total_flops()


def _moments(optimizer, param) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in optimizer.state.get(param, {}).items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _leaves_and_returns(trained: list[bool]) -> bool:
    text = "".join("1" if t else "0" for t in trained)
    return "10" in text and "1" in text[text.index("10") + 1 :]


def test_adapter_lora_trains_through_the_library_and_saves_an_adapter(tmp_path):
    losses, log = run_green(
        tmp_path, "llama", 12, rho=0.6, adapter="lora", select_unit="step", select_every=6,
        **{"lora_r": 4},
    )  # fmt: skip
    assert sum(losses[-3:]) < sum(losses[:3])
    assert "lora_A" in log and "lora_B" in log  # adapters are what gets selected
    final = tmp_path / "run" / "final"
    assert (final / "adapter_config.json").exists() and (
        final / "adapter_model.safetensors"
    ).exists()
