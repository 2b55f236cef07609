"""madvise(2) for the runtime's page-level memory control (Linux; elsewhere `madvise` is None)."""

from __future__ import annotations

import ctypes
import os
import sys

MADV_DONTNEED, MADV_HUGEPAGE = 4, 14
HUGE_PAGE = 2 << 20
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

madvise = getattr(ctypes.CDLL(None, use_errno=True), "madvise", None) if sys.platform.startswith("linux") else None
if madvise is not None:
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
