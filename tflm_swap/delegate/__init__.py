"""The LiteRT weight-streaming delegate: where its library is, and the options it needs.

The delegate (C, `delegates/litert/`, built by `pip install`) claims FULLY_CONNECTED, CONV_2D and
DEPTHWISE_CONV_2D nodes whose weights sit in the segments of a tflm_swap model and streams those
weights from the file in CRC-checked tiles, double-buffered, so that peak weight memory is about two
tiles. Typical use::

    from ai_edge_litert.interpreter import Interpreter, load_delegate
    import tflm_swap

    options = tflm_swap.delegate_options("model.tflite", tile_bytes=1 << 20)   # writes model.tflite.tiles
    delegate = load_delegate(tflm_swap.delegate_library(), options)
    interpreter = Interpreter(model_path="model.tflite", experimental_delegates=[delegate])

`delegate_options` writes the *tile table* (docs/DELEGATE.md): for every segment-resident tensor its
file offset and size and the CRC32 of each tile. It reads the file once and checks every segment
against the manifest's CRC32 first, so a table is only ever built from intact weights.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import struct
import tempfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ManifestError, SegmentIntegrityError, TflmSwapError
from ..fileio import write_atomic
from ..manifest import HEADER_SIZE, MANIFEST_NAME, Manifest, find_metadata, read_model_head
from ..schema import tfl

SUPPORTED_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
ROUNDINGS = ("single", "double")
DEFAULT_TILE_BYTES = 1 << 20
MIN_TILE_BYTES = 4096
MAX_TILE_BYTES = 1 << 31
TABLE_SUFFIX = ".tiles"
TABLE_MAGIC = b"TSWT"
TABLE_VERSION = 1
_HEADER = struct.Struct("<4sIQQQIII16s4x")  # magic, version, tile_bytes, file_size, graph_bytes, graph_crc,
#                                              n_records, n_tiles, manifest header, reserved -> 64 bytes
_RECORD = struct.Struct("<IIQQII")  # tensor, buffer, file offset, size, first tile, tile count -> 32 bytes
_LIBRARY_STEM = "_litert_delegate"


class DelegateError(TflmSwapError):
    """The delegate library is missing or its options are invalid."""


@dataclass(frozen=True)
class TileRecord:
    """One streamed tensor in the tile table."""

    tensor: int
    buffer: int
    offset: int  # absolute file offset
    size: int
    tile_crcs: tuple[int, ...]


@dataclass(frozen=True)
class DelegateStats:
    """Counters kept by a live delegate (see `delegate_stats`)."""

    claimed_nodes: int
    node_invocations: int
    tiles_read: int
    bytes_read: int
    wait_seconds: float  # time the interpreter thread waited for tiles
    slot_bytes: int  # size of each tile buffer
    slots: int  # 2 with prefetch, 1 without

    @property
    def buffer_bytes(self) -> int:
        """Bytes of tile buffers the delegate holds (the weight memory it needs)."""
        return self.slot_bytes * self.slots


# ------------------------------------------------------------------------------------ library
def delegate_library() -> str:
    """Absolute path of the delegate shared library, for `load_delegate(path, options)`."""
    here = Path(__file__).resolve().parent.parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"{_LIBRARY_STEM}{suffix}"
        if candidate.is_file():
            return str(candidate)
    raise DelegateError(
        f"the tflm_swap LiteRT delegate library ({_LIBRARY_STEM}*.so) is not in {here}: the package was "
        "installed without building its C extension; reinstall with `pip install .` (needs a C compiler)"
    )


@functools.cache
def native_library() -> ctypes.CDLL | None:
    """The delegate library loaded for its helper functions (CRC32, page-in jobs), or None when the
    package was installed without its C extension (callers then fall back to Python)."""
    try:
        return ctypes.CDLL(delegate_library())
    except (DelegateError, OSError):
        return None


# --------------------------------------------------------------------------------- tile table
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
    graph, manifest = _read_graph(model_path)
    graph_crc = zlib.crc32(graph[: manifest.image_offset])
    file_size = model_path.stat().st_size
    manifest_header = find_metadata(graph, MANIFEST_NAME)[:HEADER_SIZE]
    if _table_matches(table_path, tile_bytes, file_size, manifest.image_offset, graph_crc, manifest_header):
        return table_path
    records = _scan_segments(model_path, graph, manifest, tile_bytes)
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
        tensor, buffer, offset, size, first, count = _RECORD.unpack_from(data, _HEADER.size + i * _RECORD.size)
        crcs = struct.unpack_from(f"<{count}I", data, crc_base + 4 * first)
        records.append(TileRecord(tensor, buffer, offset, size, crcs))
    return header, records


def _check_tile_bytes(tile_bytes: int) -> None:
    if (isinstance(tile_bytes, bool) or not isinstance(tile_bytes, int) or tile_bytes % 16
            or not MIN_TILE_BYTES <= tile_bytes <= MAX_TILE_BYTES):
        raise DelegateError(
            f"tile_bytes={tile_bytes!r} must be an integer multiple of 16 between {MIN_TILE_BYTES} and {MAX_TILE_BYTES}"
        )


def _read_graph(model_path: Path) -> tuple[bytes, Manifest]:
    """The part of a segmented model before its flash image, and its manifest (segments not read)."""
    try:
        with model_path.open("rb") as f:
            return read_model_head(f.fileno(), model_path)
    except OSError as exc:
        raise DelegateError(f"cannot read weights file {model_path}: {exc.strerror}") from exc


def _buffer_offsets(graph: bytes) -> dict[int, tuple[int, int]]:
    model = tfl.Model.GetRootAs(graph, 0)
    out = {}
    for i in range(model.BuffersLength()):
        buf = model.Buffers(i)
        if buf.Offset() > 1:
            out[i] = (buf.Offset(), buf.Size())
    return out


def _scan_segments(model_path: Path, graph: bytes, manifest: Manifest, tile_bytes: int) -> list[TileRecord]:
    """Read every segment once: check its CRC32 and compute each entry's tile CRCs."""
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
                crcs = []
                for t0 in range(0, entry.size, tile_bytes):
                    tile = _read_exact(f, start + t0, min(tile_bytes, entry.size - t0), model_path, seg.id)
                    crcs.append(zlib.crc32(tile))
                    seg_crc = zlib.crc32(tile, seg_crc)
                pos = start + entry.size
                records += [TileRecord(t, entry.buffer, start, entry.size, tuple(crcs)) for t in entry.tensors]
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
        parts.append(_RECORD.pack(r.tensor, r.buffer, r.offset, r.size, first, len(r.tile_crcs)))
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


# ------------------------------------------------------------------------------------- options
def delegate_options(
    model_path: str | Path,
    *,
    tile_bytes: int = DEFAULT_TILE_BYTES,
    prefetch: bool = True,
    ops: Iterable[str] = SUPPORTED_OPS,
    min_weight_bytes: int = 0,
    table_path: str | Path | None = None,
    rounding: str | dict[str, str] = "auto",
) -> dict[str, str]:
    """Build (or reuse) the tile table and return the `load_delegate` options for `model_path`.

    `tile_bytes`: bytes per streamed tile (two tiles are resident with prefetch); `prefetch`: read the
    next tile in a background thread; `ops`: operator types to claim; `min_weight_bytes`: leave
    operators with smaller weights to the interpreter; `rounding`: how int8 results are requantised to
    match the runtime's kernels, 'single', 'double', a dict per operator, or 'auto' = `detect_rounding()`
    (the installed LiteRT's reference kernels).
    """
    rounding = rounding_option(detect_rounding() if rounding == "auto" else rounding)
    ops = [str(op).upper() for op in ops]
    unknown = sorted(set(ops) - set(SUPPORTED_OPS))
    if unknown or not ops:
        raise DelegateError(f"ops={ops!r}: choose one or more of {', '.join(SUPPORTED_OPS)}")
    if isinstance(min_weight_bytes, bool) or not isinstance(min_weight_bytes, int) or min_weight_bytes < 0:
        raise DelegateError(f"min_weight_bytes={min_weight_bytes!r} must be a non-negative integer")
    model_path = Path(model_path).resolve()
    if not model_path.is_file():
        raise DelegateError(f"weights file {model_path} does not exist")
    table = build_tile_table(model_path, tile_bytes, table_path)
    return {
        "weights": str(model_path),
        "table": str(Path(table).resolve()),
        "tile_bytes": str(tile_bytes),
        "prefetch": "true" if prefetch else "false",
        "ops": ",".join(ops),
        "min_weight_bytes": str(min_weight_bytes),
        "rounding": rounding,
    }


_ROUNDING_PROBES = {  # op: (input shape, layers, per-channel); tens of thousands of outputs, several on ties
    "FULLY_CONNECTED": ([8, 64], [("fc", 2048)], False),
    "CONV_2D": ([4, 16, 16, 64], [("conv", 64)], True),
    "DEPTHWISE_CONV_2D": ([2, 16, 16, 64], [("dw", 2)], False),
}


@functools.cache
def detect_rounding(backend: str = "auto") -> dict[str, str]:
    """{operator: 'single' or 'double'}: the int8 requantisation of `backend`'s reference kernels (BUILTIN_REF).

    TFLite builds choose between single-rounding and gemmlowp double-rounding MultiplyByQuantizedMultiplier
    at compile time (TFLITE_SINGLE_ROUNDING), and LiteRT 2.3 differs per kernel (FULLY_CONNECTED single,
    convolutions double). For each operator this runs an int8 probe model on the reference kernels and
    on the delegate in both modes, and keeps the mode that matches.
    """
    from ..model import Model
    from ..runtime.backends import litert_interpreter, random_inputs, resolve_backend, run_litert
    from ..segment import segment_model
    from . import models

    name, module = resolve_backend(backend)
    load = getattr(module, "load_delegate", None) or module.experimental.load_delegate  # tf.lite: experimental
    makers = {"fc": models.fc, "conv": lambda n: models.conv(n, (1, 1)), "dw": lambda n: models.depthwise(n, (3, 3))}
    found = {}
    with tempfile.TemporaryDirectory(prefix="tflm_swap_probe_") as tmp:
        for op, (shape, layers, per_channel) in _ROUNDING_PROBES.items():
            path = Path(tmp) / f"{op}.tflite"
            raw = models.build_model(shape, [makers[k](n) for k, n in layers], "int8", per_channel=per_channel, seed=7)
            path.write_bytes(segment_model(Model.from_bytes(raw)))
            inputs = random_inputs(litert_interpreter(model_path=str(path), backend=name).get_input_details(),
                                   __import__("numpy").random.default_rng(0))

            def run(delegate=None, path=path, inputs=inputs) -> bytes:
                interpreter = litert_interpreter(model_path=str(path), backend=name, reference_kernels=True,
                                                 delegates=[delegate] if delegate else None)
                interpreter.allocate_tensors()
                return run_litert(interpreter, inputs)[0].tobytes()

            stock = run()
            base = delegate_options(path, tile_bytes=1 << 20, rounding="single")
            matches = [mode for mode in ROUNDINGS if run(load(delegate_library(), {**base, "rounding": mode})) == stock]
            if len(matches) != 1:
                raise DelegateError(f"cannot tell the int8 rounding of {op} on {name} (modes matching: {matches})")
            found[op] = matches[0]
    return found


def rounding_option(rounding: str | dict[str, str]) -> str:
    """The `rounding` option string: 'single', 'double' or 'FULLY_CONNECTED=single,CONV_2D=double,...'."""
    if isinstance(rounding, str) and rounding in ROUNDINGS:
        return rounding
    if isinstance(rounding, str) and "=" in rounding:  # already in option form
        pairs = [item.partition("=") for item in rounding.split(",")]
        rounding = {op: mode for op, _, mode in pairs} if all(sep for _, sep, _ in pairs) else rounding
    if isinstance(rounding, dict) and rounding and set(rounding) <= set(SUPPORTED_OPS) \
            and set(rounding.values()) <= set(ROUNDINGS):
        return ",".join(f"{op}={mode}" for op, mode in rounding.items())
    raise DelegateError(f"rounding={rounding!r}: use 'auto', 'single', 'double' or {{operator: 'single'|'double'}}")


def load_delegate(model_path: str | Path, backend: str = "ai_edge_litert", **options):
    """`load_delegate(delegate_library(), delegate_options(model_path, **options))` of `backend`."""
    if backend == "ai_edge_litert":
        from ai_edge_litert.interpreter import load_delegate as load
    elif backend == "tflite_runtime":
        from tflite_runtime.interpreter import load_delegate as load
    else:
        raise DelegateError(f"backend={backend!r}: use 'ai_edge_litert' or 'tflite_runtime'")
    return load(delegate_library(), delegate_options(model_path, **options))


def delegate_stats(delegate) -> DelegateStats:
    """Counters of a delegate returned by `load_delegate` (claimed nodes, tiles and bytes read, ...)."""
    lib = ctypes.CDLL(delegate_library())
    fn = lib.tflm_swap_delegate_stats
    fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64), ctypes.c_int]
    fn.restype = ctypes.c_int
    out = (ctypes.c_uint64 * 7)()
    if fn(delegate._get_native_delegate_pointer(), out, 7) != 7:
        raise DelegateError("not a tflm_swap delegate")
    v = list(out)
    return DelegateStats(v[0], v[1], v[2], v[3], v[4] / 1e9, v[5], v[6])


__all__ = [
    "DEFAULT_TILE_BYTES", "SUPPORTED_OPS", "DelegateError", "DelegateStats", "TileRecord", "build_tile_table",
    "default_table_path", "delegate_library", "delegate_options", "delegate_stats", "detect_rounding",
    "load_delegate", "read_tile_table", "rounding_option",
]
