"""CRC32 (zlib's polynomial and result) of a stage's segments, as fast as this machine allows.

The package's delegate library exports `uint32_t tflm_swap_crc32(uint32_t crc, const void *, size_t)`
(PCLMUL folding, ~16 GB/s against zlib.crc32's ~7 GB/s); it is called through ctypes, which releases
the GIL like zlib does. Without the library (package installed without its C extension), zlib.crc32.
"""

from __future__ import annotations

import ctypes
import zlib


def _load():
    from ..native import native_library

    function = getattr(native_library(), "tflm_swap_crc32", None)
    if function is None:  # no library (or no such symbol): fall back to zlib
        return None
    function.restype = ctypes.c_uint32
    function.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
    return function


_native = _load()
NATIVE = _native is not None


def crc32(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """zlib.crc32(data, value), computed by the native library when it is available."""
    view = memoryview(data)
    if _native is None or not view.contiguous or view.nbytes == 0:
        return zlib.crc32(view, value)
    if view.readonly:
        address = ctypes.cast(ctypes.c_char_p(view.obj), ctypes.c_void_p).value if isinstance(
            view.obj, bytes) and view.nbytes == len(view.obj) else None
        if address is None:  # a read-only slice we cannot address without a copy
            return zlib.crc32(view, value)
    else:
        address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    return _native(value, address, view.nbytes)


def crc32_at(address: int, size: int, value: int = 0) -> int:
    """zlib.crc32 of `size` bytes of (possibly read-only mapped) memory at `address`."""
    if _native is not None:
        return _native(value, address, size)
    return zlib.crc32((ctypes.c_char * size).from_address(address), value)
