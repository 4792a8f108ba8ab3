"""Measured peak memory of live tensors, on any device: what the planner is checked against.

    with LiveTensorBytes() as live:
        train(cfg)
    live.peak  # bytes

A TorchDispatchMode sees every tensor an operator (factories included) returns; each distinct
storage is counted once, from creation until it is freed. So on CPU, where no caching allocator
keeps statistics, this is the analogue of `torch.cuda.max_memory_allocated`: tensor bytes only,
without the Python runtime, libraries and allocator slack that the process's RSS also holds.
Tensors made before the mode was entered are not seen: enter it before the model is built.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """Current and peak bytes of the tensor storages created while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._seen: dict[int, int] = {}  # id of a live storage -> its bytes

    def _freed(self, key: int, nbytes: int) -> None:
        if self._seen.pop(key, None) is not None:
            self.current -= nbytes

    def _track(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._seen:
            return
        nbytes = storage.nbytes()
        self._seen[key] = nbytes
        # The storage's Python object lives exactly as long as the storage (PyTorch keeps it).
        weakref.finalize(storage, self._freed, key, nbytes)
        self.current += nbytes
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self._track(item)
        return out
