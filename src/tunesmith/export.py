"""Export a trained model as a standard folder that needs nothing from tunesmith to load.

    tunesmith export runs/a --out exported/a                  # as trained: full model or adapter
    tunesmith export runs/a --out exported/a-merged --merge   # LoRA/IA3 folded into the base
    tunesmith export runs/a/checkpoints/step-100 --out exported/a-100 --dtype bf16
    tunesmith export runs/a --gguf a.gguf --quant q8_0         # one file for llama.cpp / Ollama

The source is a run folder (its `final/`), a `final/`-like model or adapter folder, or a resume
checkpoint (`checkpoints/step-N`, rebuilt from its config.yaml). Full models come out as a HF
folder (`AutoModel*.from_pretrained`); adapters as a PEFT folder
(`PeftModel.from_pretrained(base, out)`), with `base/` beside them when the base was built from a
config dict. `--merge` loads the base unquantized (even when training used a 4-bit one), folds
the adapter in and writes a plain HF model that loads without peft. The source is never written
to, and `--out` must be new or empty. `--gguf` writes a Llama-family model (an adapter merged
first) as one GGUF file (export_gguf.py).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import UserError
from tunesmith.generate import load_base_from_record, read_run_record, resolve_model_dir
from tunesmith.models.load import DTYPES
from tunesmith.train.run_dir import RUN_RECORD

MERGEABLE = ("lora", "ia3")


def export(
    source: str | Path, out: str | Path, merge: bool = False, dtype: str | None = None
) -> Path:
    """Write `source` as a standard HF (or PEFT adapter) folder at `out`; returns `out`.

    Raises:
        UserError: `out` exists and is not empty or lies inside the source; merging a method
            that has nothing to merge; an unreadable source.
    """
    source, out = Path(source).resolve(), Path(out).resolve()
    if not source.exists():
        raise UserError(f"{source}: no such run, model or checkpoint folder")
    if out == source or source in out.parents:
        raise UserError(f"--out {out} is inside the source {source}", "export to a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not empty", "choose a new folder")
    torch_dtype = DTYPES[dtype] if dtype else None
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staging = Path(tmp) / "out"
        if is_checkpoint(source):
            model_dir = Path(tmp) / "rebuilt"
            rebuild_from_checkpoint(source, model_dir)
        else:
            model_dir = resolve_model_dir(source)
        write_export(model_dir, staging, merge, torch_dtype)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    return out


def export_gguf(source: str | Path, out: str | Path, quant: str = "f16") -> Path:
    """Write `source` (a LoRA/IA3 adapter merged into its base first) as a GGUF file at `out`.

    Raises:
        UserError: `out` exists; a method with nothing to merge; a model outside the Llama family.
    """
    from tunesmith.export_gguf import check_gguf_model, write_gguf

    source, out = Path(source).resolve(), Path(out).resolve()
    if not source.exists():
        raise UserError(f"{source}: no such run, model or checkpoint folder")
    if out.exists():
        raise UserError(f"--gguf {out} already exists", "choose a new file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        if is_checkpoint(source):
            model_dir = Path(tmp) / "rebuilt"
            rebuild_from_checkpoint(source, model_dir)
        else:
            model_dir = resolve_model_dir(source)
        record = read_run_record(model_dir)
        if (model_dir / "adapter_config.json").is_file():
            _check_mergeable(model_dir, record, "--gguf")
            adapter = _load_adapter(model_dir, record)
            check_gguf_model(adapter.get_base_model().config.model_type)
            model = adapter.merge_and_unload()
        else:
            from transformers import AutoConfig, AutoModelForCausalLM

            check_gguf_model(AutoConfig.from_pretrained(model_dir).model_type)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        from transformers import AutoTokenizer

        staging = Path(tmp) / "model.gguf"
        write_gguf(model, AutoTokenizer.from_pretrained(model_dir), staging, quant)
        staging.rename(out)  # a half-written file never carries the final name
    return out


SHARDED_FORMATS = ("sharded", "full_state.pt", "zero")  # strategies/consolidate.py reads them


def is_checkpoint(folder: Path) -> bool:
    """A resume checkpoint (checkpoint.py's layout, replicated or sharded), not a model folder."""
    if (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file():
        return False
    weights = ("model.safetensors", *SHARDED_FORMATS)
    return (folder / "config.yaml").is_file() and any((folder / w).exists() for w in weights)


def rebuild_from_checkpoint(checkpoint: Path, model_dir: Path) -> None:
    """Rebuild the run's model as training built it, load the checkpoint, save it as final/ is."""
    from tunesmith.checkpoint import MODEL_FILE, load_model_state, load_tensors
    from tunesmith.config import load_config
    from tunesmith.methods import METHODS
    from tunesmith.models.load import is_encoder_decoder, load_config_of, load_model
    from tunesmith.train.loop import seed_everything
    from tunesmith.train.run_dir import write_run_record

    cfg = load_config(checkpoint / "config.yaml")
    cfg.model.quantization = "none"  # export always works on the unquantized base
    method = METHODS[cfg.method.name](cfg.method)
    seed_everything(cfg.seed)  # a base built from a config gets the same weights as in training
    loaded = load_model(cfg.model, "fp32", activation_checkpointing=False)
    model = method.apply(loaded.model, loaded.tokenizer)
    from tunesmith.strategies.consolidate import consolidated_model_state

    state = consolidated_model_state(checkpoint)  # FSDP / DeepSpeed shards, gathered here
    load_model_state(model, state if state is not None else load_tensors(checkpoint / MODEL_FILE))
    model_dir.mkdir(parents=True)
    model.config.use_cache = True
    method.save(model, loaded.tokenizer, model_dir, model.state_dict())
    write_run_record(cfg, model_dir, is_encoder_decoder(cfg.model, load_config_of(cfg.model)))


def write_export(model_dir: Path, out: Path, merge: bool, dtype: torch.dtype | None) -> None:
    """Write the model or adapter of `model_dir` (a final/-like folder) into `out`."""
    record = read_run_record(model_dir)
    if (model_dir / "adapter_config.json").is_file():
        if merge:
            _check_mergeable(model_dir, record, "--merge")
            merged = _load_adapter(model_dir, record).merge_and_unload()
            _save_model(merged, model_dir, out, dtype)
            _write_record(record, out, merged_from=str(model_dir))
            return
        _save_adapter(model_dir, record, out, dtype)
        return
    if merge:
        raise UserError(f"{model_dir} is already a full model: nothing to merge", "drop --merge")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = AutoConfig.from_pretrained(model_dir)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_pretrained(model_dir, dtype=dtype or "auto")
    _save_model(model, model_dir, out, dtype)
    _write_record(record, out)


def _check_mergeable(model_dir: Path, record: dict[str, Any], option: str) -> None:
    method = (record.get("method") or {}).get("name") or _peft_type(model_dir)
    if method not in MERGEABLE:
        raise UserError(
            f"{option}: method {method} has no weights to fold into the base",
            "only lora and ia3 adapters merge; export an adapter folder with --out",
        )


def _peft_type(model_dir: Path) -> str:
    config = json.loads((model_dir / "adapter_config.json").read_text(encoding="utf-8"))
    return str(config.get("peft_type", "")).lower()


def _load_adapter(model_dir: Path, record: dict[str, Any]) -> Any:
    from peft import PeftModel

    base, _, _ = load_base_from_record(record, torch.float32, model_dir)
    return PeftModel.from_pretrained(base, model_dir)


def _save_model(model: Any, model_dir: Path, out: Path, dtype: torch.dtype | None) -> None:
    if dtype is not None:
        model.to(dtype)
    model.config.use_cache = True
    model.save_pretrained(out, safe_serialization=True)
    _copy_tokenizer(model_dir, out)


def _save_adapter(
    model_dir: Path, record: dict[str, Any], out: Path, dtype: torch.dtype | None
) -> None:
    """Re-save the adapter through PEFT (casting it if asked), with base/ when there is one."""
    model = _load_adapter(model_dir, record)
    model.save_pretrained(out, safe_serialization=True)
    if dtype is not None:
        _cast_file(out / "adapter_model.safetensors", dtype)
    _copy_tokenizer(model_dir, out)
    if (model_dir / "base").is_dir():
        shutil.copytree(model_dir / "base", out / "base")
    _write_record(record, out)


def _cast_file(path: Path, dtype: torch.dtype) -> None:
    """Cast the floating-point tensors of a safetensors file in place (our own staging copy)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(cast, path, metadata={"format": "pt"})


def _copy_tokenizer(model_dir: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    # A folder without tokenizer files exports without them.
    with contextlib.suppress(OSError, ValueError):
        AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)


def _write_record(record: dict[str, Any], out: Path, merged_from: str | None = None) -> None:
    if not record:
        return
    record = dict(record)
    if merged_from is not None:
        record["merged_from"] = merged_from
    (out / RUN_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
