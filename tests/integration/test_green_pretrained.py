"""Green Trainer on a real pretrained model (stories260K) and real data (SAMSum): what the budget
selects, how importance ranks tensors, what entering tensors train with, and adapter=lora."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tunesmith.config import TrainConfig
from tunesmith.estimate.flops import MATMUL_KINDS, profile_flops
from tunesmith.methods.base import StepContext
from tunesmith.methods.green import Green, GreenOptions
from tunesmith.methods.green.importance import tensor_importance
from tunesmith.methods.green.selection import backward_budget, select_tensors
from tunesmith.strategies.single import Single, SingleOptions
from tunesmith.train.loss import token_loss
from tunesmith.train.optim import build_scheduler


@pytest.fixture(scope="module")
def stories(request):
    from conftest import SHARED_DATA

    folder = SHARED_DATA / "stories260K"
    if not folder.is_dir():
        pytest.skip("../shared/data/stories260K is not present")
    return folder


@pytest.fixture(scope="module")
def samsum_batches(stories):
    """SAMSum dialogues with their summaries, tokenised by stories260K, 4 per batch, 96 tokens."""
    from transformers import AutoTokenizer

    from conftest import SHARED_DATA

    tok = AutoTokenizer.from_pretrained(stories)
    with zipfile.ZipFile(SHARED_DATA / "samsum" / "samsum.zip") as zf:
        rows = [json.loads(line) for line in zf.read("samsum/train.json").decode().splitlines()]
    texts = [f"{r['dialogue']}\nSummary: {r['summary']}" for r in rows[:64]]
    ids = [tok(t, add_special_tokens=False)["input_ids"][-96:] for t in texts]
    ids = [x for x in ids if len(x) == 96]
    tensor = torch.tensor(ids[:48])
    return [{"input_ids": b, "labels": b.clone()} for b in tensor.split(4)]


def load(stories, attention: str = "sdpa"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(stories, attn_implementation=attention)
    model.config.use_cache = False
    return model


def mean_loss(model, batches) -> float:
    with torch.no_grad():
        total = [token_loss(model, b) for b in batches]
    return float(sum(loss for loss, _ in total) / sum(n for _, n in total))


def test_the_selected_set_changes_and_grows_with_rho(stories, samsum_batches):
    model = load(stories)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    profile = profile_flops(model, 4, 96)
    importance = tensor_importance(
        model, optimizer, samsum_batches[:2], token_loss, set(profile.names)
    )
    values = [importance[n] for n in profile.names]
    picks = {}
    for rho in (0.4, 0.5, 0.7, 0.9):
        budget = backward_budget(rho, profile)
        picks[rho] = select_tensors(values, profile.t_dw, profile.t_dy, budget)
        assert picks[rho].backward <= budget
    masks = [p.mask for p in picks.values()]
    assert len(set(masks)) == len(masks)  # every budget selects a different set
    backward = [p.backward for p in picks.values()]
    assert backward == sorted(backward) and backward[0] < 0.5 * backward[-1]
    gained = [p.importance for p in picks.values()]
    assert gained == sorted(gained)  # a larger budget never selects less importance
    # More budget reaches deeper: the earliest selected tensor moves toward the input.
    earliest = [m.index(True) for m in masks]
    assert earliest == sorted(earliest, reverse=True) and earliest[0] > earliest[-1]


def test_importance_is_signed_and_scaled_per_tensor(stories, samsum_batches):
    model = load(stories)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    names = [n for n, _ in model.named_parameters()]
    importance = tensor_importance(model, optimizer, samsum_batches[:2], token_loss, names)
    assert max(abs(v) for v in importance.values()) == pytest.approx(1.0)
    # Per tensor, not per element: a matrix's importance is not its element count's share.
    by_size = sorted(importance, key=lambda n: dict(model.named_parameters())[n].numel())
    assert sorted(importance, key=importance.get) != by_size
    # Sign: a tensor whose trial update raises the loss scores below zero, one that lowers it
    # above (checked on the tensors with the largest |I|, where first order dominates).
    start = mean_loss(model, samsum_batches[:2])
    params = dict(model.named_parameters())
    strongest = sorted(names, key=lambda n: -abs(importance[n]))[:6]
    for name in strongest:
        saved = params[name].detach().clone()
        for other, p in params.items():
            p.requires_grad_(other == name)
        step = torch.optim.AdamW([params[name]], lr=1e-4)
        loss, tokens = token_loss(model, samsum_batches[0])
        loss2, tokens2 = token_loss(model, samsum_batches[1])
        ((loss + loss2) / (tokens + tokens2)).backward()
        step.step()
        drop = start - mean_loss(model, samsum_batches[:2])
        assert (drop > 0) == (importance[name] > 0), name
        with torch.no_grad():
            params[name].copy_(saved)
        params[name].grad = None


def train_selection(model, mask_names, batches, steps: int = 12) -> float:
    """Train only `mask_names` for a few AdamW steps; the held-out loss after."""
    params = dict(model.named_parameters())
    for name, p in params.items():
        p.requires_grad_(name in mask_names)
    optimizer = torch.optim.AdamW([params[n] for n in mask_names], lr=2e-3)
    for step in range(steps):
        loss, tokens = token_loss(model, batches[step % 8])
        (loss / tokens).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return mean_loss(model, batches[8:])


def test_shuffled_importance_selects_worse_tensors(stories, samsum_batches):
    """The ablation: the same budget and DP, importance shuffled across tensors, trains worse."""
    model = load(stories)
    profile = profile_flops(model, 4, 96)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    importance = tensor_importance(
        model, optimizer, samsum_batches[:2], token_loss, set(profile.names)
    )
    values = [importance[n] for n in profile.names]
    budget = backward_budget(0.5, profile)

    def held_out(order: list[float]) -> float:
        mask = select_tensors(order, profile.t_dw, profile.t_dy, budget).mask
        chosen = {n for n, m in zip(profile.names, mask, strict=True) if m}
        return train_selection(load(stories), chosen, samsum_batches)

    green = held_out(values)
    shuffled = []
    for seed in range(3):
        perm = torch.randperm(len(values), generator=torch.Generator().manual_seed(seed))
        shuffled.append(held_out([values[k] for k in perm.tolist()]))
    assert green < sum(shuffled) / len(shuffled)


def green_context(method, model, batches, steps_per_epoch: int, lr: float = 1e-3):
    strategy = Single(SingleOptions(device="cpu"), TrainConfig())
    model, optimizer = strategy.setup(
        model, lambda m: torch.optim.AdamW(method.param_groups(m, 0.1), lr=lr)
    )
    ctx = StepContext(
        step=0, epoch=0, steps_per_epoch=steps_per_epoch, model=model, optimizer=optimizer,
        strategy=strategy, loss_fn=token_loss, log=lambda line: None,
        sample_batches=lambda n: batches[ctx.step % 4 : ctx.step % 4 + n],
    )  # fmt: skip
    return ctx, strategy


def test_reselection_happens_at_the_papers_interval(stories, samsum_batches):
    """Default: every 2 epochs (the reference's hard-coded interval); 5 epochs select 3 times."""
    method = Green(GreenOptions(rho=0.5))
    assert (method.options.select_every, method.options.select_unit) == (2, "epoch")
    ctx, _ = green_context(method, method.apply(load(stories), None), samsum_batches, 2)
    for step in range(10):
        ctx.step, ctx.epoch = step, step // 2
        method.on_step(ctx)
    assert [step for step, _ in method.selections] == [0, 4, 8]  # epochs 0, 2 and 4


def test_tensors_entering_the_set_train_at_the_full_rate_with_their_moments(
    stories, samsum_batches
):
    method = Green(GreenOptions(rho=0.5, select_unit="step", select_every=3))
    model = method.apply(load(stories), None)
    ctx, strategy = green_context(method, model, samsum_batches, 100)
    cfg = TrainConfig(lr=1e-3, warmup_steps=2)
    scheduler = build_scheduler(ctx.optimizer, cfg, 30, 100)
    params = dict(model.named_parameters())
    trained = dict.fromkeys(params, 0)
    entered = 0
    for step in range(18):
        ctx.step = step
        before = {n for n, p in params.items() if p.requires_grad}
        method.on_step(ctx)
        selected = {n for n, p in params.items() if p.requires_grad}
        new = selected - before if step else set()
        weights = {n: params[n].detach().clone() for n in new}
        loss, tokens = token_loss(model, samsum_batches[step % 12])
        (loss / tokens).backward()
        lr = scheduler.get_last_lr()[0]
        strategy.step(ctx.optimizer, None)
        scheduler.step()
        for group in ctx.optimizer.param_groups:  # every group follows the one schedule
            assert group["lr"] == pytest.approx(scheduler.get_last_lr()[0])
        for name in selected:
            trained[name] += 1
            state = ctx.optimizer.state[params[name]]
            assert float(state["step"]) == trained[name], name  # its own moments, kept
        for name in new:
            entered += 1
            if trained[name] == 1:  # a first Adam step at the full rate: lr·sign(g) + decay
                step_taken = params[name].detach() - weights[name] * (1 - lr * 0.1)
                assert step_taken.abs().max().item() == pytest.approx(lr, rel=1e-3), name
    assert entered > 0  # the test saw tensors enter the set


@pytest.fixture(scope="module")
def lora_run(stories, samsum_batches):
    method = Green(GreenOptions(rho=0.5, adapter="lora", select_unit="step", select_every=4))
    model = method.apply(load(stories, "eager"), None)
    ctx, strategy = green_context(method, model, samsum_batches, 100, lr=3e-3)
    losses = []
    for step in range(12):
        ctx.step = step
        method.on_step(ctx)
        loss, tokens = token_loss(model, samsum_batches[step % 8])
        (loss / tokens).backward()
        losses.append(float(loss.detach() / tokens))
        strategy.step(ctx.optimizer, None)
    return method, model, ctx, losses


def test_green_lora_trains_only_selected_adapters(lora_run):
    method, model, ctx, losses = lora_run
    assert sum(losses[-3:]) < sum(losses[:3])
    named = dict(model.named_parameters())
    adapters = {n for n in named if ".lora_" in n}
    assert method.candidates == adapters
    held = {id(p) for g in ctx.optimizer.param_groups for p in g["params"]}
    assert held == {id(named[n]) for n in adapters}  # the base is never in the optimizer
    selected = {n for n, p in named.items() if p.requires_grad}
    assert selected and selected < adapters  # a budgeted subset of the adapters
    with_state = {n for n in adapters if ctx.optimizer.state.get(named[n])}
    ever = {  # adapters ever selected (every selection of this run)
        name
        for _, sel in method.selections
        for name, m in zip(method.profile.names, sel.mask, strict=True)
        if m
    }
    assert with_state == ever < adapters  # optimizer memory only for what trained
    for name in ever:  # A and B of one adapter train together
        partner = name.replace(".lora_A.", ".lora_B.").replace(".lora_B.", ".lora_A.")
        if name != partner:
            assert partner in ever


def test_green_lora_respects_the_budget(lora_run, samsum_batches):
    method, model, _, _ = lora_run
    for _, sel in method.selections:
        assert sel.backward <= method.budget
    profile = profile_flops(model, *samsum_batches[0]["input_ids"].shape)
    mask = [dict(model.named_parameters())[n].requires_grad for n in profile.names]
    loss, tokens = token_loss(model.train(), samsum_batches[0])
    with FlopCounterMode(display=False) as counter:
        (loss / tokens).backward()
    model.zero_grad(set_to_none=True)
    planned = profile.backward_flops(mask, MATMUL_KINDS)
    assert counter.get_total_flops() == pytest.approx(planned, rel=0.02)
    full = profile.t_fp + profile.t_bp_full
    assert (profile.t_fp + profile.backward_flops(mask)) / full <= 0.5


def test_green_lora_saves_a_peft_adapter_that_reloads_identically(
    lora_run, stories, samsum_batches, tmp_path
):
    from peft import PeftModel

    method, model, _, _ = lora_run
    method.save(model, None, tmp_path, model.state_dict())
    assert (tmp_path / "adapter_model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(load(stories, "eager"), tmp_path).eval()
    model.eval()
    with torch.no_grad():
        ids = samsum_batches[0]["input_ids"]
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
    model.train()
