"""`train.kernels`: fused GPU kernels swapped into the model (Liger-Kernel, CUDA only).

    train: {kernels: liger}

Liger-Kernel's Triton kernels replace the model's RMSNorm, rotary embedding and SwiGLU MLP in
place (same weights, same state dict), and its fused linear cross-entropy computes the LM head
and the loss over the target positions chunk by chunk without materialising their logits
(train/loss.py calls it through `FusedLoss`). Triton has no CPU driver, so on CPU this is a
UserError rather than a silent fallback.
"""

from __future__ import annotations

import torch
from torch import nn

from tunesmith.errors import UserError
from tunesmith.train.loss import FusedLoss


def apply_kernels(name: str, model: nn.Module, device: torch.device) -> FusedLoss | None:
    """Patch `model` with the kernels `train.kernels` names; returns the fused loss, if any.

    Raises:
        UserError: liger without CUDA, or without the liger-kernel package.
    """
    if name == "none":
        return None
    if device.type != "cuda":
        raise UserError(
            f"train.kernels={name} needs a CUDA GPU (Triton kernels); this run is on {device}",
            "set train.kernels=none",
        )
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance
    except ImportError:
        raise UserError(
            "train.kernels=liger needs the liger-kernel package",
            "pip install 'tunesmith[liger]' (or set train.kernels=none)",
        ) from None
    # The loss is tunesmith's (train/loss.py): the model's own forward keeps its plain head.
    _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=False)
    fused = LigerFusedLinearCrossEntropyLoss(ignore_index=-100, reduction="sum")

    def loss(
        weight: torch.Tensor, hidden: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return fused(weight, hidden, labels, bias).float()

    return loss
