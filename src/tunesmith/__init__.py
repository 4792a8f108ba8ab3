"""tunesmith: fine-tune language models from a laptop CPU to many GPU nodes.

Public API:
    load_config(path, overrides) -> Config
    train(cfg, overwrite=False) -> summary dict
    generate_file(model_dir, input_jsonl, output_jsonl, settings) -> number of records
"""

# The subpackage `tunesmith.train` is imported first so that the function below, not the
# subpackage, is what `tunesmith.train` names (importing a submodule later does not rebind it).
import tunesmith.train as _train_package  # noqa: F401
from tunesmith.config import load_config

__version__ = "0.1.0"
__all__ = ["load_config", "train", "generate_file", "__version__"]


def train(cfg, overwrite: bool = False):
    """Fine-tune as `cfg` says; returns the run summary. See tunesmith.train.loop.train."""
    from tunesmith.train.loop import train as run

    return run(cfg, overwrite=overwrite)


def generate_file(model_dir, input_path, output_path, settings=None):
    """Generate for every record of a jsonl file; see tunesmith.generate.generate_file."""
    from tunesmith.generate import GenerationSettings
    from tunesmith.generate import generate_file as run

    return run(model_dir, input_path, output_path, settings or GenerationSettings())
