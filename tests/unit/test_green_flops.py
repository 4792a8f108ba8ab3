"""The per-tensor FLOPs profile against torch's own FLOP counter, on tiny models built from configs."""

from __future__ import annotations

import random

import pytest
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

from tunesmith.estimate.flops import (
    ATTENTION,
    FORWARD,
    INPUT_GRAD,
    MATMUL_KINDS,
    WEIGHT_GRAD,
    profile_flops,
)

VOCAB, HIDDEN, BATCH, LENGTH, DEC_LENGTH = 256, 64, 2, 16, 8


def tiny_model(kind: str, attn: str = "eager") -> torch.nn.Module:
    """Tiny random-init model; eager attention so that FlopCounterMode sees the attention core
    (it counts CPU fused SDPA as 0)."""
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, attn_implementation=attn, bos_token_id=0, eos_token_id=0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(
            hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, **common,
        )  # fmt: skip
        return transformers.LlamaForCausalLM(cfg).eval()
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_embd=HIDDEN, n_layer=2, n_head=4, **common)
        return transformers.GPT2LMHeadModel(cfg).eval()
    if kind == "t5":
        cfg = transformers.T5Config(
            d_model=HIDDEN, d_ff=128, num_layers=2, num_heads=4, d_kv=16,
            decoder_start_token_id=0, pad_token_id=0, **common,
        )  # fmt: skip
        return transformers.T5ForConditionalGeneration(cfg).eval()
    if kind == "opt":
        cfg = transformers.OPTConfig(
            hidden_size=HIDDEN, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
            word_embed_proj_dim=HIDDEN, max_position_embeddings=64, pad_token_id=1, **common,
        )  # fmt: skip
        return transformers.OPTForCausalLM(cfg).eval()
    raise ValueError(kind)


def profile_of(model: torch.nn.Module):
    decoder = DEC_LENGTH if model.config.is_encoder_decoder else None
    return profile_flops(model, BATCH, LENGTH, decoder)


def real_batch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(2, VOCAB, (BATCH, LENGTH), generator=gen)}
    if model.config.is_encoder_decoder:
        batch["decoder_input_ids"] = torch.randint(2, VOCAB, (BATCH, DEC_LENGTH), generator=gen)
    return batch


def measured_backward(model, batch) -> int:
    """FLOPs torch counts for one backward pass of a loss on the logits."""
    logits = model(**batch, use_cache=False).logits
    with FlopCounterMode(display=False) as counter:
        logits.float().square().mean().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("kind", ["llama", "gpt2", "t5"])
def test_matmul_and_attention_flops_match_torch_counter(kind):
    model = tiny_model(kind)
    profile = profile_of(model)
    batch = real_batch(model)
    with FlopCounterMode(display=False) as counter:
        model(**batch, use_cache=False)
    forward = counter.get_total_flops()
    backward = measured_backward(model, batch)
    planned_forward = profile.total(FORWARD, MATMUL_KINDS)
    planned_backward = profile.total(WEIGHT_GRAD, MATMUL_KINDS) + profile.total(
        INPUT_GRAD, MATMUL_KINDS
    )
    # The spec asks for 10%; the profile prices the same operators with the same formulas, so it
    # is held to 1% here (it is exact on these models).
    assert planned_forward == pytest.approx(forward, rel=0.01)
    assert planned_backward == pytest.approx(backward, rel=0.01)
    # Full backward of a transformer is twice its forward, less the first layer's input grads.
    assert 0.30 < profile.rho_min < 0.36


def test_fused_attention_priced_like_eager_attention():
    eager, fused = profile_of(tiny_model("llama")), profile_of(tiny_model("llama", "sdpa"))
    assert fused.t_fp == eager.t_fp
    assert fused.names == eager.names
    assert any(p.op.startswith("_scaled_dot_product") for p in fused.pieces)
    # torch's backward rule for fused attention recomputes the scores: 5 products instead of 4.
    eager_attn = eager.total(INPUT_GRAD, [ATTENTION])
    assert fused.total(INPUT_GRAD, [ATTENTION]) == pytest.approx(eager_attn * 5 / 4)


def test_execution_order_comes_from_the_forward_pass():
    model = tiny_model("opt")
    names = profile_of(model).names
    registered = [n for n, _ in model.named_parameters()]
    final_norm = ["model.decoder.final_layer_norm.weight", "model.decoder.final_layer_norm.bias"]
    # OPT registers the final norm before the layers; it runs last.
    assert registered.index(final_norm[0]) < registered.index("model.decoder.layers.0.fc1.weight")
    assert names[-2:] == final_norm
    layer = [n for n in names if n.startswith("model.decoder.layers.0.self_attn.")]
    # HF OPT registers k, v, q, out_proj; the forward uses q first.
    assert [n.split(".")[-2] for n in layer[::2]] == ["q_proj", "k_proj", "v_proj", "out_proj"]
    llama = profile_of(tiny_model("llama")).names
    assert llama[0] == "model.embed_tokens.weight"
    assert llama[-2:] == ["model.norm.weight", "lm_head.weight"]


def test_tied_embedding_is_one_tensor_charged_at_both_ends():
    model = tiny_model("gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    profile = profile_of(model)
    names = profile.names
    assert names.count("transformer.wte.weight") == 1 and len(names) == len(set(names))
    assert names[0] == "transformer.wte.weight"  # first use wins: the lookup
    tokens = BATCH * LENGTH
    lm_head = 2 * tokens * HIDDEN * VOCAB
    wte = profile.tensors[0]
    assert wte.t_dw == lm_head + tokens * HIDDEN  # LM-head weight gradient + row scatter-add
    # The LM head's input gradient is paid as soon as anything is trained: it sits on ln_f.bias,
    # the last tensor before the head.
    assert names[-1] == "transformer.ln_f.bias"
    assert profile.tensors[-1].t_dy >= lm_head
    only_final_bias = [n == "transformer.ln_f.bias" for n in names]
    assert profile.backward_flops(only_final_bias) >= lm_head


def test_norm_embedding_and_bias_costs_use_the_right_token_counts():
    tokens = BATCH * LENGTH
    llama = {t.name: t for t in profile_of(tiny_model("llama")).tensors}
    norm = llama["model.layers.0.input_layernorm.weight"]
    assert (norm.forward, norm.t_dw) == (tokens * HIDDEN, 2 * tokens * HIDDEN)
    embed = llama["model.embed_tokens.weight"]
    assert (embed.forward, embed.t_dw) == (0, tokens * HIDDEN)  # lookup free, scatter-add paid

    gpt2 = {t.name: t for t in profile_of(tiny_model("gpt2")).tensors}
    assert gpt2["transformer.h.0.ln_1.weight"].t_dw == 2 * tokens * HIDDEN
    assert gpt2["transformer.h.0.ln_1.bias"].t_dw == tokens * HIDDEN
    assert gpt2["transformer.h.0.attn.c_attn.bias"].t_dw == tokens * 3 * HIDDEN  # fused qkv bias
    # Positions are looked up once, shape (1, length), then broadcast over the batch.
    assert gpt2["transformer.wpe.weight"].t_dw == LENGTH * HIDDEN

    t5 = {t.name: t for t in profile_of(tiny_model("t5")).tensors}
    dec_tokens = BATCH * DEC_LENGTH
    assert t5["encoder.block.0.layer.0.layer_norm.weight"].t_dw == 2 * tokens * HIDDEN
    assert t5["decoder.block.0.layer.0.layer_norm.weight"].t_dw == 2 * dec_tokens * HIDDEN
    assert t5["encoder.block.0.layer.1.DenseReluDense.wi.weight"].t_dw == 2 * tokens * HIDDEN * 128
    assert (
        t5["decoder.block.0.layer.2.DenseReluDense.wi.weight"].t_dw == 2 * dec_tokens * HIDDEN * 128
    )
    # Cross-attention keys are projections of the encoder output: encoder length.
    assert t5["decoder.block.0.layer.1.EncDecAttention.k.weight"].t_dw == 2 * tokens * HIDDEN**2
    shared = t5["shared.weight"]  # tied: both lookups and the LM head
    assert shared.t_dw == (tokens + dec_tokens) * HIDDEN + 2 * dec_tokens * HIDDEN * VOCAB


def test_unused_tensors_are_listed_last_and_free():
    model = tiny_model("llama")
    model.register_parameter("unused_scale", torch.nn.Parameter(torch.ones(3)))
    profile = profile_of(model)
    last = profile.tensors[-1]
    assert (last.name, last.used, last.t_dw, last.t_dy) == ("unused_scale", False, 0, 0)


def test_profiling_has_no_side_effects():
    model = tiny_model("gpt2").train()
    model.transformer.h[0].attn.c_attn.weight.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    rng = torch.get_rng_state()
    profile_of(model)
    assert model.training
    assert not model.transformer.h[0].attn.c_attn.weight.requires_grad
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kind", ["llama", "gpt2", "t5"])
def test_masked_backward_skips_unselected_tensors_and_stays_within_plan(kind):
    model = tiny_model(kind)
    profile = profile_of(model)
    params = dict(model.named_parameters())
    batch = real_batch(model)
    n = len(profile.tensors)
    rng = random.Random(0)
    masks = [[j == i for j in range(n)] for i in range(0, n, 3)]
    masks += [[rng.random() < q for _ in range(n)] for q in (0.1, 0.3) for _ in range(4)]
    ratios = []
    for mask in masks:
        if not any(mask):
            continue
        for name, selected in zip(profile.names, mask, strict=True):
            params[name].requires_grad_(selected)
            params[name].grad = None
        measured = measured_backward(model, batch)
        planned = profile.backward_flops(mask, MATMUL_KINDS)
        with_grad = {name for name, p in params.items() if p.grad is not None}
        assert with_grad == {name for name, m in zip(profile.names, mask, strict=True) if m}
        assert measured <= planned  # the dependency rule never under-charges
        ratios.append(measured / planned if planned else 1.0)
    # ... and rarely over-charges (only sibling branches such as T5 cross-attention keys).
    assert sum(ratios) / len(ratios) > 0.9
