"""The TFLM-target flash image ("TSWI", version 1): header, segment table, aligned segments.

Byte layout (little-endian), read by `delegates/micro/tswap_micro.c`::

    0  magic b"TSWI"      16 image_size (header included)
    4  version (1)        20 alignment (power of two; every segment offset is a multiple)
    8  header_size        24 table_crc32 (CRC32 of the segment table bytes)
   12  segment_count      28 header_crc32 (CRC32 of bytes 0..27)
   32  segment_count x {offset, size, crc32, reserved=0}, then the segments in order, zero padded

CRC32 is zlib's. One segment holds the bytes of one constant tensor buffer. Written by
`tflm_swap.converters.flash_image.build_image`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ..errors import SegmentIntegrityError

MAGIC = b"TSWI"
VERSION = 1
HEADER_BYTES = 32
ENTRY_BYTES = 16
DEFAULT_ALIGNMENT = 16
MAX_ALIGNMENT = 1 << 20  # a flash sector is far smaller; larger only pads the image
HEADER = struct.Struct("<4sIIIII")  # magic, version, header_size, count, image_size, alignment
ENTRY = struct.Struct("<IIII")


@dataclass(frozen=True)
class ImageSegment:
    """One segment of the image: where it is (from the image start), its size and CRC32."""

    id: int
    offset: int
    size: int
    crc32: int


def parse_image(image: bytes, check_payloads: bool = True) -> list[ImageSegment]:
    """Validate an image as the C core does and return its segment table."""
    if len(image) < HEADER_BYTES:
        raise SegmentIntegrityError(f"image of {len(image)} bytes is shorter than its {HEADER_BYTES}-byte header")
    magic, version, header_size, count, image_size, alignment = HEADER.unpack_from(image)
    table_crc, header_crc = struct.unpack_from("<II", image, 24)
    if magic != MAGIC:
        raise SegmentIntegrityError(f"not a tflm_swap TFLM image (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise SegmentIntegrityError(f"image version {version}; this tflm_swap reads version {VERSION}")
    if zlib.crc32(image[:28]) != header_crc:
        raise SegmentIntegrityError("image header CRC mismatch (corrupt header)")
    if header_size != HEADER_BYTES + ENTRY_BYTES * count or image_size > len(image) or image_size < header_size:
        raise SegmentIntegrityError(
            f"image header inconsistent: {count} segments, header {header_size} bytes, image_size "
            f"{image_size}, {len(image)} bytes present (truncated?)"
        )
    table = image[HEADER_BYTES:header_size]
    if zlib.crc32(table) != table_crc:
        raise SegmentIntegrityError("image segment table CRC mismatch")
    segments, end = [], header_size
    for i in range(count):
        offset, size, crc, reserved = ENTRY.unpack_from(table, i * ENTRY_BYTES)
        if reserved or offset % alignment or offset < end or offset + size > image_size:
            raise SegmentIntegrityError(f"segment {i} (offset {offset}, size {size}) is misplaced")
        if check_payloads and zlib.crc32(image[offset : offset + size]) != crc:
            raise SegmentIntegrityError(f"segment {i} fails its CRC32 check")
        segments.append(ImageSegment(i, offset, size, crc))
        end = offset + size
    return segments
