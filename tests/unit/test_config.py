"""Config: strict keys with suggestions, typed overrides, tagged unions, round trip."""

from __future__ import annotations

import pytest

from tunesmith.config import config_from_dict, explain, load_config, save_config
from tunesmith.errors import UserError


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_overrides_are_typed_by_the_field(tmp_path):
    cfg = load_config(None, ["train.lr=1e-4", "train.max_steps=50", "train.compile=true"])
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 50 and cfg.train.compile is True


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    path = write(tmp_path, "model:\n  name: x\ntrain:\n  max_steps: 5\n  lrr: 0.1\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    text = err.value.one_line()
    assert f"{path}:5" in text and "'train.lrr'" in text and "did you mean 'train.lr'" in text


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(UserError, match="did you mean 'train'"):
        load_config(write(tmp_path, "trian:\n  lr: 1\n"))


def test_wrong_type_and_bad_choice(tmp_path):
    with pytest.raises(UserError, match="train.batch_size expects int"):
        load_config(None, ["train.batch_size=many"])
    with pytest.raises(UserError, match="did you mean 'bf16-mixed'"):
        load_config(None, ["train.precision=bf16-mixd"])


def test_method_options_belong_to_their_method():
    # `rho` is an option of Green Trainer only; on full fine-tuning it is an unknown key.
    with pytest.raises(UserError, match="unknown key 'method.rho'"):
        config_from_dict({"method": {"name": "full", "rho": 0.5}})
    with pytest.raises(UserError, match="unknown method.name"):
        config_from_dict({"method": {"name": "no-such-method"}})


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(UserError, match=r"recipe.yaml:\d+: invalid YAML"):
        load_config(write(tmp_path, "train:\n  lr: [1, 2\n  x: 3\n"))


def test_resolved_config_feeds_back_unchanged(tmp_path):
    cfg = load_config(None, ["method.name=full", "train.max_steps=7", "data.train=a.jsonl"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


def test_explain_lists_fields_with_help():
    text = explain("train")
    assert "max_steps" in text and "Optimizer steps to run" in text
    with pytest.raises(UserError):
        explain("nonsense")
