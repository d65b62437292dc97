"""Process memory policy for finetuning runs on the CPU.

glibc's allocator raises its mmap threshold (up to 32 MiB) each time a large block is freed, after
which tensors below that size come from the heap, where freed space fragments and the resident
size creeps up step after step (SmolLM2-135M LoRA, batch 8: +150 MiB per step, measured with
``/proc/self/statm``). A fixed threshold of :data:`MMAP_THRESHOLD` keeps tensors of that size and
more in their own mappings, returned to the system when freed: the resident size stays flat.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

#: Bytes from which allocations get their own mapping (glibc ``M_MMAP_THRESHOLD``).
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold for this process (see the module docs); ``True`` when set.
    A no-op elsewhere (macOS, Windows, musl). Process-wide and not undone: call it from a
    process that exists to finetune (the ``ftscale finetune`` command, a study worker)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False
