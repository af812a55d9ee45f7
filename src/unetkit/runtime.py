"""Process-level helpers every stage may call (foundation layer: stdlib only).

`keep_freed_memory()` makes glibc keep freed memory for reuse: eager PyTorch training and
inference on a CPU then reuse activation buffers instead of page-faulting fresh ones.
"""

from __future__ import annotations

import ctypes


def keep_freed_memory() -> bool:
    """Ask glibc malloc to keep freed memory instead of returning it to the OS (no mmap for big
    blocks, no trimming), so eager PyTorch reuses activation buffers instead of page-faulting
    fresh ones on every forward. Process-wide; returns False where it is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**30))
