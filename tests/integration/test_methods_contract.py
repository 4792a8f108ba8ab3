"""The method contract: every registered method x tiny Llama, GPT-2 and T5.

A method is done when it passes every cell here (or `compat` refuses the cell, asserted below):
1. `apply` makes exactly the expected parameters trainable (names computed from the base model);
2. 30 steps of the real loop on 8 memorisable examples bring the training loss below 60% of its
   first value;
3. save then reload (through `generate`'s loader, base rebuilt from `final/base/`) gives
   identical logits; mergeable methods give the same logits merged, within 1e-5;
4. prefix and prompt tuning generate through the KV cache exactly what greedy decoding without a
   cache gives (the transformers cache API is where these methods break).

The tiny bases use a larger init (and no dropout) than the shared fixtures: with HF's default
init (std 0.02) a random 64-wide head can only produce near-uniform logits, so no adapter could
memorise anything in 30 steps; with std 0.2 (T5: factor 1.5) the random base behaves like a
pretrained one whose head can express confident predictions. Learning rates are per method,
chosen so every cell has a margin (measured ratios 0.0-0.45).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import NUMBERS, run_overrides, tiny_config
from tunesmith import compat, load_config
from tunesmith.errors import UserError
from tunesmith.generate import load_for_inference
from tunesmith.methods import METHODS
from tunesmith.strategies import STRATEGIES
from tunesmith.train.loop import train
from tunesmith.train.loss import token_loss

KINDS = ("llama", "gpt2", "t5")
STEPS = 30
LR = {
    "full": 3e-3,
    "freeze": 3e-3,
    "lora": 3e-2,
    "prefix": 1e-1,
    "prompt": 1e-1,
    "llama_adapter": 5e-2,
    "ia3": 1e-1,
    "green": 3e-3,
}
OPTIONS = {"freeze": {"num_freeze_layers": 1}}
REFUSED = {("llama_adapter", "t5")}  # PEFT's adaption prompt has no encoder-decoder variant
MERGEABLE = {"lora", "ia3"}
EDITS_INPUTS = {"prefix", "prompt"}

# Per-architecture facts the expectations are written from, independently of the methods' code.
BLOCK0 = {"llama": "model.layers.0.", "gpt2": "transformer.h.0.", "t5": "encoder.block.0."}
EMBEDDINGS = {
    "llama": {"model.embed_tokens.weight"},
    "gpt2": {"transformer.wte.weight", "transformer.wpe.weight"},
    "t5": {"shared.weight"},
}
LORA_TARGETS = {"llama": ("q_proj", "v_proj"), "gpt2": ("c_attn",), "t5": ("q", "v")}
IA3_TARGETS = {
    "llama": ("k_proj", "v_proj", "down_proj"),
    "gpt2": ("c_attn", "mlp.c_proj"),
    "t5": ("k", "v", "wo"),
}
ATTENTION = {"llama": "model.layers.{}.self_attn", "gpt2": "transformer.h.{}.attn"}


def contract_config(kind: str) -> dict:
    """The tiny config of `kind` with an expressive random init and no dropout (see above)."""
    config = tiny_config(kind)
    if kind == "t5":
        config.update(initializer_factor=1.5, dropout_rate=0.0)
    else:
        config["initializer_range"] = 0.2
    if kind == "gpt2":
        config.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return config


def _modules_ending(base: nn.Module, targets: tuple[str, ...]) -> list[str]:
    return [
        n for n, _ in base.named_modules() if any(n == t or n.endswith("." + t) for t in targets)
    ]


def expected_trainable(method: str, kind: str, base: nn.Module) -> set[str]:
    """The parameter names `apply` must leave trainable, derived from the untouched base."""
    names = {n for n, _ in base.named_parameters()}
    if method in ("full", "green"):  # green selects its tensors at the first step, not in apply
        return names
    if method == "freeze":  # num_freeze_layers=1: embeddings and the first block freeze
        return {n for n in names if not n.startswith(BLOCK0[kind])} - EMBEDDINGS[kind]
    if method == "lora":
        return {
            f"base_model.model.{m}.lora_{ab}.default.weight"
            for m in _modules_ending(base, LORA_TARGETS[kind])
            for ab in "AB"
        }
    if method in ("prefix", "prompt"):
        return {"prompt_encoder.default.embedding.weight"}
    if method == "llama_adapter":  # adapter_layers (30) is capped at the depth (2)
        return {
            f"base_model.model.{ATTENTION[kind].format(i)}.adaption_{part}"
            for i in range(2)
            for part in ("prompt", "gate")
        }
    if method == "ia3":
        return {
            f"base_model.model.{m}.ia3_l.default" for m in _modules_ending(base, IA3_TARGETS[kind])
        }
    pytest.fail(f"method {method} has no expected trainable set: add it to the contract matrix")


@pytest.fixture(scope="module")
def memorisable(tmp_path_factory) -> Path:
    """8 number-spelling examples, one batch: 30 steps see the same batch 30 times."""
    path = tmp_path_factory.mktemp("data") / "small.jsonl"
    lines = (NUMBERS / "train.jsonl").read_text(encoding="utf-8").splitlines()[:8]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def cell_config(tmp_path: Path, method: str, kind: str, data: Path, save: bool):
    extra = {f"method.{k}": v for k, v in OPTIONS.get(method, {}).items()}
    overrides = run_overrides(
        tmp_path,
        kind,
        method,
        STEPS,
        **{
            "model.config": json.dumps(contract_config(kind)),
            "data.train": str(data),
            # prefix/prompt also evaluate: validation runs the same loss in eval mode
            "data.validation": str(data) if save else "null",
            "eval.run_validation": str(save).lower(),
            "train.lr": LR.get(method, 3e-3),
            "train.lr_schedule": "constant",
            "checkpoint.save_model": str(save).lower(),
            **extra,
        },
    )
    return load_config(None, overrides)


def build_base(kind: str) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = contract_config(kind)
    config = AutoConfig.for_model(config.pop("model_type"), **config)
    torch.manual_seed(0)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_config(config)
    model.config.use_cache = False
    return model


def probe_batch(tokenizer, encoder_decoder: bool) -> dict[str, torch.Tensor]:
    prompts = ["Spell 12 in words:", "Spell 345 in words:"]
    answers = [" twelve", " three hundred and forty-five"]
    if encoder_decoder:
        enc = tokenizer(prompts, padding=True, return_tensors="pt")
        labels = tokenizer(answers, padding=True, return_tensors="pt")["input_ids"]
        return {**enc, "labels": labels}
    enc = tokenizer([p + a for p, a in zip(prompts, answers)], padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {**enc, "labels": labels}


def logits_of(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if getattr(model.config, "is_encoder_decoder", False):
            inputs["decoder_input_ids"] = batch["labels"].clamp(min=0)
        return model(**inputs, use_cache=False).logits


def greedy_without_cache(model: nn.Module, ids: torch.Tensor, n: int, encoder_decoder: bool):
    """Greedy continuation by full forward passes only: the reference the cached path must match."""
    with torch.no_grad():
        if encoder_decoder:
            start = model.config.decoder_start_token_id
            out = torch.tensor([[start]])
            for _ in range(n):
                logits = model(input_ids=ids, decoder_input_ids=out, use_cache=False).logits
                out = torch.cat([out, logits[:, -1:].argmax(-1)], dim=1)
            return out[:, 1:]
        out = ids
        for _ in range(n):
            logits = model(
                input_ids=out, attention_mask=torch.ones_like(out), use_cache=False
            ).logits
            out = torch.cat([out, logits[:, -1:].argmax(-1)], dim=1)
        return out[:, ids.shape[1] :]


CELLS = [(m, k) for m in METHODS for k in KINDS]


@pytest.mark.parametrize(("method", "kind"), CELLS, ids=[f"{m}-{k}" for m, k in CELLS])
def test_method_contract(method, kind, tmp_path, tokenizer, memorisable):
    impl = METHODS[method]
    save_run = method in EDITS_INPUTS
    cfg = cell_config(tmp_path, method, kind, memorisable, save_run)
    encoder_decoder = kind == "t5"
    strategy = STRATEGIES["single"](cfg.strategy, cfg.train)
    refusals = compat.refusals(cfg, impl.capabilities, strategy, kind, encoder_decoder)
    if (method, kind) in REFUSED:
        assert refusals, f"compat should refuse {method} on {kind}"
        with pytest.raises(UserError, match=method):
            train(cfg)
        return
    assert not refusals, refusals

    # 1. apply: exactly the expected trainable parameters.
    base = build_base(kind)
    expected = expected_trainable(method, kind, base)
    method_obj = impl(cfg.method)
    model = method_obj.apply(build_base(kind), tokenizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected, (sorted(trainable ^ expected))[:6]

    # 3. save then reload: identical logits; merged within 1e-5.
    batch = probe_batch(tokenizer, encoder_decoder)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):  # move every adapter off its identity init (LoRA B, gates, IA3 ones)
        loss_sum, n_targets = token_loss(model, batch)
        (loss_sum / n_targets).backward()
        optimizer.step()
        optimizer.zero_grad()
    saved = tmp_path / "saved"
    saved.mkdir()
    method_obj.save(model, tokenizer, saved, model.state_dict())
    (saved / "tunesmith.json").write_text(
        json.dumps({"encoder_decoder": encoder_decoder, "method": {"name": method}})
    )
    before = logits_of(model, batch)
    reloaded = load_for_inference(saved).model
    assert torch.equal(logits_of(reloaded, batch), before)
    if method in MERGEABLE:
        merged = reloaded.merge_and_unload()
        torch.testing.assert_close(logits_of(merged, batch), before, atol=1e-5, rtol=0)

    # 2. the real loop memorises the tiny set.
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == STEPS
    assert losses[-1] < 0.6 * losses[0], (losses[0], losses[-1])

    # 4. prefix/prompt: generation through the cache equals generation without one.
    if save_run:
        loaded = load_for_inference(tmp_path / "run")
        ids = torch.tensor([tokenizer("Spell 21 in words:")["input_ids"]])
        expected_tokens = greedy_without_cache(loaded.model, ids, 6, encoder_decoder)
        loaded.model.config.use_cache = True
        generated = loaded.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=6,
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = generated if encoder_decoder else generated[:, ids.shape[1] :]
        if encoder_decoder:
            new = new[:, 1:]  # drop the decoder start token
        # generate stops at EOS; the reference keeps going, so compare up to where it stopped
        assert new.shape[1] == 6 or new[0, -1].item() == tokenizer.eos_token_id
        assert torch.equal(new, expected_tokens[:, : new.shape[1]]), (new, expected_tokens)
