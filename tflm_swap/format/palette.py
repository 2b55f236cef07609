"""Palette encoding of int8 weights ("TSWC"): bit-packed indices into per-channel or per-tensor
value tables. Encoding and decoding are exact: decoding gives back the int8 bytes encoded.

Layout (little-endian; docs/FORMAT.md "Compressed entries")::

     0 magic "TSWC"   5 u8 bits (1..8)   8 u32 count N (int8 elements)   16 u32 inner
     4 u8 version 1   6 u16 table_len E  12 u32 channels C                20 u32 reserved = 0
    24 C x E int8 table values (table c at 24 + c * E)
    24 + C * E: ceil(N * bits / 8) bytes of indices, most significant bit first, trailing bits 0

Element i belongs to channel (i // inner) % C and decodes to table[channel][index i]. A tensor
whose channel axis is its first (CONV_2D, FULLY_CONNECTED filters) has inner = N / C; a depthwise
filter (channel axis last) has inner = 1. C = 1 is a shared per-tensor table.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from ..errors import SegmentIntegrityError

MAGIC = b"TSWC"
VERSION = 1
_HEADER = struct.Struct("<4sBBHIIII")
HEADER_SIZE = _HEADER.size  # 24


@dataclass(frozen=True)
class PaletteHeader:
    """The fixed fields of a palette-encoded entry."""

    bits: int
    table_len: int
    count: int
    channels: int
    inner: int

    @property
    def table_bytes(self) -> int:
        return self.channels * self.table_len

    @property
    def index_bytes(self) -> int:
        return (self.count * self.bits + 7) // 8

    @property
    def size(self) -> int:
        """Bytes of the whole encoded entry."""
        return HEADER_SIZE + self.table_bytes + self.index_bytes


def encoded_size(bits: int, table_len: int, count: int, channels: int) -> int:
    """Bytes an entry of these dimensions takes."""
    return HEADER_SIZE + channels * table_len + (count * bits + 7) // 8


def bits_for(table_len: int) -> int:
    """The fewest index bits addressing `table_len` entries (at least 1)."""
    return max(1, (table_len - 1).bit_length())


# ------------------------------------------------------------------------------------ encoding
def encode(values: np.ndarray, channels: int, inner: int) -> bytes | None:
    """The smallest exact palette encoding of int8 `values` (flattened in C order, channel of element
    i = (i // inner) % channels): per-channel tables or one shared table, each holding only the
    values used. None when neither is smaller than the raw bytes."""
    flat = np.ascontiguousarray(values, dtype=np.int8).reshape(-1)
    if flat.size == 0 or flat.size % (channels * inner):
        raise ValueError(f"{flat.size} values do not split into {channels} channels of runs of {inner}")
    candidates = [(channels, inner), (1, flat.size)] if channels > 1 else [(1, flat.size)]
    best: bytes | None = None
    for c, run in candidates:
        blob = encode_tables(flat, c, run)
        if len(blob) < flat.size and (best is None or len(blob) < len(best)):
            best = blob
    return best


def encode_tables(flat: np.ndarray, channels: int, inner: int) -> bytes:
    """The palette encoding of int8 `flat` with exactly `channels` tables (runs of `inner`), each
    holding only the values its channel uses."""
    by_channel = flat.reshape(-1, channels, inner).transpose(1, 0, 2).reshape(channels, -1)
    tables = [np.unique(row) for row in by_channel]
    table_len = max(len(t) for t in tables)
    bits = bits_for(table_len)
    table = np.empty((channels, table_len), np.int8)
    index = np.empty_like(by_channel, dtype=np.uint16)
    for c, (row, used) in enumerate(zip(by_channel, tables)):
        table[c, : len(used)], table[c, len(used):] = used, 0  # unused entries are 0, as upstream TFLM pads
        index[c] = np.searchsorted(used, row)
    index = index.reshape(channels, -1, inner).transpose(1, 0, 2).reshape(-1)  # back to element order
    return pack_header(bits, table_len, flat.size, channels, inner) + table.tobytes() + pack_indices(index, bits)


def pack_header(bits: int, table_len: int, count: int, channels: int, inner: int) -> bytes:
    """The 24-byte header of an entry of these dimensions."""
    return _HEADER.pack(MAGIC, VERSION, bits, table_len, count, channels, inner, 0)


def pack_indices(index: np.ndarray, bits: int) -> bytes:
    """`index` values (each < 2**bits) packed most significant bit first."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint16)
    bit_rows = ((index.astype(np.uint16)[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bit_rows.reshape(-1)).tobytes()


# ------------------------------------------------------------------------------------ decoding
def is_encoded(blob: bytes | memoryview) -> bool:
    return bytes(blob[:4]) == MAGIC


def read_header(blob: bytes | memoryview, where: str, expect_count: int | None = None) -> PaletteHeader:
    """The header of an encoded entry, checked against the entry's length (and the decoded size
    the reader expects); raises SegmentIntegrityError naming `where`."""
    if len(blob) < HEADER_SIZE:
        raise SegmentIntegrityError(f"{where}: compressed entry is {len(blob)} bytes, shorter than its "
                                    f"{HEADER_SIZE}-byte header")
    magic, version, bits, table_len, count, channels, inner, reserved = _HEADER.unpack_from(blob)
    problem = None
    if magic != MAGIC:
        problem = f"magic {magic!r}, expected {MAGIC!r}"
    elif version != VERSION:
        problem = f"encoding version {version}; this tflm_swap reads version {VERSION}"
    elif not 1 <= bits <= 8:
        problem = f"bit width {bits} is outside 1..8"
    elif not 1 <= table_len <= 1 << bits:
        problem = f"table length {table_len} is outside 1..{1 << bits} for {bits}-bit indices"
    elif channels < 1 or inner < 1 or count < 1 or count % (channels * inner):
        problem = f"{count} elements do not split into {channels} channels of runs of {inner}"
    elif reserved:
        problem = f"reserved word is {reserved:#x}, expected 0"
    elif expect_count is not None and count != expect_count:
        problem = f"it decodes to {count} bytes; the tensor needs {expect_count}"
    if problem is None:
        header = PaletteHeader(bits, table_len, count, channels, inner)
        if header.size != len(blob):
            problem = (f"{len(blob)} bytes, but {channels} tables of {table_len} entries and {count} "
                       f"{bits}-bit indices take {header.size}")
        else:
            return header
    raise SegmentIntegrityError(f"{where}: corrupt compressed entry: {problem}")


def decode(blob: bytes | memoryview, where: str, expect_count: int | None = None) -> np.ndarray:
    """Decode a palette-encoded entry to its int8 values, after checking everything: header, sizes,
    every index inside its table, zero trailing bits. Raises SegmentIntegrityError naming `where`."""
    h = read_header(blob, where, expect_count)
    data = np.frombuffer(blob, dtype=np.uint8)
    table = data[HEADER_SIZE : HEADER_SIZE + h.table_bytes].view(np.int8).reshape(h.channels, h.table_len)
    try:
        return lookup(table, data[HEADER_SIZE + h.table_bytes :], h.bits, h.count, h.inner)
    except ValueError as exc:
        raise SegmentIntegrityError(f"{where}: corrupt compressed entry: {exc}") from None


def lookup(tables: np.ndarray, packed: np.ndarray, bits: int, count: int, inner: int) -> np.ndarray:
    """The `count` values the `bits`-bit indices in `packed` (uint8, exactly ceil(count * bits / 8)
    bytes) select: element i from table (i // inner) % channels of `tables` (channels x entries, any
    element type). Raises ValueError naming the first index outside its table, or nonzero bits after
    the last index (the same rule as upstream TFLM's LUT layout, `converters/decode_layout.py`)."""
    channels, entries = tables.shape
    index = unpack_indices(packed, bits, count)
    if int(index.max()) >= entries:
        first = int(np.argmax(index >= entries))
        raise ValueError(f"index {int(index[first])} of element {first} is outside its {entries}-entry table")
    tail_bits = packed.size * 8 - count * bits
    if tail_bits and int(packed[-1]) & ((1 << tail_bits) - 1):
        raise ValueError(f"the {tail_bits} bits after the last index are not zero")
    return tables[np.arange(channels)[None, :, None], index.reshape(-1, channels, inner)].reshape(-1)


def unpack_indices(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """`count` indices of `bits` bits, most significant bit first (inverse of pack_indices)."""
    if bits == 8:
        return packed[:count].astype(np.uint16)
    if bits == 4:
        pairs = np.empty((packed.size, 2), np.uint16)
        pairs[:, 0], pairs[:, 1] = packed >> 4, packed & 15
        return pairs.reshape(-1)[:count]
    bit_rows = np.unpackbits(packed)[: count * bits].reshape(count, bits).astype(np.uint16)
    return bit_rows @ (1 << np.arange(bits - 1, -1, -1, dtype=np.uint16))
