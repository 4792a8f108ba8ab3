"""`train.host_memory: reuse` (the default): on CPU runs, freed buffers stay in glibc's heap.

glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with a fresh `mmap`
and unmaps it on `free`. A CPU training step allocates and frees the same large buffers every
step: the LM head's logits chunk and its gradient (target positions x vocabulary), the bf16 copy
of a tied embedding under autocast, the embedding's gradient. Each step the kernel zero-fills
their pages again, one page fault at a time; in bench/throughput.py's profile those aten::fill_
and copy_ calls were the largest cost after the matmuls. Turning mmap allocation off and raising
the trim threshold keeps the pages mapped for the next step (bench/README.md has the numbers).
It is what PyTorch's CPU performance guide gets from preloading jemalloc or tcmalloc, done with
`mallopt` on the running process. The cost: the process keeps up to `TRIM_THRESHOLD` of freed
memory instead of returning it, so its RSS stays near its peak.

`system` leaves malloc as it is (for example when another allocator is preloaded). GPU runs are
left alone: their large buffers live on the device.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

import torch

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # freed memory kept at the heap's top before it is returned


def configure_host_memory(mode: str, device: torch.device) -> str | None:
    """Apply `train.host_memory` for a run on `device`; returns a log line when it changed malloc."""
    if mode != "reuse" or device.type != "cpu":
        return None
    if not _keep_freed_memory():
        return None
    return "host memory: freed buffers are reused (glibc mmap off; train.host_memory=system undoes)"


@functools.cache
def _keep_freed_memory() -> bool:
    """Once per process; False where libc is not glibc (macOS, musl), which is left alone."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success; both must hold or the mix is pointless.
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
