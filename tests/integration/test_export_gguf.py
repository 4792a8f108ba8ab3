"""`tunesmith export --gguf` checked with a real client: llama.cpp (llama-cpp-python) loads the file,
tokenizes as the HF tokenizer does, and continues a prompt greedily exactly as transformers does
with the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import llama_cpp  # the dev extra installs llama-cpp-python: a missing client fails loudly
import numpy as np
import pytest
import torch

from conftest import NUMBERS, SHARED_DATA, TOKENIZER, run_overrides
from tunesmith import load_config
from tunesmith.cli import main
from tunesmith.errors import UserError
from tunesmith.export import export_gguf
from tunesmith.generate import load_for_inference
from tunesmith.train.loop import train

PROMPT = "Once upon a time"
NEW_TOKENS = 24


def llama_cpp_greedy(path: Path, ids: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """llama.cpp's greedy continuation of `ids` (argmax of its logits), and its first logits."""
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=256, n_threads=1, logits_all=True, verbose=False
    )
    llm.eval(ids)
    first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
    out: list[int] = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    llm.close()
    return out, first


def hf_greedy(model, ids: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """transformers' greedy continuation (argmax, no EOS stop, like the loop above) and its
    first logits."""
    seq, out = list(ids), []
    with torch.no_grad():
        for step in range(n):
            logits = model(torch.tensor([seq])).logits[0, -1]
            if step == 0:
                first = logits.double().numpy()
            out.append(int(logits.argmax()))
            seq.append(out[-1])
    return out, first


def as_stored(model, dtype: torch.dtype):
    """The model with its matrices rounded to the file's type: the weights llama.cpp reads."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(p.to(dtype).float())
    return model


@pytest.fixture(scope="module")
def stories_lora(tmp_path_factory) -> Path:
    """A LoRA run on stories260K, the real tiny pretrained Llama that llama.cpp's own tests use."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    folder = tmp_path_factory.mktemp("stories")
    overrides = run_overrides(
        folder,
        "llama",
        "lora",
        6,
        **{
            "model.config": "null",
            "model.name": str(SHARED_DATA / "stories260K"),
            "model.tokenizer": "null",
            "data.validation": "null",
            "train.lr": 3e-2,
        },
    )
    train(load_config(None, overrides))
    return folder / "run"


@pytest.mark.parametrize(("quant", "dtype"), [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_16_bit_gguf_of_a_lora_run_matches_transformers_token_for_token(
    stories_lora, tmp_path, quant, dtype
):
    out = tmp_path / "stories.gguf"
    assert main(["export", str(stories_lora), "--gguf", str(out), "--quant", quant]) == 0
    loaded = load_for_inference(stories_lora)
    merged = as_stored(loaded.model.merge_and_unload(), dtype)
    ids = loaded.tokenizer(PROMPT)["input_ids"]
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, verbose=False, vocab_only=True)
    assert llm.tokenize(PROMPT.encode()) == ids  # llama.cpp tokenizes as the HF tokenizer does
    llm.close()
    expected, hf_logits = hf_greedy(merged, ids, NEW_TOKENS)
    got, cpp_logits = llama_cpp_greedy(out, ids, NEW_TOKENS)
    assert got == expected
    np.testing.assert_allclose(cpp_logits, hf_logits, atol=0.05, rtol=0)  # seen: 0.006 / 0.028


def test_q8_0_gguf_stays_close(stories_lora, tmp_path):
    out = export_gguf(stories_lora, tmp_path / "q8.gguf", quant="q8_0")
    loaded = load_for_inference(stories_lora)
    merged = loaded.model.merge_and_unload()
    ids = loaded.tokenizer(PROMPT)["input_ids"]
    expected, hf_logits = hf_greedy(merged, ids, NEW_TOKENS)
    got, cpp_logits = llama_cpp_greedy(out, ids, NEW_TOKENS)
    # Stated tolerance for 8-bit blocks: the first 16 tokens agree and the first logits are within
    # 2% of their range (seen: 48 of 64 tokens agree, logits within 0.6%).
    assert got[:16] == expected[:16]
    spread = hf_logits.max() - hf_logits.min()
    assert np.abs(cpp_logits - hf_logits).max() < 0.02 * spread


def test_qwen2_with_a_byte_level_tokenizer(tmp_path):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # random q/k/v biases, so the file's biases are exercised
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    folder = tmp_path / "qwen2"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(folder)
    # Loaded back from a qwen2 folder, transformers gives it Qwen2's pre-tokenizer (digits one by
    # one): the GGUF must say `qwen2` so llama.cpp splits the same way.
    tokenizer = AutoTokenizer.from_pretrained(folder)
    out = export_gguf(folder, tmp_path / "qwen2.gguf", quant="f16")
    text = json.loads((NUMBERS / "train.jsonl").open().readline())["input"] + " in words, please"
    ids = tokenizer(text)["input_ids"]
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, verbose=False, vocab_only=True)
    assert llm.tokenize(text.encode(), add_bos=False) == ids
    llm.close()
    expected, _ = hf_greedy(as_stored(model, torch.float16), ids, NEW_TOKENS)
    got, _ = llama_cpp_greedy(out, ids, NEW_TOKENS)
    assert got == expected


def test_non_llama_family_and_taken_output_are_one_line_errors(tmp_path, capsys):
    overrides = run_overrides(tmp_path / "g", "gpt2", "full", 1, **{"data.validation": "null"})
    train(load_config(None, overrides))
    run = tmp_path / "g" / "run"
    capsys.readouterr()
    assert main(["export", str(run), "--gguf", str(tmp_path / "g.gguf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not in the Llama family" in err
    assert not (tmp_path / "g.gguf").exists()
    (tmp_path / "taken.gguf").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        export_gguf(run, tmp_path / "taken.gguf")
    assert main(["export", str(run)]) == 2  # neither --out nor --gguf


def test_config_built_llama_lora_run_with_the_byte_level_tokenizer(tmp_path):
    overrides = run_overrides(
        tmp_path / "t", "llama", "lora", 4, **{"data.validation": "null", "train.lr": 3e-2}
    )
    train(load_config(None, overrides))
    run = tmp_path / "t" / "run"
    out = export_gguf(run, tmp_path / "tiny.gguf")
    loaded = load_for_inference(run)
    text = "Spell 439 in words:"
    ids = loaded.tokenizer(text)["input_ids"]
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, verbose=False, vocab_only=True)
    assert llm.tokenize(text.encode(), add_bos=False) == ids  # the gpt-2 pre-tokenizer path
    llm.close()
    merged = as_stored(loaded.model.merge_and_unload(), torch.float16)
    expected, _ = hf_greedy(merged, ids, NEW_TOKENS)
    got, _ = llama_cpp_greedy(out, ids, NEW_TOKENS)
    assert got == expected
