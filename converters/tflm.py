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
The rewritten graph has no `Buffer.offset` anywhere.
"""

from __future__ import annotations

import copy
import struct
from dataclasses import dataclass, field

from tflm_swap.errors import UnsupportedModelError
from tflm_swap.format.flash_image import DEFAULT_ALIGNMENT, ImageSegment
from tflm_swap.format.manifest import MANIFEST_NAME
from tflm_swap.format.model import Model
from tflm_swap.format.schema import text, tfl
from tflm_swap.format.segments import DEFAULT_MIN_SEGMENT_BYTES
from tflm_swap.interpreters import ensure_tflm_compatible

from .flash_image import build_image
from .graph import make_operator, opcode_index, splice_operators

LOAD_OP = "TSWAP_LOAD"
LOAD_START_OP = "TSWAP_LOAD_START"
LOAD_WAIT_OP = "TSWAP_LOAD_WAIT"
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

    @property
    def flash_bytes_per_inference(self) -> int:
        """Bytes read from the image per inference (each load reads its whole segment once)."""
        return sum(self.segments[s.segment].size for s in self.loads if s.kind != LOAD_WAIT_OP)

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
) -> MicroModel:
    """Rewrite a `.tflite` (bytes, or the `Model` parsed from them; plain or segmented) into a TFLM
    graph with load operators + image. The rewritten graph is parsed back once to check it
    (`MicroModel.graph_model`), and whoever reads it next takes that instead of parsing again."""
    if min_segment_bytes < 1:
        raise UnsupportedModelError(f"minimum segment size {min_segment_bytes} must be >= 1 byte")
    model = data if isinstance(data, Model) else Model.from_bytes(data, source=source)
    model.check_single_graph()
    _refuse_offline_plan(model)
    picks = _pick_loads(model, min_segment_bytes)
    buffers = list(dict.fromkeys(b for _, _, b in picks))
    seg_of = {b: i for i, b in enumerate(buffers)}
    image, segments = build_image([model.buffers[b] for b in buffers], alignment)
    new = _strip(model, {t for _, t, _ in picks})
    flags = FLAG_VERIFY_CRC if verify_crc else 0
    loads = _insert_ops(new, picks, seg_of, prefetch, flags)
    graph = bytes(new.pack())
    graph_model = Model.from_bytes(graph, source=f"{model.source} (rewritten for TFLM)")
    ensure_tflm_compatible(graph_model)
    names = [model.tensor_name(next(t for _, t, b2 in picks if b2 == b)) for b in buffers]
    inline = sum(len(b) for i, b in enumerate(new.buffers) if i and b) - sum(
        len(new.buffers[m.buffer]) for m in new.fb.metadata or [])
    return MicroModel(graph, image, segments, names, loads, len(model.operators), prefetch, inline,
                      graph_model=graph_model)


def _refuse_offline_plan(model: Model) -> None:
    if model.metadata("OfflineMemoryAllocation") is not None:
        raise UnsupportedModelError(
            f"{model.source}: the model carries an offline memory plan (OfflineMemoryAllocation); "
            "inserting load operators would invalidate it. Remove the plan first."
        )


def _pick_loads(model: Model, min_bytes: int) -> list[tuple[int, int, int]]:
    """(first reader op, tensor, buffer) of every tensor to load, in execution order.

    A tensor is loaded only when every operator reading it reads it in a loadable slot (an operator
    that needs the data at Prepare, or a constant tensor, keeps its input inline)."""
    picks, seen = [], _read_elsewhere(model)
    for op in range(len(model.operators)):
        slots = LOADABLE_INPUTS.get(model.opcode_name(op), ())
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


def _strip(model: Model, loaded: set[int]) -> Model:
    """A copy of the model whose loaded tensors have no data (buffer 0) and no tflm_swap manifest."""
    fb = copy.deepcopy(model.fb)
    buffers = list(model.buffers)
    if buffers[0]:
        raise UnsupportedModelError(f"{model.source}: buffer 0 holds data; TFLite reserves it as the empty buffer")
    for t in loaded:
        fb.subgraphs[0].tensors[t].buffer = 0
    still_used = {int(tensor.buffer) for tensor in fb.subgraphs[0].tensors} | {
        int(m.buffer) for m in fb.metadata or []}
    for b in range(1, len(buffers)):
        if b not in still_used:
            buffers[b] = b""
    fb.metadata = [m for m in fb.metadata or [] if text(m.name) != MANIFEST_NAME]
    for m in model.fb.metadata or []:
        if text(m.name) == MANIFEST_NAME:
            buffers[m.buffer] = b""
    return Model(fb, buffers, b"", model.source)


def _custom(opcode: int, inputs: list[int], outputs: list[int], segment: int, flags: int) -> tfl.OperatorT:
    return make_operator(opcode, inputs, outputs, custom_options=struct.pack("<II", segment, flags))


def _insert_ops(model: Model, picks, seg_of: dict[int, int], prefetch: bool, flags: int) -> list[LoadStep]:
    """Insert the load operators into the model's operator list; returns them in graph order."""
    by_op: dict[int, list[tuple[int, int]]] = {}
    for op, t, b in picks:
        by_op.setdefault(op, []).append((t, seg_of[b]))
    asynchronous = {op: max(items, key=lambda x: model.tensor_nbytes(x[0])) for op, items in by_op.items()} \
        if prefetch else {}
    codes = {kind: opcode_index(model, tfl.BuiltinOperator.CUSTOM, kind)
             for kind in (LOAD_OP, LOAD_START_OP, LOAD_WAIT_OP) if kind == LOAD_OP or prefetch}
    before: dict[int, list[tfl.OperatorT]] = {}
    steps: list[tuple[int, int, str, int, int, int]] = []  # original op, slot before it, kind, segment,
    #                                                         tensor, reader

    def load(k: int, kind: str, t: int, s: int, reader: int, op_flags: int) -> None:
        inputs, outputs = ([t], []) if kind == LOAD_WAIT_OP else ([], [t])
        before.setdefault(k, []).append(_custom(codes[kind], inputs, outputs, s, op_flags))
        steps.append((k, len(before[k]) - 1, kind, s, t, reader))

    for k in range(len(model.operators)):
        if k == 0 and 0 in asynchronous:
            load(0, LOAD_START_OP, *asynchronous[0], 0, 0)
        if k in asynchronous:
            load(k, LOAD_WAIT_OP, *asynchronous[k], k, flags)
        for t, s in by_op.get(k, []):
            if asynchronous.get(k) != (t, s):
                load(k, LOAD_OP, t, s, k, flags)
        if k + 1 in asynchronous:
            load(k, LOAD_START_OP, *asynchronous[k + 1], k + 1, 0)
    position = splice_operators(model, before=before)  # original op k -> new index
    return [LoadStep(position[k] - len(before[k]) + slot, kind, s, t, position[reader])
            for k, slot, kind, s, t, reader in steps]
