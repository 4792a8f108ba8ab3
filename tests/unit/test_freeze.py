"""Partial fine-tuning: which parameters train for each option, tied heads, LLaMA-Pro blocks."""

from __future__ import annotations

import pytest
import torch

from conftest import build_tiny_model
from tunesmith.errors import UserError
from tunesmith.methods.freeze import Freeze, FreezeOptions, block_lists


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def logits(model, kind: str) -> torch.Tensor:
    ids = torch.tensor([[1, 30, 31, 32, 33, 34, 35]])
    extra = {"decoder_input_ids": ids[:, :4]} if kind == "t5" else {}
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False, **extra).logits


@pytest.mark.parametrize(
    ("kind", "lists"),
    [
        ("llama", ["model.layers"]),
        ("gpt2", ["transformer.h"]),
        ("t5", ["encoder.block", "decoder.block"]),
    ],
)
def test_block_lists_are_found_without_architecture_names(kind, lists):
    assert [name for name, _ in block_lists(build_tiny_model(kind))] == lists


def test_num_freeze_layers_freezes_embeddings_and_lower_blocks():
    model = Freeze(FreezeOptions(num_freeze_layers=1)).apply(build_tiny_model("llama"), None)
    names = trainable(model)
    assert not any(n.startswith(("model.embed_tokens", "model.layers.0.")) for n in names)
    assert {"model.norm.weight", "lm_head.weight"} <= names
    assert any(n.startswith("model.layers.1.") for n in names)


def test_train_top_layers_on_encoder_decoder_counts_decoder_blocks_last():
    model = Freeze(FreezeOptions(train_top_layers=1)).apply(build_tiny_model("t5"), None)
    names = trainable(model)
    assert any(n.startswith("decoder.block.1.") for n in names)
    assert not any(n.startswith(("encoder.", "decoder.block.0.", "shared")) for n in names)
    assert "decoder.final_layer_norm.weight" in names


def test_head_only_unties_a_tied_head_and_still_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    model = build_tiny_model("gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    before = logits(model, "gpt2")
    with pytest.warns(UserWarning, match="its own copy"):
        model = Freeze(FreezeOptions(head_only=True)).apply(model, None)
    assert trainable(model) == {"lm_head.weight"}
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert torch.equal(logits(model, "gpt2"), before)
    with torch.no_grad():
        model.lm_head.weight.add_(0.1)  # as if trained: the input embeddings must not move
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.lm_head.weight is not reloaded.transformer.wte.weight
    assert torch.equal(logits(reloaded, "gpt2"), logits(model, "gpt2"))


def test_trainable_patterns_give_bitfit():
    model = Freeze(FreezeOptions(trainable_patterns=["*bias*"])).apply(
        build_tiny_model("gpt2"), None
    )
    names = trainable(model)
    assert names and all("bias" in n for n in names)
    assert names == {n for n, _ in model.named_parameters() if "bias" in n}


@pytest.mark.parametrize("kind", ["llama", "gpt2", "t5"])
def test_extra_head_layers_start_from_the_base_function_and_reload(kind, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    model = build_tiny_model(kind)
    before = logits(model, kind)
    model = Freeze(FreezeOptions(extra_head_layers=2)).apply(model, None)
    assert torch.equal(logits(model, kind), before)
    last_list, blocks = block_lists(model)[-1]
    assert len(blocks) == 4
    assert trainable(model) == {
        n
        for n, _ in model.named_parameters()
        if n.startswith((f"{last_list}.2.", f"{last_list}.3."))
    }
    depth = model.config.num_decoder_layers if kind == "t5" else model.config.num_hidden_layers
    assert depth == 4

    # One step moves the function (the zeroed projections get gradients), and it reloads exactly.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    ids = torch.tensor([[1, 30, 31, 32, 33]])
    extra = {"decoder_input_ids": ids} if kind == "t5" else {}
    model(input_ids=ids, labels=ids, use_cache=False, **extra).loss.backward()
    optimizer.step()
    assert not torch.equal(logits(model, kind), before)
    model.save_pretrained(tmp_path)
    auto = AutoModelForSeq2SeqLM if kind == "t5" else AutoModelForCausalLM
    assert torch.equal(logits(auto.from_pretrained(tmp_path), kind), logits(model, kind))


def test_extra_head_layers_generate_with_the_cache():
    model = Freeze(FreezeOptions(extra_head_layers=1)).apply(build_tiny_model("llama"), None)
    with torch.no_grad():
        for block in block_lists(model)[-1][1][2:]:
            for p in block.parameters():
                p.add_(0.05 * torch.randn_like(p))
    ids = torch.tensor([[1, 30, 31, 32]])
    model.eval()
    model.config.use_cache = True
    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    cached = model.generate(input_ids=ids, use_cache=True, **kwargs)
    uncached = model.generate(input_ids=ids, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize(
    "options",
    [
        {"num_freeze_layers": 1, "head_only": True},
        {"num_freeze_layers": 1, "train_top_layers": 1},
        {},
        {"num_freeze_layers": -1},
    ],
)
def test_contradictory_or_empty_options_are_user_errors(options):
    with pytest.raises(UserError):
        FreezeOptions(**options)


def test_out_of_range_and_unmatched_selections_are_user_errors():
    with pytest.raises(UserError, match="blocks"):
        Freeze(FreezeOptions(num_freeze_layers=3)).apply(build_tiny_model("llama"), None)
    with pytest.raises(UserError, match="match no parameter"):
        Freeze(FreezeOptions(trainable_patterns=["*nothing*"])).apply(
            build_tiny_model("llama"), None
        )
