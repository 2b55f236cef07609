"""The package's C library (`tflm_swap._native`, built by `pip install` from delegates/litert,
delegates/runtime and delegates/common): its path, for LiteRT's `load_delegate`, and the library
loaded with ctypes for the runtime's helpers (fast CRC32, the pager). The one place that finds it.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
from pathlib import Path

from .errors import DelegateError

LIBRARY_STEM = "_native"


def delegate_library() -> str:
    """Absolute path of the delegate shared library, for `load_delegate(path, options)`."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"{LIBRARY_STEM}{suffix}"
        if candidate.is_file():
            return str(candidate)
    raise DelegateError(
        f"the tflm_swap native library ({LIBRARY_STEM}*.so) is not in {here}: the package was "
        "installed without building its C extension; reinstall with `pip install .` (needs a C compiler)"
    )


@functools.cache
def native_library() -> ctypes.CDLL | None:
    """The native library loaded for its helper functions (CRC32, page-in jobs), or None when the
    package was installed without its C extension (callers then fall back to Python)."""
    try:
        return ctypes.CDLL(delegate_library())
    except (DelegateError, OSError):
        return None
