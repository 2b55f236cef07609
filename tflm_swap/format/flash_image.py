"""The TFLM-target flash image ("TSWI", version 1 or 2): header, segment table, aligned segments.

Byte layout (little-endian), read by `delegates/micro/tswap_micro.c`::

    0  magic b"TSWI"      16 image_size (header included)
    4  version (1)        20 alignment (power of two; every segment offset is a multiple)
    8  header_size        24 table_crc32 (CRC32 of the segment table bytes)
   12  segment_count      28 header_crc32 (CRC32 of bytes 0..27)
   32  segment_count x {offset, size, crc32, reserved=0}, then the segments in order, zero padded

Version 2 (written only when the graph has tiled operators; version 1 otherwise) has a 48-byte
header (version 2, `tile_count` at 28, three reserved zero words at 32..43, header_crc32 of bytes
0..43 at 44; table_crc32 covers both tables) and, after the segment table, a tile table of
`tile_count` x {first_segment, tiles, channels, tile_channels}.

Version 3 is a container (a cascade's image): several members' images, each a complete version-1 or
-2 image, in one file. Its 48-byte header is version 2's with `member_count` at 12, `table_crc32`
over the member table and bytes 28..43 reserved (zero); after it, `member_count` x {offset, size,
graph_crc32, graph_size, name[16]} (32 bytes each; name 1..15 characters [A-Za-z0-9_], NUL-padded),
members ascending, aligned, non-overlapping, inside image_size. Written by
`tflm_swap.converters.flash_image.build_container`, read by `parse_container`.

CRC32 is zlib's. One segment holds the bytes of one constant tensor buffer, or one weight tile of a
tiled operator (filter slice, then bias slice at the next multiple of 4). Written by
`tflm_swap.converters.flash_image.build_image`.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

from ..errors import SegmentIntegrityError

MAGIC = b"TSWI"
VERSION = 1
VERSION_TILES = 2
VERSION_MEMBERS = 3
HEADER_BYTES = 32
HEADER_BYTES_V2 = 48
ENTRY_BYTES = 16
DEFAULT_ALIGNMENT = 16
MAX_ALIGNMENT = 1 << 20  # a flash sector is far smaller; larger only pads the image
HEADER = struct.Struct("<4sIIIII")  # magic, version, header_size, count, image_size, alignment
ENTRY = struct.Struct("<IIII")
TILE = struct.Struct("<IIII")  # first_segment, tiles, channels, tile_channels
MEMBER = struct.Struct("<IIII16s")  # offset, size, graph_crc32, graph_size, name
MEMBER_NAME_BYTES = 16
MEMBER_NAME = re.compile(r"[A-Za-z0-9_]{1,15}")


@dataclass(frozen=True)
class ImageSegment:
    """One segment of the image: where it is (from the image start), its size and CRC32."""

    id: int
    offset: int
    size: int
    crc32: int


@dataclass(frozen=True)
class TileEntry:
    """One tile-table entry: a tiled operator's weights in `tiles` consecutive segments from
    `first_segment`, `tile_channels` output channels each (the last may hold fewer), `channels` in all."""

    first_segment: int
    tiles: int
    channels: int
    tile_channels: int


@dataclass(frozen=True)
class ImageMember:
    """One member of a version-3 container: its name, where its image is (from the container start),
    its size, and the CRC32 and size of the TFLM graph it belongs to."""

    name: str
    offset: int
    size: int
    graph_crc32: int
    graph_size: int


def parse_image(image: bytes, check_payloads: bool = True) -> list[ImageSegment]:
    """Validate an image as the C core does and return its segment table."""
    return _parse(image, check_payloads)[0]


def parse_tile_table(image: bytes) -> list[TileEntry]:
    """Validate an image as the C core does and return its tile table (empty for version 1)."""
    return _parse(image, False)[1]


def _parse(image: bytes, check_payloads: bool) -> tuple[list[ImageSegment], list[TileEntry]]:
    if len(image) < HEADER_BYTES:
        raise SegmentIntegrityError(f"image of {len(image)} bytes is shorter than its {HEADER_BYTES}-byte header")
    magic, version, header_size, count, image_size, alignment = HEADER.unpack_from(image)
    if magic != MAGIC:
        raise SegmentIntegrityError(f"not a tflm_swap TFLM image (magic {magic!r}, expected {MAGIC!r})")
    if version == VERSION_MEMBERS:
        raise SegmentIntegrityError("a cascade container (version 3), not one model's image: read it with "
                                    "parse_container")
    if version not in (VERSION, VERSION_TILES):
        raise SegmentIntegrityError(f"image version {version}; this tflm_swap reads versions {VERSION} and "
                                    f"{VERSION_TILES}")
    base = HEADER_BYTES if version == VERSION else HEADER_BYTES_V2
    if len(image) < base or zlib.crc32(image[: base - 4]) != struct.unpack_from("<I", image, base - 4)[0]:
        raise SegmentIntegrityError("image header CRC mismatch (corrupt header)")
    table_crc = struct.unpack_from("<I", image, 24)[0]
    n_tiles = 0 if version == VERSION else struct.unpack_from("<I", image, 28)[0]
    if version == VERSION_TILES and any(struct.unpack_from("<III", image, 32)):
        raise SegmentIntegrityError("image header inconsistent: reserved words are not zero")
    if header_size != base + ENTRY_BYTES * (count + n_tiles) or image_size > len(image) or image_size < header_size:
        raise SegmentIntegrityError(
            f"image header inconsistent: {count} segments, {n_tiles} tiled operators, header {header_size} "
            f"bytes, image_size {image_size}, {len(image)} bytes present (truncated?)"
        )
    if zlib.crc32(image[base:header_size]) != table_crc:
        raise SegmentIntegrityError("image segment table CRC mismatch")
    segments = _segments(image, base, count, header_size, image_size, alignment, check_payloads)
    tiles = [TileEntry(*TILE.unpack_from(image, base + ENTRY_BYTES * (count + i))) for i in range(n_tiles)]
    for i, t in enumerate(tiles):
        if (t.tiles < 1 or t.tile_channels < 1 or t.first_segment + t.tiles > count
                or not (t.tiles - 1) * t.tile_channels < t.channels <= t.tiles * t.tile_channels):
            raise SegmentIntegrityError(f"tile-table entry {i} {t} is inconsistent")
    return segments, tiles


def _segments(image: bytes, base: int, count: int, header_size: int, image_size: int, alignment: int,
              check_payloads: bool) -> list[ImageSegment]:
    table = image[base : base + ENTRY_BYTES * count]
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


def parse_container(image: bytes, check_payloads: bool = True) -> list[ImageMember]:
    """Validate a version-3 container as the C core does (`tswap_container_open`), and each member's
    image with `parse_image`; return the member table."""
    if len(image) < HEADER_BYTES_V2:
        raise SegmentIntegrityError(f"container of {len(image)} bytes is shorter than its "
                                    f"{HEADER_BYTES_V2}-byte header")
    magic, version, header_size, count, image_size, alignment = HEADER.unpack_from(image)
    if magic != MAGIC or version != VERSION_MEMBERS:
        raise SegmentIntegrityError(f"not a tflm_swap cascade container (magic {magic!r}, version {version})")
    if zlib.crc32(image[: HEADER_BYTES_V2 - 4]) != struct.unpack_from("<I", image, HEADER_BYTES_V2 - 4)[0]:
        raise SegmentIntegrityError("container header CRC mismatch (corrupt header)")
    if any(struct.unpack_from("<4I", image, 28)):
        raise SegmentIntegrityError("container header inconsistent: reserved words are not zero")
    if (header_size != HEADER_BYTES_V2 + MEMBER.size * count or image_size > len(image)
            or image_size < header_size or alignment & (alignment - 1) or alignment == 0):
        raise SegmentIntegrityError(f"container header inconsistent: {count} members, header {header_size} bytes, "
                                    f"image_size {image_size}, alignment {alignment}, {len(image)} bytes present")
    if zlib.crc32(image[HEADER_BYTES_V2:header_size]) != struct.unpack_from("<I", image, 24)[0]:
        raise SegmentIntegrityError("container member table CRC mismatch")
    members, end = [], header_size
    for i in range(count):
        offset, size, graph_crc, graph_size, raw = MEMBER.unpack_from(image, HEADER_BYTES_V2 + MEMBER.size * i)
        name = raw.rstrip(b"\0").decode("ascii", "replace")
        if not MEMBER_NAME.fullmatch(name) or raw != name.encode().ljust(MEMBER_NAME_BYTES, b"\0"):
            raise SegmentIntegrityError(f"member {i}: name {raw!r} is not 1..15 characters [A-Za-z0-9_] NUL-padded")
        if offset % alignment or offset < end or offset + size > image_size or size < HEADER_BYTES:
            raise SegmentIntegrityError(f"member {i} ({name}: offset {offset}, size {size}) is misplaced")
        try:
            parse_image(image[offset : offset + size], check_payloads)
        except SegmentIntegrityError as exc:
            raise SegmentIntegrityError(f"member {i} ({name}): {exc}") from exc
        members.append(ImageMember(name, offset, size, graph_crc, graph_size))
        end = offset + size
    return members
