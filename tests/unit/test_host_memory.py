"""train.host_memory=reuse: on CPU, a large freed buffer is served from the heap again instead of
a fresh mmap (whose pages the kernel zero-fills on every step)."""

from __future__ import annotations

import ctypes
import platform

import pytest
import torch

from tunesmith.train.host_memory import configure_host_memory


class Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            [
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            ]
        )
    ]


def mmapped_bytes() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2
    return libc.mallinfo2().hblkhd  # bytes in blocks malloc got from mmap


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_reuse_serves_large_buffers_from_the_heap():
    assert configure_host_memory("system", torch.device("cpu")) is None
    assert configure_host_memory("reuse", torch.device("cuda")) is None
    assert "reused" in configure_host_memory("reuse", torch.device("cpu"))
    before = mmapped_bytes()
    for _ in range(3):  # 64 MiB, twice glibc's largest mmap threshold
        buffer = torch.ones(16 << 20)
        assert mmapped_bytes() - before < 1 << 20
        del buffer
