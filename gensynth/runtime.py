"""Process settings the ``gensynth`` command applies before PyTorch allocates its first tensor.

Transparent huge pages for large CPU tensors. PyTorch's CPU allocator reads ``THP_MEM_ALLOC_ENABLE`` once, at
the process's first allocation; when it is set, tensors of 2 MB and more are aligned to 2 MB and advised as huge
pages (``madvise``), so that touching a fresh tensor costs one page fault per 2 MB instead of one per 4 KB. A
training step allocates its gradients, autocast weight copies and large activations afresh every iteration:
one fresh 38 MB weight gradient (OASIS's 1024x1024x3x3 layers) took 24 ms to fill without and 8 ms with the
setting, and a bf16 OASIS Cityscapes 64x128 iteration from 2.55-2.62 to 2.13-2.38 s on a 2-core AMX CPU
(benchmarks/README.md, "Huge pages"). Results are unchanged: only where memory comes from changes. It needs
the kernel's THP mode ``always`` or ``madvise`` (``/sys/kernel/mm/transparent_hugepage/enabled``); elsewhere it
is a no-op. A value the user set, ``0`` included, is left alone (PyTorch reads it with C's ``atoi``: ``true``
means off).
"""
from __future__ import annotations

import os
import re
from typing import MutableMapping

HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def prefer_huge_pages(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set ``THP_MEM_ALLOC_ENABLE=1`` unless the variable is set already; returns whether it asks for huge pages.

    Takes effect only in a process whose PyTorch has not allocated memory yet (the command line calls it before
    importing torch); child processes (torchrun workers, data-loader workers) inherit it."""
    env = os.environ if environ is None else environ
    env.setdefault(HUGE_PAGES_ENV, "1")
    return _c_atoi(env[HUGE_PAGES_ENV]) != 0


def _c_atoi(text: str) -> int:
    """C's ``atoi``, as PyTorch parses the variable: the leading integer, 0 when there is none ("true" -> 0)."""
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else 0
