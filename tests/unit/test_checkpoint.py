"""The checkpoint format on its own: tensors, manifests, choosing, pruning, safety checks."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from conftest import build_tiny_model
from tunesmith.checkpoint import (
    EmptyStateError,
    check_saved_weights,
    choose_checkpoint,
    ensure_not_empty,
    list_checkpoints,
    load_pickled,
    load_tensors,
    prune,
    publish,
    resume_state_names,
    save_tensors,
    verify,
    write_durably,
    write_manifest,
)
from tunesmith.config import TrainConfig
from tunesmith.errors import UserError
from tunesmith.methods import METHODS
from tunesmith.strategies.single import Single, SingleOptions
from tunesmith.train.resume import config_changes, convert_position


def make_checkpoint(root, step, metrics=None, payload=b"weights"):
    """A minimal complete checkpoint folder: one file plus its manifest."""
    folder = root / f"step-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(payload + str(step).encode())
    write_manifest(folder, {"step": step, "metrics": metrics or {}})
    return folder


def test_tied_weights_are_stored_once_and_come_back_tied(tmp_path):
    model = build_tiny_model("gpt2")  # GPT-2 ties lm_head to the token embedding
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["transformer.wte.weight"].data_ptr()
    save_tensors(state, tmp_path / "m.safetensors")
    loaded = load_tensors(tmp_path / "m.safetensors")
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    separate = {k: v.clone() for k, v in state.items()}
    save_tensors(separate, tmp_path / "untied.safetensors")
    embedding_bytes = state["transformer.wte.weight"].numel() * 4
    saved = (tmp_path / "m.safetensors").stat().st_size
    assert (tmp_path / "untied.safetensors").stat().st_size - saved >= embedding_bytes


def test_manifest_detects_flipped_bit_truncation_and_an_unfinished_write(tmp_path):
    folder = make_checkpoint(tmp_path, 1)
    assert verify(folder) is None
    weights = folder / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(bytes([original[0] ^ 1]) + original[1:])
    assert verify(folder) == "model.safetensors does not match its checksum (the file is corrupted)"
    weights.write_bytes(original[:-1])
    assert "model.safetensors has" in verify(folder)
    (folder / "manifest.json").unlink()
    assert verify(folder) == "no manifest.json (the write did not finish)"


def test_auto_picks_the_newest_valid_checkpoint_and_warns_about_the_others(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    make_checkpoint(root, 2)
    make_checkpoint(root, 10)
    broken = make_checkpoint(root, 12)
    (broken / "model.safetensors").write_bytes(b"garbage")
    (root / ".tmp-step-14").mkdir()  # an interrupted write is never a candidate
    warnings = []
    assert choose_checkpoint("auto", tmp_path / "run", warnings.append) == root / "step-10"
    assert len(warnings) == 1 and "step-12" in warnings[0] and "bytes" in warnings[0]
    # A run folder or a checkpoints folder given explicitly works the same way.
    assert choose_checkpoint(str(tmp_path / "run"), tmp_path, warnings.append) == root / "step-10"
    assert choose_checkpoint("auto", tmp_path / "elsewhere", warnings.append) is None
    with pytest.raises(UserError, match="not a usable checkpoint"):
        choose_checkpoint(str(broken), tmp_path, warnings.append)
    with pytest.raises(UserError, match="no such folder"):
        choose_checkpoint(str(tmp_path / "nope"), tmp_path, warnings.append)


def test_prune_keeps_the_newest_the_best_and_latest(tmp_path):
    root = tmp_path / "checkpoints"
    losses = {2: 3.0, 4: 1.0, 6: 2.0, 8: 2.9, 10: 2.7}
    for step, loss in losses.items():
        make_checkpoint(root, step, {"val_loss": loss})
    write_durably(root / "latest", "step-10\n")
    deleted = prune(root, keep_last=2, metric="val_loss", mode="min")
    assert sorted(p.name for p in deleted) == ["step-2", "step-6"]
    assert [s for s, _ in list_checkpoints(root)] == [10, 8, 4]
    prune(root, keep_last=1, metric="val_loss", mode="max")  # highest loss wins: step-8 stays
    assert [s for s, _ in list_checkpoints(root)] == [10, 8]
    assert prune(root, keep_last=0, metric=None, mode="min") == []


def test_publish_replaces_an_older_folder_of_the_same_name(tmp_path):
    old = tmp_path / "final"
    old.mkdir()
    (old / "a").write_text("old")
    new = tmp_path / "final.tmp"
    new.mkdir()
    (new / "a").write_text("new")
    publish(new, old)
    assert (old / "a").read_text() == "new" and not new.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["final"]


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_pickled_state_never_runs_code(tmp_path):
    path = tmp_path / "optimizer.pt"
    torch.save({"state": {}, "payload": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_pickled(path)
    torch.save({"state": {0: {"exp_avg": torch.ones(2)}}, "betas": (0.9, 0.99)}, path)
    assert load_pickled(path)["betas"] == (0.9, 0.99)


def test_empty_or_ungathered_weights_are_an_error_not_a_file(tmp_path):
    with pytest.raises(EmptyStateError, match="no tensors"):
        ensure_not_empty({}, "an adapter")
    # The ZeRO-3 shape: partitioned parameters are 0-element placeholders until gathered.
    placeholder = {"lora_A.weight": torch.empty(0), "lora_B.weight": torch.empty(0)}
    with pytest.raises(EmptyStateError, match="2 empty tensor"):
        ensure_not_empty(placeholder, "an adapter")
    ensure_not_empty({"w": torch.ones(2), "step": torch.empty(0, dtype=torch.long)}, "x")

    adapter = tmp_path / "final"
    adapter.mkdir()
    with pytest.raises(EmptyStateError, match="no weights were written"):
        check_saved_weights(adapter)
    save_file(placeholder, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(EmptyStateError, match="empty tensor"):
        check_saved_weights(adapter)
    save_file({"lora_A.weight": torch.ones(2, 2)}, str(adapter / "adapter_model.safetensors"))
    check_saved_weights(adapter)


def test_resume_state_is_the_whole_model_for_full_and_only_the_adapter_for_lora(tiny_llama):
    full = METHODS["full"](METHODS["full"].Options())
    assert resume_state_names(full, tiny_llama) == set(tiny_llama.state_dict())
    if "lora" not in METHODS:
        pytest.skip("method lora is not registered yet")
    lora = METHODS["lora"](METHODS["lora"].Options())
    model = lora.apply(tiny_llama, None)
    names = resume_state_names(lora, model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == trainable and all("lora_" in n for n in names)


def test_a_non_finite_gradient_skips_the_update(tiny_llama):
    strategy = Single(SingleOptions(device="cpu"), TrainConfig())
    model, optimizer = strategy.setup(tiny_llama, lambda m: torch.optim.AdamW(m.parameters()))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.tensor([[1, 5, 6, 7]])
    model(input_ids=ids, labels=ids).loss.backward()
    next(model.parameters()).grad[0, 0] = float("nan")
    norm = strategy.step(optimizer, max_grad_norm=1.0)
    assert not torch.isfinite(norm)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not optimizer.state and all(p.grad is None for p in model.parameters())
    model(input_ids=ids, labels=ids).loss.backward()  # a finite step still updates
    assert torch.isfinite(strategy.step(optimizer, max_grad_norm=1.0))
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_data_position_converts_between_process_counts():
    saved = {"epoch": 1, "position": 6, "batch_size": 4, "world_size": 2}
    position, note = convert_position(saved, batch_size=4, world=1)
    assert position == {"epoch": 1, "position": 12} and "48 examples" in note
    position, note = convert_position(saved, batch_size=4, world=2)
    assert position == {"epoch": 1, "position": 6} and note == ""
    position, note = convert_position(saved, batch_size=5, world=2)
    assert position == {"epoch": 1, "position": 4} and "8 examples" in note


def test_config_changes_name_what_matters_for_an_exact_resume():
    saved = {"train": {"lr": 1e-3, "max_steps": 10}, "output_dir": "a", "eval": {"eval_every": 5}}
    current = {"train": {"lr": 2e-3, "max_steps": 20}, "output_dir": "b", "eval": {"eval_every": 1}}
    assert config_changes(saved, current) == ["train.lr: 0.001 -> 0.002"]
    assert json.dumps(config_changes(saved, saved)) == "[]"


# The remaining security points, checked where the user meets them.


def test_recipes_are_read_with_yaml_safe_load(tmp_path):
    from tunesmith.config import load_config

    recipe = tmp_path / "evil.yaml"
    recipe.write_text('seed: !!python/object/apply:os.system ["echo pwned"]\n')
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(recipe)


def test_remote_code_runs_only_when_the_config_says_so():
    from tunesmith.config import ModelConfig
    from tunesmith.models.load import _source_kwargs

    assert _source_kwargs(ModelConfig(name="x"))["trust_remote_code"] is False
    assert _source_kwargs(ModelConfig(name="x", trust_remote_code=True))["trust_remote_code"]
