"""Full model weights from a sharded resume checkpoint, in one process, without a process group.

    state = consolidated_model_state(Path("runs/a/checkpoints/step-100"))

For export and inspection: FSDP's SHARDED_STATE_DICT (torch.distributed.checkpoint, under
`sharded/`), FSDP's FULL_STATE_DICT (`full_state.pt`) and DeepSpeed's ZeRO checkpoint (under
`zero/`, consolidated to fp32 with DeepSpeed's zero_to_fp32, seed 003's ds_to_hf step) all come
out as a plain {name: tensor} dict with the model's own state-dict names.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch


def consolidated_model_state(directory: Path) -> dict[str, torch.Tensor] | None:
    """The full model state a strategy's `save_resume` wrote into `directory`, or None when the
    folder holds none of the sharded formats (a replicated checkpoint: model.safetensors)."""
    directory = Path(directory)
    if (directory / "sharded").is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "full.pt"
            dcp_to_torch_save(directory / "sharded", target)
            return dict(torch.load(target, map_location="cpu", weights_only=True)["model"])
    if (directory / "full_state.pt").is_file():
        state = torch.load(directory / "full_state.pt", map_location="cpu", weights_only=True)
        return dict(state["model"])
    if (directory / "zero").is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(directory / "zero"), tag="state")
        return {k: v.detach().cpu() for k, v in state.items()}
    return None
