"""Process memory control for the stage runtime: madvise(2) (Linux; elsewhere `madvise` is None),
`bytes` objects filled in place, glibc's mmap threshold and heap trimming, huge-page hints on
interpreter arenas."""

from __future__ import annotations

import ctypes
import os
import sys

import numpy as np

MADV_DONTNEED, MADV_HUGEPAGE = 4, 14
HUGE_PAGE = 2 << 20
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

madvise = getattr(ctypes.CDLL(None, use_errno=True), "madvise", None) if sys.platform.startswith("linux") else None
if madvise is not None:
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
bytes_address = ctypes.pythonapi.PyBytes_AsString
bytes_address.restype = ctypes.c_void_p
bytes_address.argtypes = [ctypes.py_object]


def writable_bytes(n: int) -> tuple[bytes, memoryview]:
    """A new, zeroed `bytes` object and a writable view of it, to be filled before it is shared.

    LiteRT takes model content only as `bytes`; building it this way (the C API's
    PyBytes_FromStringAndSize(NULL, n) pattern) lets segments be read straight into place instead
    of into a buffer that is then copied, so a stage's weights exist once in memory.
    """
    data = _new_bytes(None, n)
    zero_pages(bytes_address(data), n)
    return data, bytes_view(data)


def zero_pages(address: int, n: int) -> None:
    """Zero `n` bytes of private memory at `address` without making its whole pages resident.

    Whole pages inside are dropped (MADV_DONTNEED: private anonymous pages then read as zeros and
    take no RAM until written); only the partial pages at the edges are written. So a stage buffer
    holds RAM for the bytes a load writes into it, not for its whole size. Falls back to memset.
    """
    low, high = -(-address // PAGE) * PAGE, (address + n) // PAGE * PAGE
    if high - low < PAGE or madvise is None or madvise(low, high - low, MADV_DONTNEED) != 0:
        ctypes.memset(address, 0, n)
        return
    ctypes.memset(address, 0, low - address)
    ctypes.memset(high, 0, address + n - high)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1 << 20
_mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc only


def pin_mmap_threshold() -> None:
    """Make glibc serve every allocation of 1 MiB or more with its own mapping, unmapped on free.

    By default glibc raises its mmap threshold (up to 32 MiB) each time such a block is freed, and
    from then on keeps freed blocks below it in its heaps: XNNPACK's packed copy of a released
    stage's weights (and a replaced stage buffer) would stay resident, and the process would hold
    far more than the budget (measured: 145 MiB of weights RSS for a 128 MiB budget). Pinning the
    threshold (what `MALLOC_MMAP_THRESHOLD_=1048576` does) applies to the whole process; it is
    glibc's own behaviour before its first raise, with 1 MiB instead of 128 KiB.
    """
    if _mallopt is not None:
        _mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only


def trim_heap() -> None:
    """Return the free pages inside glibc's heaps to the system (malloc_trim(0)).

    A released stage frees many blocks below the mmap threshold (its interpreter's tensors and
    node data, small activation arenas, kernel scratch buffers). glibc gives heap memory back only
    from the top of a heap, so these freed pages stayed resident and added up over the first few
    invokes (MobileNetV2, builtin kernels, 3 stages: +2 to +4 MiB of VmHWM between the first and
    the fifth invoke); malloc_trim(0) releases every free page wherever it is. Runs once per
    invoke, after the last streamed stage is released, on the prefetch thread (ctypes releases
    the GIL) behind the loads already queued. Cost: about 0.35 ms per call, and the released
    pages are faulted in again by the next invoke's stages.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


def bytes_view(data: bytes) -> memoryview:
    """A writable view of a bytes object that only this module holds (see writable_bytes)."""
    return memoryview((ctypes.c_char * len(data)).from_address(bytes_address(data))).cast("B")


def tensor_span(interpreter, index: int) -> tuple[int, int]:
    """(address, size) of a tensor's data; the numpy view is dropped at once (LiteRT refuses to
    invoke while one is alive). (0, 0) for a 0-d tensor: LiteRT gives a numpy scalar, not a view."""
    array = interpreter.tensor(index)()
    span = (array.ctypes.data, array.nbytes) if isinstance(array, np.ndarray) else (0, 0)
    del array
    return span


def arena_tensors(interpreter, model_bytes: bytes) -> tuple[int, int]:
    """The tensors at the start and at the end of an allocated interpreter's activation memory:
    those with data outside the model bytes (constants point into the model). (-1, -1): none."""
    base, size = bytes_address(model_bytes), len(model_bytes)
    first = last = -1
    low, high = None, 0
    for detail in interpreter.get_tensor_details():
        try:
            address, nbytes = tensor_span(interpreter, detail["index"])
        except ValueError:  # no data (optional or unallocated tensor)
            continue
        if nbytes == 0 or base <= address < base + size:
            continue
        if low is None or address < low:
            low, first = address, detail["index"]
        if address + nbytes > high:
            high, last = address + nbytes, detail["index"]
    return first, last


def advise_huge_pages(start: int, end: int) -> None:
    """madvise(MADV_HUGEPAGE) on the pages of [start, end) when they can hold a huge page; the
    kernel uses huge pages for the 2 MiB-aligned blocks inside the mapping. A no-op where it cannot
    apply (no THP in the kernel, non-Linux). Only a hint: contents are unchanged."""
    low, high = start // PAGE * PAGE, -(-end // PAGE) * PAGE
    if madvise is not None and high - low >= HUGE_PAGE:
        madvise(low, high - low, MADV_HUGEPAGE)
