"""tunesmith: fine-tune language models from a laptop CPU to many GPU nodes.

Public API:
    load_config(path, overrides) -> Config
    train(cfg) -> summary dict
    generate_file(model_dir, input_jsonl, output_jsonl, settings)
"""

from tunesmith.config import load_config

__version__ = "0.1.0"
__all__ = ["load_config", "train", "generate_file", "__version__"]


def __getattr__(name: str):
    # Heavy modules (torch, transformers) load on first use, so `import tunesmith` stays cheap.
    if name == "train":
        from tunesmith.train.loop import train

        return train
    if name == "generate_file":
        from tunesmith.generate import generate_file

        return generate_file
    raise AttributeError(name)
