"""`tunesmith export` and multi-adapter `generate` on tiny runs: what they write loads with plain
transformers / peft and computes what the run's own final/ computes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from conftest import NUMBERS, run_overrides
from tunesmith import load_config
from tunesmith.cli import main
from tunesmith.errors import UserError
from tunesmith.export import export
from tunesmith.generate import GenerationSettings, generate_file, load_for_inference
from tunesmith.train.loop import train


def run(tmp_path: Path, name: str, method: str, **extra) -> Path:
    folder = tmp_path / name
    overrides = run_overrides(
        folder,
        "llama",
        method,
        4,
        **{"data.validation": "null", "eval.run_validation": "false", **extra},
    )
    train(load_config(None, overrides))
    return folder / "run"


def probe_logits(model) -> torch.Tensor:
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    return run(tmp_path_factory.mktemp("lora"), "a", "lora", **{"train.lr": 3e-2})


def test_adapter_export_loads_with_peft_and_leaves_source_alone(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    before = digest(lora_run)
    out = export(lora_run, tmp_path / "adapter")
    assert digest(lora_run) == before
    assert (out / "adapter_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(out / "base")  # the config-built base, saved
    model = PeftModel.from_pretrained(base, out)
    assert torch.equal(probe_logits(model), probe_logits(load_for_inference(lora_run).model))


def test_merged_export_is_a_plain_model_with_the_same_function(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM

    assert main(["export", str(lora_run), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(
        probe_logits(merged), probe_logits(load_for_inference(lora_run).model), atol=1e-5, rtol=0
    )


def test_export_casts_to_bf16(lora_run, tmp_path):
    from safetensors.torch import load_file

    out = export(lora_run, tmp_path / "bf16", dtype="bf16")
    tensors = load_file(out / "adapter_model.safetensors")
    assert tensors and all(t.dtype == torch.bfloat16 for t in tensors.values())


def test_export_refuses_existing_output_and_output_inside_source(lora_run, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        export(lora_run, taken)
    assert (taken / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="inside the source"):
        export(lora_run, lora_run / "exported")
    assert main(["export", str(lora_run), "--out", str(taken)]) == 2


def test_full_model_export_and_merge_refusals(tmp_path):
    from transformers import AutoModelForCausalLM

    freeze_run = run(tmp_path, "f", "freeze", **{"method.train_top_layers": 1})
    out = export(freeze_run, tmp_path / "full")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(probe_logits(model), probe_logits(load_for_inference(freeze_run).model))
    with pytest.raises(UserError, match="already a full model"):
        export(freeze_run, tmp_path / "full-merged", merge=True)
    prompt_run = run(tmp_path, "p", "prompt")
    with pytest.raises(UserError, match="no weights to fold"):
        export(prompt_run, tmp_path / "prompt-merged", merge=True)


def test_generate_with_several_adapters_on_one_base(lora_run, tmp_path):
    # Same seed and config, so both runs start from the same random base.
    other = run(tmp_path, "b", "lora", **{"train.lr": 1e-1, "method.r": 4})
    inputs = tmp_path / "in.jsonl"
    lines = (NUMBERS / "test.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    inputs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = GenerationSettings(max_new_tokens=6)

    def texts(path: Path) -> list[str]:
        return [json.loads(line)["generated_text"] for line in path.open()]

    generate_file(other, str(inputs), tmp_path / "alone.jsonl", settings)
    generate_file(lora_run, str(inputs), tmp_path / "shared.jsonl", settings, {"b": other}, use="b")
    generate_file(lora_run, str(inputs), tmp_path / "a.jsonl", settings, {"b": other})
    assert texts(tmp_path / "shared.jsonl") == texts(tmp_path / "alone.jsonl")
    generate_file(lora_run, str(inputs), tmp_path / "a-alone.jsonl", settings)
    assert texts(tmp_path / "a.jsonl") == texts(tmp_path / "a-alone.jsonl")
    with pytest.raises(UserError, match="no adapter of that name"):
        generate_file(lora_run, str(inputs), tmp_path / "x.jsonl", settings, {"b": other}, "c")


@pytest.mark.parametrize(
    ("method", "options"), [("lora", {}), ("freeze", {"method.num_freeze_layers": 1})]
)
def test_checkpoint_export_equals_the_final_model(method, options, tmp_path):
    # The last checkpoint and final/ hold the same trained state; export rebuilds the model from
    # the checkpoint's config.yaml and must compute exactly what final/ computes.
    finished = run(tmp_path, method, method, **{"checkpoint.save_every": 4, **options})
    out = export(finished / "checkpoints" / "step-4", tmp_path / "exported")
    assert torch.equal(
        probe_logits(load_for_inference(out).model),
        probe_logits(load_for_inference(finished).model),
    )
