"""Write the TFLM-target flash image (format: `tflm_swap.format.flash_image`)."""

from __future__ import annotations

import struct
import zlib

from tflm_swap.errors import TflmSwapError
from tflm_swap.format.flash_image import (
    DEFAULT_ALIGNMENT,
    ENTRY,
    ENTRY_BYTES,
    HEADER,
    HEADER_BYTES,
    MAGIC,
    MAX_ALIGNMENT,
    VERSION,
    ImageSegment,
)
from tflm_swap.format.segments import align


def build_image(payloads: list[bytes], alignment: int = DEFAULT_ALIGNMENT) -> tuple[bytes, list[ImageSegment]]:
    """Lay out `payloads` as an image; returns (image bytes, segment table)."""
    if alignment < 4 or alignment > MAX_ALIGNMENT or alignment & (alignment - 1):
        raise TflmSwapError(f"image alignment {alignment} must be a power of two in 4..{MAX_ALIGNMENT}")
    header_size = HEADER_BYTES + ENTRY_BYTES * len(payloads)
    segments, cursor = [], header_size
    for i, data in enumerate(payloads):
        offset = align(cursor, alignment)
        segments.append(ImageSegment(i, offset, len(data), zlib.crc32(data)))
        cursor = offset + len(data)
    image_size = max(cursor, header_size)
    if image_size >= 2**32:
        raise TflmSwapError(f"image of {image_size} bytes exceeds the 4 GiB a 32-bit flash address reaches")
    table = b"".join(ENTRY.pack(s.offset, s.size, s.crc32, 0) for s in segments)
    head = HEADER.pack(MAGIC, VERSION, header_size, len(payloads), image_size, alignment)
    head += struct.pack("<I", zlib.crc32(table))
    head += struct.pack("<I", zlib.crc32(head))
    image = bytearray(image_size)
    image[:header_size] = head + table
    for s, data in zip(segments, payloads):
        image[s.offset : s.offset + s.size] = data
    return bytes(image), segments
