"""The delegate's tile table (docs/DELEGATE.md): for every segment-resident tensor of a segmented
model, its file offset and size and the CRC32 of each tile. Built once from intact weights (every
segment is checked against the manifest's CRC32 first) and reused while the file is unchanged.

The encoded input of an upstream TFLM_DECODE operator (a bitstring of `bits`-bit indices) is tiled
on whole groups of indices: each tile holds `tile_bytes` indices, i.e. `tile_bytes * bits / 8`
stored bytes, so a tile decodes into exactly one `tile_bytes` buffer.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import DelegateError, ManifestError, SegmentIntegrityError, UnsupportedModelError
from ..fileio import write_atomic
from ..format.manifest import HEADER_SIZE, MANIFEST_NAME, Manifest, find_metadata, read_model_head
from ..format.model import Model
from ..format.schema import tfl
from ..format.segments import check_against_graph, check_graph_digest

DEFAULT_TILE_BYTES = 1 << 20
MIN_TILE_BYTES = 4096
MAX_TILE_BYTES = 1 << 31
TABLE_SUFFIX = ".tiles"
TABLE_MAGIC = b"TSWT"
TABLE_VERSION = 2  # 2: records carry their tile length and index bitwidth (TFLM_DECODE inputs)
DECODE_OP = "CUSTOM:TFLM_DECODE"
_HEADER = struct.Struct("<4sIQQQIII16s4x")  # magic, version, tile_bytes, file_size, graph_bytes, graph_crc,
#                                              n_records, n_tiles, manifest header, reserved -> 64 bytes
_RECORD = struct.Struct("<IIQQIIII")  # tensor, buffer, file offset, size, first tile, tile count, tile length,
#                                       index bits (0: not encoded) -> 40 bytes


@dataclass(frozen=True)
class TileRecord:
    """One streamed tensor in the tile table."""

    tensor: int
    buffer: int
    offset: int  # absolute file offset
    size: int
    tile_crcs: tuple[int, ...]
    tile_len: int = 0  # stored bytes per tile (the last may be shorter)
    bits: int = 0  # index bitwidth of a TFLM_DECODE encoded tensor, 0 for plain weights


def default_table_path(model_path: str | Path) -> Path:
    """Where `delegate_options` writes the tile table by default: next to the model."""
    return Path(f"{model_path}{TABLE_SUFFIX}")


def build_tile_table(
    model_path: str | Path, tile_bytes: int = DEFAULT_TILE_BYTES, table_path: str | Path | None = None
) -> Path:
    """Write (atomically) the tile table of a segmented model and return its path.

    An existing table for the same file contents and tile size is reused. Raises
    SegmentIntegrityError if a segment fails the manifest's CRC32.
    """
    _check_tile_bytes(tile_bytes)
    model_path = Path(model_path)
    table_path = Path(table_path) if table_path is not None else default_table_path(model_path)
    graph, manifest, model = _read_graph(model_path)
    graph_crc = zlib.crc32(graph[: manifest.image_offset])
    file_size = model_path.stat().st_size
    manifest_header = find_metadata(graph, MANIFEST_NAME)[:HEADER_SIZE]
    if _table_matches(table_path, tile_bytes, file_size, manifest.image_offset, graph_crc, manifest_header):
        return table_path
    records = _scan_segments(model_path, graph, manifest, tile_bytes, _decode_bits(model_path, model))
    blob = _encode_table(records, tile_bytes, file_size, manifest.image_offset, graph_crc, manifest_header)
    try:
        return write_atomic(table_path, blob, inputs=(model_path,))
    except OSError as exc:
        raise DelegateError(
            f"cannot write the tile table {table_path}: {exc.strerror}; pass table_path= a writable location"
        ) from exc


def read_tile_table(table_path: str | Path) -> tuple[dict, list[TileRecord]]:
    """Decode a tile table (header fields, records); raises DelegateError if it is corrupt."""
    data = Path(table_path).read_bytes()
    if len(data) < _HEADER.size + 4 or data[:4] != TABLE_MAGIC:
        raise DelegateError(f"{table_path} is not a tflm_swap tile table")
    if zlib.crc32(data[:-4]) != struct.unpack_from("<I", data, len(data) - 4)[0]:
        raise DelegateError(f"tile table {table_path} fails its CRC32 check")
    magic, version, tile_bytes, file_size, graph_bytes, graph_crc, n_rec, n_tiles, manifest_header = (
        _HEADER.unpack_from(data))
    header = {"version": version, "tile_bytes": tile_bytes, "file_size": file_size, "graph_bytes": graph_bytes,
              "graph_crc": graph_crc, "records": n_rec, "tiles": n_tiles, "manifest_header": manifest_header}
    crc_base = _HEADER.size + n_rec * _RECORD.size
    records = []
    for i in range(n_rec):
        if version != TABLE_VERSION:
            break  # the records of other versions are not read; the header says which version it is
        tensor, buffer, offset, size, first, count, tile_len, bits = _RECORD.unpack_from(
            data, _HEADER.size + i * _RECORD.size)
        crcs = struct.unpack_from(f"<{count}I", data, crc_base + 4 * first)
        records.append(TileRecord(tensor, buffer, offset, size, crcs, tile_len, bits))
    return header, records


def _check_tile_bytes(tile_bytes: int) -> None:
    if (isinstance(tile_bytes, bool) or not isinstance(tile_bytes, int) or tile_bytes % 16
            or not MIN_TILE_BYTES <= tile_bytes <= MAX_TILE_BYTES):
        raise DelegateError(
            f"tile_bytes={tile_bytes!r} must be an integer multiple of 16 between {MIN_TILE_BYTES} and {MAX_TILE_BYTES}"
        )


def _read_graph(model_path: Path) -> tuple[bytes, Manifest, Model]:
    """The part of a segmented model before its flash image, its manifest (segments not read) and
    the graph parsed, checked: the graph against its SHA-256, the manifest against the graph."""
    try:
        with model_path.open("rb") as f:
            head, manifest = read_model_head(f.fileno(), model_path)
    except OSError as exc:
        raise DelegateError(f"cannot read weights file {model_path}: {exc.strerror}") from exc
    check_graph_digest(head, manifest, str(model_path))
    model = Model.from_bytes(head[: manifest.graph_size], source=str(model_path), read_external=False)
    check_against_graph(manifest, model, str(model_path))
    encoded = [seg.id for seg in manifest.segments if seg.encoded]
    if encoded:
        raise UnsupportedModelError(
            f"{model_path}: segments {encoded[:5]} hold palette-encoded (compressed, manifest v3) weights, which "
            "the LiteRT delegate does not decode; write it in upstream TFLM's DECODE layout for the delegate "
            "(tflm-swap convert --compress N --layout decode-segments; in Python to_decode_layout, then "
            "segment_model(..., keep_decode=True)), run this file with SwapInterpreter, or convert without --compress")
    return head, manifest, model


def _decode_bits(model_path: Path, model: Model) -> dict[int, int]:
    """{encoded tensor: index bitwidth} of the TFLM_DECODE operators of `model` (the file's graph;
    LUT ancillary data byte 5)."""
    bits: dict[int, int] = {}
    for op in range(len(model.operators)):
        if model.opcode_name(op) != DECODE_OP:
            continue
        inputs = model.op_inputs(op)
        for encoded, ancillary in zip(inputs[0::2], inputs[1::2]):
            header = _ancillary_header(model_path, model, ancillary)
            width = header[5] & 0x0F if len(header) > 5 else 0
            if not 1 <= width <= 7:
                raise DelegateError(f"{model_path}: TFLM_DECODE ancillary tensor {ancillary} (of encoded tensor "
                                    f"{encoded}) gives index bitwidth {width}, outside 1..7")
            bits[encoded] = width
    return bits


def _ancillary_header(model_path: Path, model: Model, tensor: int) -> bytes:
    """The first 16 bytes (DCM header) of a constant tensor, inline or stored after the graph."""
    buffer = model.tensors[tensor].buffer
    ext = model.deferred.get(buffer)
    if ext is None:
        return bytes(model.buffers[buffer][:16])
    with model_path.open("rb") as f:
        f.seek(ext.offset)
        return f.read(min(16, ext.size))


def _buffer_offsets(graph: bytes) -> dict[int, tuple[int, int]]:
    model = tfl.Model.GetRootAs(graph, 0)
    out = {}
    for i in range(model.BuffersLength()):
        buf = model.Buffers(i)
        if buf.Offset() > 1:
            out[i] = (buf.Offset(), buf.Size())
    return out


def _scan_segments(
    model_path: Path, graph: bytes, manifest: Manifest, tile_bytes: int, bits: dict[int, int]
) -> list[TileRecord]:
    """Read every segment once: check its CRC32 and compute each entry's tile CRCs (per tile length:
    `tile_bytes`, or `tile_bytes * bits / 8` for the tensors in `bits`)."""
    offsets = _buffer_offsets(graph)
    records: list[TileRecord] = []
    with model_path.open("rb") as f:
        for seg in manifest.segments:
            base = manifest.image_offset + seg.offset
            seg_crc, pos = 0, base
            for entry in sorted(seg.entries, key=lambda e: e.offset):
                start = base + entry.offset
                if offsets.get(entry.buffer) != (start, entry.size):
                    raise SegmentIntegrityError(
                        f"{model_path}: segment {seg.id} entry for buffer {entry.buffer} does not match the "
                        f"buffer's Buffer.offset/size {offsets.get(entry.buffer)}"
                    )
                seg_crc = zlib.crc32(_read_exact(f, pos, start - pos, model_path, seg.id), seg_crc)
                lengths = {t: tile_bytes // 8 * bits[t] if t in bits else tile_bytes for t in entry.tensors}
                tile_crcs: dict[int, tuple[int, ...]] = {}
                for n, length in enumerate(sorted(set(lengths.values()))):
                    crcs = []
                    for t0 in range(0, entry.size, length):
                        tile = _read_exact(f, start + t0, min(length, entry.size - t0), model_path, seg.id)
                        crcs.append(zlib.crc32(tile))
                        seg_crc = zlib.crc32(tile, seg_crc) if n == 0 else seg_crc
                    tile_crcs[length] = tuple(crcs)
                records += [TileRecord(t, entry.buffer, start, entry.size, tile_crcs[lengths[t]], lengths[t],
                                       bits.get(t, 0)) for t in entry.tensors]
                pos = start + entry.size
            seg_crc = zlib.crc32(_read_exact(f, pos, base + seg.size - pos, model_path, seg.id), seg_crc)
            if seg_crc != seg.crc32:
                raise SegmentIntegrityError(
                    f"{model_path}: segment {seg.id} fails its CRC32 check (computed {seg_crc:#010x}, manifest "
                    f"has {seg.crc32:#010x}); the weights file is corrupt"
                )
    records.sort(key=lambda r: r.tensor)
    dup = {r.tensor for r in records if sum(1 for s in records if s.tensor == r.tensor) > 1}
    if dup:
        raise ManifestError(f"{model_path}: tensors {sorted(dup)[:5]} appear in several manifest entries")
    return records


def _read_exact(f, offset: int, size: int, path: Path, seg_id: int) -> bytes:
    if size < 0:
        raise SegmentIntegrityError(f"{path}: segment {seg_id} entries overlap")
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise SegmentIntegrityError(f"{path}: segment {seg_id} is truncated (file ends at byte {offset + len(data)})")
    return data


def _encode_table(
    records: list[TileRecord], tile_bytes: int, file_size: int, graph_bytes: int, graph_crc: int,
    manifest_header: bytes,
) -> bytes:
    n_tiles = sum(len(r.tile_crcs) for r in records)
    parts = [_HEADER.pack(TABLE_MAGIC, TABLE_VERSION, tile_bytes, file_size, graph_bytes, graph_crc,
                          len(records), n_tiles, manifest_header)]
    first = 0
    for r in records:
        parts.append(_RECORD.pack(r.tensor, r.buffer, r.offset, r.size, first, len(r.tile_crcs), r.tile_len, r.bits))
        first += len(r.tile_crcs)
    parts += [struct.pack(f"<{len(r.tile_crcs)}I", *r.tile_crcs) for r in records]
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def _table_matches(
    path: Path, tile_bytes: int, file_size: int, graph_bytes: int, graph_crc: int, manifest_header: bytes
) -> bool:
    try:
        header, _ = read_tile_table(path)
    except (OSError, DelegateError, struct.error):
        return False
    return (header["version"], header["tile_bytes"], header["file_size"], header["graph_bytes"],
            header["graph_crc"], header["manifest_header"]) == (
        TABLE_VERSION, tile_bytes, file_size, graph_bytes, graph_crc, manifest_header)
