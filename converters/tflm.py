"""Rewrite a model for TFLite Micro: each operator's external weights come from a load operator.

For every operator, the constant weight inputs TFLM's kernels accept as ordinary arena tensors
(`LOADABLE_INPUTS`) whose buffer holds at least `min_segment_bytes` become non-constant tensors
(buffer 0) produced by a custom `TSWAP_LOAD` operator inserted right before their first reader; their
bytes go to the flash image (one segment per buffer). TFLM's memory planner then gives the loaded
weights an arena slot from the load operator to the last reader, overlapping dead activations.

With `prefetch=True` the largest loaded tensor of each operator is read asynchronously instead:
`TSWAP_LOAD_START` is placed one operator earlier and `TSWAP_LOAD_WAIT` right before the reader (one
read in flight at a time; the other tensors of that operator use blocking loads after the wait).

Custom options of the three operators: `struct.pack("<II", segment_id, flags)`, flags bit 0 = check
the segment CRC32 after the read (set on TSWAP_LOAD and TSWAP_LOAD_WAIT with `verify_crc`).

With `offline_plan=True` the rewritten graph carries TFLM's documented offline memory plan
(`OfflineMemoryAllocation` metadata: int32 words 1, 0, tensor count, then one arena offset per
tensor, -1 for those TFLM plans itself): the planner's `packed_arena` layout of every activation and
loaded weight, tighter than TFLM's greedy one; the tiled kernels' scratch buffers stay online.

`tiles` maps operators to a `TileChoice`: each of those becomes a tiled kernel reading its own
weights in output-channel tiles (`converters/tflm_tiles.py`; the image then has a tile table,
version 2). No asynchronous START is placed before a tiled operator (its own reads would find the
flash busy). The rewritten graph has no `Buffer.offset` anywhere.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from tflm_swap.errors import UnsupportedModelError
from tflm_swap.format.flash_image import DEFAULT_ALIGNMENT, ImageSegment, TileEntry
from tflm_swap.format.manifest import MANIFEST_NAME, Manifest
from tflm_swap.format.model import Model
from tflm_swap.format.schema import text, tfl
from tflm_swap.format.segments import DEFAULT_MIN_SEGMENT_BYTES
from tflm_swap.interpreters import ensure_tflm_compatible
from tflm_swap.planner import Block, activation_tensors, packed_arena

from .compress import encoded_filters
from .decode_layout import expand
from .flash_image import build_image
from .graph import detach_tensor, make_operator, opcode_index, set_metadata, splice_operators
from .tflm_tiles import (
    FLAG_ENCODED,
    FLAG_PREFETCH,
    TileChoice,
    TileGeometry,
    encoded_tile_payloads,
    tile_geometry,
    tile_payloads,
    tiled_operator,
)

LOAD_OP = "TSWAP_LOAD"
LOAD_START_OP = "TSWAP_LOAD_START"
LOAD_WAIT_OP = "TSWAP_LOAD_WAIT"
# An encoded segment is prefetched only when at least this long: its WAIT reads the last
# tswap_palette_tail_bytes (<= 8 * 16 + 15 for a 16-byte flash alignment) itself, after a header.
PREFETCH_ENCODED_MIN_BYTES = 256
FLAG_VERIFY_CRC = 1

# Input slots whose constant data TFLM's reference kernels read only in Eval (checked bit-exact on
# the MLPerf Tiny models); other constants (shape tensors, LUTs, ...) stay inline in the graph.
LOADABLE_INPUTS: dict[str, tuple[int, ...]] = {
    "CONV_2D": (1, 2),
    "DEPTHWISE_CONV_2D": (1, 2),
    "FULLY_CONNECTED": (1, 2),
}


@dataclass(frozen=True)
class LoadStep:
    """One inserted load operator: its index in the rewritten graph, kind and segment."""

    op: int
    kind: str  # LOAD_OP, LOAD_START_OP or LOAD_WAIT_OP
    segment: int
    tensor: int
    consumer: int  # index (rewritten graph) of the first operator reading the tensor
    encoded: bool = False  # a TSWAP_LOAD decoding a palette-encoded segment


@dataclass(frozen=True)
class TiledStep:
    """One tiled operator: its index in the rewritten graph and in the source, its tile-table entry,
    tiles (segments first_segment..), channels per tile, and the arena scratch buffers it requests."""

    op: int
    source_op: int
    kind: str  # the source operator's builtin name
    entry: int
    first_segment: int
    tiles: int
    tile_channels: int
    prefetch: bool
    scratch: tuple[int, ...]
    encoded: bool = False  # palette-encoded tiles, decoded tile by tile


@dataclass
class MicroModel:
    """The `tflm` target: graph flatbuffer for internal flash plus the external flash image."""

    graph: bytes
    image: bytes
    segments: list[ImageSegment]
    segment_names: list[str]
    loads: list[LoadStep]
    source_ops: int
    prefetch: bool
    inline_const_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    graph_model: Model | None = field(default=None, repr=False)  # `graph` parsed, for who reads it next
    tiled: list[TiledStep] = field(default_factory=list)

    @property
    def flash_bytes_per_inference(self) -> int:
        """Bytes read from the image per inference (each load reads its whole segment once, each
        tiled operator each of its tiles once)."""
        loads = sum(self.segments[s.segment].size for s in self.loads if s.kind != LOAD_WAIT_OP)
        return loads + sum(self.segments[t.first_segment + k].size for t in self.tiled for k in range(t.tiles))

    @property
    def reads_per_inference(self) -> int:
        """Flash reads per inference: one per load (START or LOAD) and one per tile."""
        return sum(1 for s in self.loads if s.kind != LOAD_WAIT_OP) + sum(t.tiles for t in self.tiled)

    @property
    def external_bytes(self) -> int:
        return sum(s.size for s in self.segments)


def rewrite_for_tflm(
    data: bytes | Model,
    min_segment_bytes: int = DEFAULT_MIN_SEGMENT_BYTES,
    prefetch: bool = False,
    verify_crc: bool = False,
    alignment: int = DEFAULT_ALIGNMENT,
    source: str = "<bytes>",
    tiles: Mapping[int, TileChoice] | None = None,
    offline_plan: bool = False,
    encode: bool | None = None,
) -> MicroModel:
    """Rewrite a `.tflite` (bytes, or the `Model` parsed from them; plain or segmented) into a TFLM
    graph with load operators + image; the operators in `tiles` (source operator index -> choice)
    become tiled kernels instead. The rewritten graph is parsed back once to check it
    (`MicroModel.graph_model`), and whoever reads it next takes that instead of parsing again.

    With `encode` (default: when the input is a segmented model with palette-encoded entries, as
    `convert(..., compress_bits=)` writes), loaded int8 filters are stored palette-encoded where that
    is smaller and decoded by their load operator (blocking, or prefetched and decoded in place), and
    tiled operators whose every tile's filter slice is smaller encoded read encoded tiles (decoded
    tile by tile, with or without prefetch). A model in upstream TFLM's DECODE layout is rewritten as
    the model it decodes to, encoded."""
    if min_segment_bytes < 1:
        raise UnsupportedModelError(f"minimum segment size {min_segment_bytes} must be >= 1 byte")
    model = expand(data if isinstance(data, Model) else Model.from_bytes(data, source=source))
    model.check_single_graph(allow_call_once=True)  # stateful models: resource variables set up by CALL_ONCE
    _refuse_offline_plan(model)
    if offline_plan and len(model.fb.subgraphs) > 1:
        raise UnsupportedModelError(f"{model.source}: an offline arena plan covers one subgraph; this model has "
                                    f"{len(model.fb.subgraphs)} (leave the plan off)")
    geometries = _tile_geometries(model, dict(tiles or {}))
    picks = _pick_loads(model, min_segment_bytes, skip=set(geometries))
    buffers = list(dict.fromkeys(b for _, _, b in picks))
    seg_of = {b: i for i, b in enumerate(buffers)}
    encode = _was_encoded(model) if encode is None else encode
    encoded = encoded_filters(model, buffers) if encode else {}
    payloads, entries = [encoded.get(b, model.buffers[b]) for b in buffers], []
    tile_tables: dict[int, int] = {}  # tiled operator -> its largest tile's value tables (encoded tiles)
    for op, g in geometries.items():
        packed = encoded_tile_payloads(model, g, tiles[op].tiles) if encode else None
        if packed is not None:
            parts, tile_tables[op] = packed
        else:
            parts = tile_payloads(model, g, tiles[op].tiles)
        entries.append(TileEntry(len(payloads), len(parts), g.channels, g.tile_channels(tiles[op].tiles)))
        payloads += parts
    image, segments = build_image(payloads, alignment, entries)
    detached = {t for g in geometries.values() for t in (g.filter, g.bias) if t >= 0}
    new = _strip(model, {t for _, t, _ in picks}, detached)
    flags = FLAG_VERIFY_CRC if verify_crc else 0
    replace = {op: [tiled_operator(new, model, g, e, flags | (FLAG_PREFETCH if tiles[op].prefetch else 0)
                                   | (FLAG_ENCODED if op in tile_tables else 0))]
               for e, (op, g) in enumerate(geometries.items())}
    loads, position = _insert_ops(new, picks, seg_of, prefetch, flags, replace,
                                  {seg_of[b]: len(blob) for b, blob in encoded.items()})
    tiled = [TiledStep(position[op], op, g.kind, e, entries[e].first_segment, entries[e].tiles,
                       entries[e].tile_channels, tiles[op].prefetch,
                       tuple(g.scratch(tiles[op], tile_tables.get(op))), op in tile_tables)
             for e, (op, g) in enumerate(geometries.items())]
    if offline_plan:
        add_offline_plan(new, tiled)
    graph = bytes(new.pack())
    graph_model = Model.from_bytes(graph, source=f"{model.source} (rewritten for TFLM)")
    ensure_tflm_compatible(graph_model)
    names = [model.tensor_name(next(t for _, t, b2 in picks if b2 == b)) for b in buffers]
    inline = sum(len(b) for i, b in enumerate(new.buffers) if i and b) - sum(
        len(new.buffers[m.buffer]) for m in new.fb.metadata or [])
    names += [f"{model.tensor_name(g.filter)} tile {k}" for op, g in geometries.items()
              for k in range(len(g.ranges(tiles[op].tiles)))]
    return MicroModel(graph, image, segments, names, loads, len(model.operators), prefetch, inline,
                      graph_model=graph_model, tiled=tiled)


OFFLINE_PLAN = "OfflineMemoryAllocation"


def add_offline_plan(model: Model, tiled: list[TiledStep]) -> int:
    """Add TFLM's offline memory plan for `model` (the rewritten graph, whose tiled operators are
    `tiled`): the planner's packed layout; returns the arena it predicts."""
    tensors = activation_tensors(model)
    scratch = [Block(f"operator {t.op} scratch {i}", size, t.op, t.op, "scratch")
               for t in tiled for i, size in enumerate(t.scratch)]
    blocks = [b for _, b in tensors] + scratch
    arena, offsets = packed_arena(blocks, online=range(len(tensors), len(blocks)))
    words = [-1] * len(model.tensors)
    for k, (t, _) in enumerate(tensors):
        if k in offsets:
            words[t] = offsets[k]
    set_metadata(model, OFFLINE_PLAN, struct.pack(f"<3I{len(words)}i", 1, 0, len(words), *words))
    return arena


def _tile_geometries(model: Model, tiles: dict[int, TileChoice]) -> dict[int, TileGeometry]:
    """Geometry of every operator to tile, in execution order; raises UnsupportedModelError for an
    operator that does not exist or cannot be tiled, a tile count out of range, or a filter or bias
    another operator reads too."""
    geometries = {}
    for op in sorted(tiles):
        if not isinstance(op, int) or not 0 <= op < len(model.operators):
            raise UnsupportedModelError(f"{model.source}: no operator {op} to tile (the model has "
                                        f"{len(model.operators)}: 0..{len(model.operators) - 1})")
        g = tile_geometry(model, op)
        if not isinstance(tiles[op], TileChoice):
            raise UnsupportedModelError(f"operator {op}: tiles must be given as TileChoice, not {tiles[op]!r}")
        g.tile_channels(tiles[op].tiles)  # raises on a count out of range
        readers = {k for k in range(len(model.operators)) for t in (g.filter, g.bias)
                   if t >= 0 and t in model.op_inputs(k)}
        if readers != {op}:
            raise UnsupportedModelError(f"{model.source}: operator {op}'s weights are also read by operators "
                                        f"{sorted(readers - {op})}; they cannot be tiled")
        geometries[op] = g
    return geometries


def _refuse_offline_plan(model: Model) -> None:
    if model.metadata(OFFLINE_PLAN) is not None:
        raise UnsupportedModelError(
            f"{model.source}: the model carries an offline memory plan (OfflineMemoryAllocation); "
            "inserting load operators would invalidate it. Remove the plan first."
        )


def _pick_loads(model: Model, min_bytes: int, skip: set[int] = frozenset()) -> list[tuple[int, int, int]]:
    """(first reader op, tensor, buffer) of every tensor to load, in execution order (operators in
    `skip`, the tiled ones, read their own weights).

    A tensor is loaded only when every operator reading it reads it in a loadable slot (an operator
    that needs the data at Prepare, or a constant tensor, keeps its input inline)."""
    picks, seen = [], _read_elsewhere(model)
    for op in range(len(model.operators)):
        slots = LOADABLE_INPUTS.get(model.opcode_name(op), ()) if op not in skip else ()
        inputs = model.operators[op].inputs
        for slot in slots:
            if inputs is None or slot >= len(inputs) or inputs[slot] < 0:
                continue
            t = int(inputs[slot])
            b = model.constant_buffer(t)
            if t in seen or b is None or len(model.buffers[b]) < min_bytes:
                continue
            if len(model.buffers[b]) != model.tensor_nbytes(t):
                continue  # packed/sparse data whose size differs from the tensor's: keep it inline
            seen.add(t)
            picks.append((op, t, b))
    return picks


def _read_elsewhere(model: Model) -> set[int]:
    """Tensors some operator reads in a slot that is not loadable."""
    tensors = set()
    for op in range(len(model.operators)):
        slots = LOADABLE_INPUTS.get(model.opcode_name(op), ())
        inputs = model.operators[op].inputs
        for slot, t in enumerate(inputs if inputs is not None else []):
            if t >= 0 and slot not in slots:
                tensors.add(int(t))
    return tensors


def _strip(model: Model, loaded: set[int], detached: set[int] = frozenset()) -> Model:
    """A copy of the model whose loaded tensors have no data (buffer 0), whose `detached` tensors
    (tiled weights) have neither data nor size, and without the tflm_swap manifest."""
    fb = copy.deepcopy(model.fb)
    buffers = list(model.buffers)
    if buffers[0]:
        raise UnsupportedModelError(f"{model.source}: buffer 0 holds data; TFLite reserves it as the empty buffer")
    for t in loaded:
        fb.subgraphs[0].tensors[t].buffer = 0
    for t in detached:
        detach_tensor(Model(fb, buffers, b"", model.source), t)
    still_used = {int(tensor.buffer) for sg in fb.subgraphs for tensor in sg.tensors or []} | {
        int(m.buffer) for m in fb.metadata or []}
    for b in range(1, len(buffers)):
        if b not in still_used:
            buffers[b] = b""
    fb.metadata = [m for m in fb.metadata or [] if text(m.name) != MANIFEST_NAME]
    for m in model.fb.metadata or []:
        if text(m.name) == MANIFEST_NAME:
            buffers[m.buffer] = b""
    return Model(fb, buffers, b"", model.source)


def _was_encoded(model: Model) -> bool:
    """The model was read from a segmented file holding palette-encoded entries, or from upstream
    TFLM's DECODE layout."""
    blob = model.metadata(MANIFEST_NAME)
    return bool(model.transcoded) or blob is not None and any(s.encoded for s in Manifest.decode(blob).segments)


def _custom(opcode: int, inputs: list[int], outputs: list[int], segment: int, flags: int) -> tfl.OperatorT:
    return make_operator(opcode, inputs, outputs, custom_options=struct.pack("<II", segment, flags))


def _insert_ops(model: Model, picks, seg_of: dict[int, int], prefetch: bool, flags: int,
                replace: dict[int, list[tfl.OperatorT]], encoded: dict[int, int]) -> tuple[list[LoadStep], list[int]]:
    """Insert the load operators into the model's operator list and put in the `replace`ments;
    returns the loads in graph order and each source operator's new index. Segments in `encoded`
    (segment -> stored bytes) are decoded by their load; a prefetched one must be large enough to
    split off the tail its WAIT reads (`PREFETCH_ENCODED_MIN_BYTES`)."""
    by_op: dict[int, list[tuple[int, int]]] = {}
    for op, t, b in picks:
        by_op.setdefault(op, []).append((t, seg_of[b]))
    eligible = {op: [x for x in items if encoded.get(x[1], PREFETCH_ENCODED_MIN_BYTES) >= PREFETCH_ENCODED_MIN_BYTES]
                for op, items in by_op.items()}
    asynchronous = {op: max(items, key=lambda x: model.tensor_nbytes(x[0])) for op, items in eligible.items()
                    if items and (op == 0 or op - 1 not in replace)} if prefetch else {}
    codes = {kind: opcode_index(model, tfl.BuiltinOperator.CUSTOM, kind)
             for kind in (LOAD_OP, LOAD_START_OP, LOAD_WAIT_OP) if kind == LOAD_OP or prefetch}
    before: dict[int, list[tfl.OperatorT]] = {}
    steps: list[tuple[int, int, str, int, int, int]] = []  # original op, slot before it, kind, segment,
    #                                                         tensor, reader

    def coded(s: int) -> int:
        return FLAG_ENCODED if s in encoded else 0

    def load(k: int, kind: str, t: int, s: int, reader: int, op_flags: int) -> None:
        inputs, outputs = ([t], []) if kind == LOAD_WAIT_OP else ([], [t])
        before.setdefault(k, []).append(_custom(codes[kind], inputs, outputs, s, op_flags))
        steps.append((k, len(before[k]) - 1, kind, s, t, reader))

    for k in range(len(model.operators)):
        if k == 0 and 0 in asynchronous:
            load(0, LOAD_START_OP, *asynchronous[0], 0, coded(asynchronous[0][1]))
        if k in asynchronous:
            load(k, LOAD_WAIT_OP, *asynchronous[k], k, flags | coded(asynchronous[k][1]))
        for t, s in by_op.get(k, []):
            if asynchronous.get(k) != (t, s):
                load(k, LOAD_OP, t, s, k, flags | coded(s))
        if k + 1 in asynchronous:
            load(k, LOAD_START_OP, *asynchronous[k + 1], k + 1, coded(asynchronous[k + 1][1]))
    position = splice_operators(model, before=before, replace=replace)  # original op k -> new index
    return [LoadStep(position[k] - len(before[k]) + slot, kind, s, t, position[reader], s in encoded)
            for k, slot, kind, s, t, reader in steps], position
