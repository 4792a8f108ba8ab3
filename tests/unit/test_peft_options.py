"""Options of the PEFT-based methods: config errors (seed 003's prompt rules) and initialisation."""

from __future__ import annotations

import pytest
import torch

from conftest import build_tiny_model
from tunesmith import load_config
from tunesmith.errors import UserError
from tunesmith.methods.lora import Lora, LoraOptions, resolve_targets
from tunesmith.methods.prompt import Prompt, PromptOptions, text_init_ids


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.prompt_tuning_init=TEXT"], "needs method.prompt_tuning_init_text"),
        (["method.prompt_tuning_init_text=Classify it"], "RANDOM ignores it"),
    ],
)
def test_prompt_init_contradictions_are_config_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(None, ["method.name=prompt", *overrides])


def test_prompt_text_init_copies_the_texts_word_embeddings(tokenizer):
    options = PromptOptions(
        num_virtual_tokens=7, prompt_tuning_init="TEXT", prompt_tuning_init_text="Spell it"
    )
    model = Prompt(options).apply(build_tiny_model("llama"), tokenizer)
    ids = text_init_ids(tokenizer, "Spell it", 7)
    assert len(ids) == 7
    words = model.get_input_embeddings().weight[torch.tensor(ids)]
    assert torch.equal(model.prompt_encoder["default"].embedding.weight, words)


def test_lora_targets_default_all_linear_and_names():
    assert resolve_targets("default", "llama") == ["q_proj", "v_proj"]
    assert resolve_targets("all-linear", "llama") == "all-linear"
    assert resolve_targets("c_attn", "gpt2") == ["c_attn"]
    with pytest.raises(UserError, match="no default LoRA target"):
        resolve_targets("default", "no-such-architecture")


def test_adalora_needs_total_step_and_room_to_prune():
    with pytest.raises(UserError, match="total_step"):
        LoraOptions(variant="adalora")
    with pytest.raises(UserError, match="tinit"):
        LoraOptions(variant="adalora", total_step=10, tinit=5, tfinal=5)


@pytest.mark.parametrize("switch", [{"use_rslora": True}, {"use_dora": True}, {"bias": "all"}])
def test_lora_switches_reach_peft(switch):
    model = Lora(LoraOptions(**switch)).apply(build_tiny_model("llama"), None)
    config = model.peft_config["default"]
    for key, value in switch.items():
        assert getattr(config, key) == value
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if "use_dora" in switch:
        assert any("lora_magnitude_vector" in n for n in names)
