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
    HEADER_BYTES_V2,
    MAGIC,
    MAX_ALIGNMENT,
    MEMBER,
    MEMBER_NAME,
    MEMBER_NAME_BYTES,
    TILE,
    VERSION,
    VERSION_MEMBERS,
    VERSION_TILES,
    ImageMember,
    ImageSegment,
    TileEntry,
)
from tflm_swap.format.segments import align


def _check_alignment(alignment: int) -> None:
    if alignment < 4 or alignment > MAX_ALIGNMENT or alignment & (alignment - 1):
        raise TflmSwapError(f"image alignment {alignment} must be a power of two in 4..{MAX_ALIGNMENT}")


def build_image(payloads: list[bytes], alignment: int = DEFAULT_ALIGNMENT,
                tiles: list[TileEntry] | tuple[TileEntry, ...] = ()) -> tuple[bytes, list[ImageSegment]]:
    """Lay out `payloads` as an image; returns (image bytes, segment table). With `tiles` (the tile
    table of tiled operators, naming segments of `payloads`) the image is version 2, else 1."""
    _check_alignment(alignment)
    base = HEADER_BYTES_V2 if tiles else HEADER_BYTES
    header_size = base + ENTRY_BYTES * (len(payloads) + len(tiles))
    segments, cursor = [], header_size
    for i, data in enumerate(payloads):
        offset = align(cursor, alignment)
        segments.append(ImageSegment(i, offset, len(data), zlib.crc32(data)))
        cursor = offset + len(data)
    image_size = max(cursor, header_size)
    if image_size >= 2**32:
        raise TflmSwapError(f"image of {image_size} bytes exceeds the 4 GiB a 32-bit flash address reaches")
    table = b"".join(ENTRY.pack(s.offset, s.size, s.crc32, 0) for s in segments)
    table += b"".join(TILE.pack(t.first_segment, t.tiles, t.channels, t.tile_channels) for t in tiles)
    head = HEADER.pack(MAGIC, VERSION_TILES if tiles else VERSION, header_size, len(payloads), image_size, alignment)
    head += struct.pack("<I", zlib.crc32(table))
    if tiles:
        head += struct.pack("<IIII", len(tiles), 0, 0, 0)
    head += struct.pack("<I", zlib.crc32(head))
    image = bytearray(image_size)
    image[:header_size] = head + table
    for s, data in zip(segments, payloads):
        image[s.offset : s.offset + s.size] = data
    return bytes(image), segments


def build_container(members: list[tuple[str, bytes, bytes]],
                    alignment: int = DEFAULT_ALIGNMENT) -> tuple[bytes, list[ImageMember]]:
    """A version-3 container holding `members`, each (name, its image from `build_image`, the TFLM
    graph that image belongs to); returns (container bytes, member table)."""
    _check_alignment(alignment)
    names = [name for name, _, _ in members]
    bad = [n for n in names if not MEMBER_NAME.fullmatch(n)]
    if bad or len(set(names)) != len(names):
        raise TflmSwapError(f"member names {names} must be unique, 1..15 characters [A-Za-z0-9_]")
    header_size = HEADER_BYTES_V2 + MEMBER.size * len(members)
    table, cursor = [], header_size
    for name, image, graph in members:
        offset = align(cursor, alignment)
        table.append(ImageMember(name, offset, len(image), zlib.crc32(graph), len(graph)))
        cursor = offset + len(image)
    if cursor >= 2**32:
        raise TflmSwapError(f"container of {cursor} bytes exceeds the 4 GiB a 32-bit flash address reaches")
    rows = b"".join(MEMBER.pack(m.offset, m.size, m.graph_crc32, m.graph_size,
                                m.name.encode().ljust(MEMBER_NAME_BYTES, b"\0")) for m in table)
    head = HEADER.pack(MAGIC, VERSION_MEMBERS, header_size, len(members), cursor, alignment)
    head += struct.pack("<5I", zlib.crc32(rows), 0, 0, 0, 0)
    head += struct.pack("<I", zlib.crc32(head))
    out = bytearray(cursor)
    out[:header_size] = head + rows
    for m, (_, image, _) in zip(table, members):
        out[m.offset : m.offset + m.size] = image
    return bytes(out), table
