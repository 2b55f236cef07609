"""Upstream TFLite Micro's compressed layout ("DECODE"), read (`expand`) and written (`to_decode_layout`).

Upstream TFLM compresses a constant tensor by rewriting it to a uint8 bitstring of indices and
inserting a custom operator TFLM_DECODE before each consumer: inputs (encoded, ancillary) pairs,
outputs the decoded tensors (no buffer). The ancillary tensor is a 16-byte DECODE Common Metadata
header (byte 0 decode type, 0 = LUT; byte 1 DCM version 1; LUT: byte 4 LUT version 1, byte 5
(axis << 4) | bit width, axis 15 = one table; byte 6 entries per table) and the value tables.
Element i of the tensor decodes to table[(i // inner) % channels][index i]: the same arithmetic as
our palette entries (`tflm_swap.format.palette`), with the same bitstring (most significant bit
first, trailing bits zero). docs/FORMAT.md "Upstream TFLM compression" has the details.
"""

from __future__ import annotations

import copy
import importlib
import math
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tflm_swap.errors import MalformedModelError, UnsupportedModelError
from tflm_swap.format import palette
from tflm_swap.format.model import Model, numpy_dtype
from tflm_swap.format.schema import text, tfl

from . import graph
from .compress import FILTER_OPS, filter_channels, without_manifest

DECODE_OP = "TFLM_DECODE"
DCM_SIZE = 16
DECODE_TYPES = {0: "LUT", 1: "HUFFMAN", 2: "PRUNING"}
LUT = 0
DCM_VERSION = 1
LUT_VERSION = 1
PER_TENSOR_AXIS = 15
MAX_BITS = 7  # byte 5 holds the bit width in 3 bits
MAX_STRIDE = 128  # TFLM's kMaxValueTableChannelStride


@dataclass(frozen=True)
class Lut:
    """One tensor in LUT form: `channels` tables of `table_len` entries, indices of `bits` bits."""

    bits: int
    table_len: int
    channels: int
    inner: int
    tables: np.ndarray  # (channels, table_len), the tensor's element type
    indices: bytes  # packed, most significant bit first


# ---------------------------------------------------------------------------------------- reading
def has_decode(model: Model) -> bool:
    """Whether any operator of the model is upstream's TFLM_DECODE."""
    return any(name == f"CUSTOM:{DECODE_OP}" for _, name in model.all_operator_names())


def expand(model: Model) -> Model:
    """The plain model an upstream-compressed `model` decodes to: each decoded tensor becomes a
    constant (the encoded tensor, at its index, takes the decoded shape, type, quantization and
    bytes), the TFLM_DECODE operators, their ancillary and decoded tensors, the buffers only they
    used and the operator code are removed. `model` itself is left as it is (returned when it has no
    TFLM_DECODE). Every field is checked: MalformedModelError (corrupt) or UnsupportedModelError
    (another decode type) naming the file, operator and tensor. `Model.transcoded` then holds, per
    restored int8 buffer, the same tables and bitstring as a palette entry, which
    `segment_model(encode=True)` stores where it is smaller than the raw bytes."""
    if not has_decode(model):
        return model
    code = _decode_code(model)
    for s, sg in enumerate(model.fb.subgraphs[1:], start=1):
        if any(op.opcodeIndex == code for op in sg.operators or []):
            raise UnsupportedModelError(f"{model.source}: subgraph {s} has {DECODE_OP} operators; tflm_swap "
                                        "expands them in the main subgraph only")
    out = Model.from_bytes(bytes(model.pack()), source=model.source)  # a deep copy to edit
    sg = out.subgraph
    decoded: dict[int, tuple[int, np.ndarray, Lut]] = {}  # decoded tensor -> (encoded tensor, values, lut)
    ancillary: set[int] = set()
    for k, op in enumerate(sg.operators):
        if op.opcodeIndex == code:
            for (enc, anc), dec in zip(_decode_pairs(out, k), out.op_outputs(k)):
                if dec in decoded:
                    raise MalformedModelError(f"{model.source}: operator {k} ({DECODE_OP}) writes tensor {dec}, "
                                              "which another DECODE writes too")
                values, lut = read_lut(out, k, enc, anc, dec)
                decoded[dec] = (enc, values, lut)
                ancillary.add(anc)
    _check_only_decoded(out, code, {enc for enc, _, _ in decoded.values()})
    sg.operators = [op for op in sg.operators if op.opcodeIndex != code]
    old_buffers = {int(sg.tensors[t].buffer) for t in [*decoded, *ancillary]} | {
        int(sg.tensors[e].buffer) for e, _, _ in decoded.values()}
    target, transcoded = _restore(out, decoded)
    _rewire(out, target)
    used = _referenced_tensors(out)
    graph.drop_tensors(out, {t for t in [*decoded, *ancillary] if t not in used})
    still = {int(t.buffer) for s in out.fb.subgraphs for t in s.tensors or []} | {
        int(m.buffer) for m in out.fb.metadata or []}
    gone = {b for b in old_buffers if b > 0 and b not in still}
    graph.drop_buffers(out, gone)
    graph.drop_operator_code(out, code)
    result = Model.from_bytes(bytes(out.pack()), source=model.source)
    result.transcoded = {b - sum(1 for g in gone if g < b): blob for b, blob in transcoded.items()}
    return result


def read_lut(model: Model, op: int, enc: int, anc: int, dec: int) -> tuple[np.ndarray, Lut]:
    """Decode one (encoded, ancillary) pair of TFLM_DECODE operator `op` into tensor `dec`'s
    values (flat, its element type), checking every field."""
    where = f"{model.source}: operator {op} ({DECODE_OP}), decoded tensor {dec} ({model.tensor_name(dec)})"
    enc_data, anc_data = _constant(model, enc, "encoded", where), _constant(model, anc, "ancillary", where)
    if len(anc_data) < DCM_SIZE:
        raise MalformedModelError(f"{where}: ancillary tensor {anc} is {len(anc_data)} bytes, shorter than the "
                                  f"{DCM_SIZE}-byte DECODE header")
    kind, version, lut_version, params, stride = anc_data[0], anc_data[1], anc_data[4], anc_data[5], anc_data[6]
    if kind != LUT:
        raise UnsupportedModelError(f"{where}: decode type {kind} ({DECODE_TYPES.get(kind, 'custom')}); "
                                    "tflm_swap reads LUT (0) only")
    bits, axis = params & 0x07, params >> 4
    problem = None
    if version != DCM_VERSION:
        problem = f"DECODE header version {version}, expected {DCM_VERSION}"
    elif lut_version != LUT_VERSION:
        problem = f"LUT version {lut_version}, expected {LUT_VERSION}"
    elif params & 0x08 or not 1 <= bits <= MAX_BITS:
        problem = f"parameter byte {params:#04x}: bit width {bits} outside 1..{MAX_BITS} or reserved bit set"
    elif stride > MAX_STRIDE:
        problem = f"table stride {stride} is above {MAX_STRIDE}"
    if problem:
        raise MalformedModelError(f"{where}: ancillary tensor {anc}: {problem}")
    tensor = model.tensors[dec]
    dtype = np.dtype(numpy_dtype(tensor.type))
    shape = [int(d) for d in tensor.shape] if tensor.shape is not None else []
    count = math.prod(shape)
    if count < 1:
        raise MalformedModelError(f"{where}: the decoded tensor has shape {shape}, no elements")
    channels, inner, table_len = _tables_shape(tensor, shape, axis, stride, len(anc_data) - DCM_SIZE,
                                               dtype.itemsize, f"{where}: ancillary tensor {anc}")
    need = (count * bits + 7) // 8
    if len(enc_data) != need:
        raise MalformedModelError(f"{where}: encoded tensor {enc} is {len(enc_data)} bytes; {count} {bits}-bit "
                                  f"indices take {need}" + (" (truncated)" if len(enc_data) < need else ""))
    table_bytes = anc_data[DCM_SIZE : DCM_SIZE + channels * table_len * dtype.itemsize]
    tables = np.frombuffer(table_bytes, dtype=dtype).reshape(channels, table_len)
    try:
        values = palette.lookup(tables, np.frombuffer(enc_data, dtype=np.uint8), bits, count, inner)
    except ValueError as exc:
        raise MalformedModelError(f"{where}: {exc}") from None
    return values, Lut(bits, table_len, channels, inner, tables, bytes(enc_data))


def _tables_shape(tensor: tfl.TensorT, shape: list[int], axis: int, stride: int, table_bytes: int,
                  itemsize: int, where: str) -> tuple[int, int, int]:
    """(channels, inner, entries per table) of the value tables. Stride 0: one table shared by every
    channel, all bytes after the header. Otherwise the tables run along the DCM axis (15: one table);
    a file of the pinned TFLM's format (axis bits 0, channels from the quantization, as its kernel
    reads them) is accepted when only that reading fits the tables' size."""
    count = math.prod(shape)
    if stride == 0:
        entries, rest = divmod(table_bytes, itemsize)
        if rest or not 1 <= entries <= MAX_STRIDE:
            raise MalformedModelError(f"{where}: stride 0 (one shared table) with {table_bytes} table bytes, "
                                      f"not 1..{MAX_STRIDE} entries of {itemsize} bytes")
        return 1, count, entries
    options = []
    if axis == PER_TENSOR_AXIS:
        options.append((1, count))
    elif axis >= len(shape):
        raise MalformedModelError(f"{where}: table axis {axis} is outside the decoded tensor's rank {len(shape)}")
    elif axis not in (0, len(shape) - 1):
        raise UnsupportedModelError(f"{where}: table axis {axis}; TFLM decodes along the first or last axis only")
    else:
        options.append((shape[axis], math.prod(shape[axis + 1:])))
        if axis == 0:
            options.append(_quantized_channels(tensor, shape))
    for channels, inner in options:
        if channels * stride * itemsize == table_bytes:
            return channels, inner, stride
    channels = options[0][0]
    raise MalformedModelError(f"{where}: {table_bytes} bytes of value tables; {channels} table(s) of {stride} "
                              f"entries of {itemsize} bytes take {channels * stride * itemsize}")


def _quantized_channels(tensor: tfl.TensorT, shape: list[int]) -> tuple[int, int]:
    """(channels, inner) the pinned TFLM kernel uses: per quantization scale along the quantized axis."""
    q = tensor.quantization
    scales = len(q.scale) if q is not None and q.scale is not None else 0
    if scales <= 1:
        return 1, math.prod(shape)
    axis = int(q.quantizedDimension)
    return scales, (1 if axis == len(shape) - 1 else math.prod(shape) // scales)


def _decode_code(model: Model) -> int:
    return next(i for i, c in enumerate(model.fb.operatorCodes)
                if max(c.builtinCode, c.deprecatedBuiltinCode) == tfl.BuiltinOperator.CUSTOM
                and text(c.customCode) == DECODE_OP)


def _decode_pairs(model: Model, op: int) -> list[tuple[int, int]]:
    ins, outs = model.op_inputs(op), model.op_outputs(op)
    raw = model.operators[op].inputs
    if not outs or len(ins) != 2 * len(outs) or len(raw) != len(ins):
        raise MalformedModelError(f"{model.source}: operator {op} ({DECODE_OP}) has {len(raw)} inputs and "
                                  f"{len(outs)} outputs; it takes an (encoded, ancillary) pair per output")
    return [(ins[2 * i], ins[2 * i + 1]) for i in range(len(outs))]


def _constant(model: Model, tensor: int, role: str, where: str) -> bytes:
    b = model.constant_buffer(tensor)
    if b is None or model.tensors[tensor].type != tfl.TensorType.UINT8:
        raise MalformedModelError(f"{where}: {role} tensor {tensor} ({model.tensor_name(tensor)}) is not a "
                                  "constant uint8 tensor")
    return model.buffers[b]


def _restore(model: Model, decoded: dict[int, tuple[int, np.ndarray, Lut]]
             ) -> tuple[dict[int, int], dict[int, bytes]]:
    """Make each encoded tensor the constant its DECODE outputs hold (a second, different decoding
    of the same encoded tensor keeps its own output tensor as the constant). Returns decoded tensor
    -> the tensor its readers read now, and buffer -> its palette transcoding."""
    tensors, target, chosen = model.tensors, {}, {}  # chosen: encoded tensor -> (values bytes, tensor)
    users: dict[int, list[int]] = {}
    for t, tensor in enumerate(tensors):
        users.setdefault(int(tensor.buffer), []).append(t)
    placed: dict[int, bytes] = {}  # buffer -> bytes put in place
    transcoded: dict[int, bytes] = {}
    for dec, (enc, values, lut) in decoded.items():
        data = values.tobytes()
        if enc in chosen and chosen[enc][0] == data:
            target[dec] = chosen[enc][1]
            continue
        keep = enc if enc not in chosen else dec
        chosen.setdefault(enc, (data, keep))
        target[dec] = keep
        source = tensors[dec]
        tensor = tensors[keep]
        old = int(tensors[enc].buffer)
        if keep == enc:
            tensor.shape, tensor.type = list(source.shape), source.type
            tensor.shapeSignature, tensor.quantization = source.shapeSignature, copy.deepcopy(source.quantization)
        shared = [u for u in users.get(old, []) if u != enc]
        if keep == enc and (not shared or placed.get(old) == data) and old > 0:
            model.buffers[old] = data
            placed[old] = data
            buffer = old
        else:
            buffer = graph.add_buffer(model, data)
        tensor.buffer = buffer
        blob = _as_palette(lut, values)
        if blob is not None:
            transcoded[buffer] = blob
    return target, transcoded


def _as_palette(lut: Lut, values: np.ndarray) -> bytes | None:
    """The palette entry with `lut`'s tables and bitstring (int8 tensors whose tables fit its header)."""
    if values.dtype != np.int8 or lut.table_len > 1 << lut.bits:
        return None
    header = palette.pack_header(lut.bits, lut.table_len, values.size, lut.channels, lut.inner)
    return header + lut.tables.tobytes() + lut.indices


def _rewire(model: Model, target: dict[int, int]) -> None:
    sg = model.subgraph
    for op in sg.operators:
        op.inputs = [target.get(int(t), int(t)) if t >= 0 else t for t in op.inputs]
    sg.outputs = [target.get(int(t), int(t)) for t in sg.outputs]


def _check_only_decoded(model: Model, code: int, encoded: set[int]) -> None:
    """An encoded tensor is read by DECODE operators only (it becomes the decoded constant)."""
    for k, op in enumerate(model.operators):
        read = encoded & set(model.op_inputs(k)) if op.opcodeIndex != code else set()
        if read:
            raise MalformedModelError(f"{model.source}: operator {k} ({model.opcode_name(k)}) reads encoded "
                                      f"tensor {min(read)} directly, not through {DECODE_OP}")


def _referenced_tensors(model: Model) -> set[int]:
    used = set(model.inputs) | set(model.outputs)
    for k in range(len(model.operators)):
        used.update(model.op_inputs(k), model.op_outputs(k), model.op_intermediates(k))
    for sig in model.fb.signatureDefs or []:
        if int(sig.subgraphIndex) == 0:
            used.update(int(e.tensorIndex) for e in [*(sig.inputs or []), *(sig.outputs or [])])
    return used


# ---------------------------------------------------------------------------------------- writing
def to_decode_layout(model: Model | bytes) -> bytes:
    """Upstream TFLM's DECODE layout of a compressed model (int8 filters taking few values per
    channel, as `compress` writes): each filter the palette encoder would store encoded (per-channel
    tables along the quantized axis, or one shared table) becomes a LUT-encoded uint8 tensor with
    the same tables and bitstring, decoded by a TFLM_DECODE before each consumer; the rest stays raw.
    Bit widths above 7, and per-channel tables on a filter quantized per tensor (TFLM's kernel counts
    channels from the quantization), fall back to one shared table or raw bytes. `expand` of the
    result gives `model` back, byte-identical in every buffer."""
    if not isinstance(model, Model):
        model = Model.from_bytes(model)
    model = expand(model)
    model.check_single_graph()
    out = without_manifest(model, list(model.buffers))
    out = Model.from_bytes(bytes(out.pack()), source=model.source)  # a deep copy to edit
    originals = copy.deepcopy(out.tensors)
    encoded = _encode_filters(out)
    if encoded:
        _insert_decodes(out, encoded, originals)
    return bytes(out.pack())


def _encode_filters(model: Model) -> dict[int, int]:
    """Rewrite each filter `_lut_layout` encodes to its uint8 indices, next to a new ancillary
    tensor; returns encoded tensor -> its ancillary tensor."""
    users: dict[int, list[int]] = {}
    for t, tensor in enumerate(model.tensors):
        users.setdefault(int(tensor.buffer), []).append(t)
    encoded: dict[int, int] = {}
    for b, (channels, inner) in filter_channels(model).items():
        tensors = users[b]
        layout = _lut_layout(model, tensors[0], channels, inner)
        if layout is None or not all(_same_filter(model, t, tensors[0]) for t in tensors):
            continue
        indices, ancillary = layout
        model.buffers[b] = indices
        anc = graph.add_tensor(model, graph.make_tensor(f"{model.tensor_name(tensors[0])}_ancillary",
                                                        [len(ancillary)], tfl.TensorType.UINT8,
                                                        graph.add_buffer(model, ancillary)))
        for t in tensors:
            tensor = model.tensors[t]
            tensor.shape, tensor.shapeSignature = [len(indices)], None
            tensor.type, tensor.quantization = tfl.TensorType.UINT8, None
            encoded[t] = anc
    return encoded


def _insert_decodes(model: Model, encoded: dict[int, int], originals: list[tfl.TensorT]) -> None:
    """One TFLM_DECODE before each operator reading encoded tensors, writing them decoded into new
    tensors (copies of the `originals`, without buffer) that only this operator reads, as upstream
    inserts them (a decoded tensor lives until its one consumer has run)."""
    code = graph.opcode_index(model, tfl.BuiltinOperator.CUSTOM, DECODE_OP)
    before = {}
    for k in range(len(model.operators)):
        reads = list(dict.fromkeys(t for t in model.op_inputs(k) if t in encoded))
        if not reads:
            continue
        outputs = []
        for t in reads:
            decoded = copy.deepcopy(originals[t])
            decoded.name, decoded.buffer = f"{text(originals[t].name)}_decoded", 0
            outputs.append(graph.add_tensor(model, decoded))
        op = model.operators[k]
        op.inputs = [outputs[reads.index(int(t))] if int(t) in reads else t for t in op.inputs]
        before[k] = [graph.make_operator(code, [x for t in reads for x in (t, encoded[t])], outputs)]
    graph.splice_operators(model, before=before)


def _same_filter(model: Model, t: int, first: int) -> bool:
    """Tensors sharing a filter buffer are encoded together only when they agree on shape and quantization."""
    a, b = model.tensors[t], model.tensors[first]
    return list(a.shape) == list(b.shape) and _scales(a) == _scales(b)


def _scales(tensor: tfl.TensorT) -> tuple:
    q = tensor.quantization
    if q is None or q.scale is None:
        return ()
    return tuple(float(s) for s in q.scale), int(q.quantizedDimension)


def _lut_layout(model: Model, t: int, channels: int, inner: int) -> tuple[bytes, bytes] | None:
    """(encoded indices, ancillary bytes) of filter tensor `t`, or None to leave it raw: the palette
    encoder's choice where TFLM's kernel can decode it, else one shared table where that is smaller."""
    values = np.frombuffer(model.buffers[model.tensors[t].buffer], dtype=np.int8)
    scales = _scales(model.tensors[t])
    per_channel_ok = bool(scales) and len(scales[0]) == channels > 1
    blob = palette.encode(values, channels, inner)
    if blob is not None:
        h = palette.read_header(blob, model.source)
        if h.channels > 1 and not per_channel_ok or h.bits > MAX_BITS:
            blob = palette.encode_tables(values, 1, values.size)
            h = palette.read_header(blob, model.source)
            if h.bits > MAX_BITS or h.size >= values.size:
                return None
    if blob is None:
        return None
    tables = blob[palette.HEADER_SIZE : palette.HEADER_SIZE + h.table_bytes]
    indices = blob[palette.HEADER_SIZE + h.table_bytes :]
    shared = h.channels == 1
    axis = PER_TENSOR_AXIS if shared else scales[1]
    # one shared table on a filter quantized per channel: stride 0, so that the pinned TFLM kernel
    # (which steps one stride per quantization channel) reads the same table for every channel
    stride = 0 if shared and len(scales[0] if scales else ()) > 1 else h.table_len
    dcm = struct.pack("<BBHBBB9x", LUT, DCM_VERSION, 0, LUT_VERSION, (axis << 4) | h.bits, stride)
    return indices, dcm + tables


# ------------------------------------------------------------------------------ upstream's own tool
def upstream_compress(model: Model | bytes) -> bytes:
    """`model` (filters taking at most 128 values per channel, as `compress` writes) compressed by
    upstream TFLM's own tool (pip `tflite_micro`; ImportError without it), in the form the pinned
    TFLM's kernel decodes: LUT tables per channel along the quantized axis of a filter quantized per
    channel, one table (the bit width its values need, at least 4) for a filter quantized per tensor
    (left raw when it takes more than 128 values)."""

    def lut(model: Model, t: int, spec: Any) -> Any:
        scales = _scales(model.tensors[t])
        if scales and len(scales[0]) > 1:
            mode, bits = spec.PerChannel(axis=scales[1]), 4
        else:
            used = len(np.unique(np.frombuffer(model.buffers[model.tensors[t].buffer], np.int8)))
            mode, bits = spec.PerTensor(), max(4, palette.bits_for(used))
        if bits > MAX_BITS:
            return None  # more than 128 values in one table: the pinned kernel has no form for it, left raw
        return spec.LookUpTableCompression(index_bitwidth=bits, mode=mode)

    return run_upstream_tool(model, lut)


def run_upstream_tool(model: Model | bytes, lut: Callable[[Model, int, Any], Any]) -> bytes:
    """`model` compressed by upstream TFLM's own tool (pip `tflite_micro`; ImportError without it):
    each constant filter of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED with the compression
    `lut(model, tensor, spec)` gives (upstream's `spec` module's LookUpTableCompression, or None to
    leave it raw)."""
    up = importlib.import_module("tflite_micro.tensorflow.lite.micro.compression.compress")
    spec = importlib.import_module("tflite_micro.tensorflow.lite.micro.compression.spec")
    model = Model.from_bytes(model if isinstance(model, bytes) else bytes(model.pack()))
    # upstream's model editor reads builtin_code only: a code written in deprecated_builtin_code alone
    # (TFLite's converter and our writer do so below 127) would collapse to ADD (0)
    for code in model.fb.operatorCodes:
        code.builtinCode = max(code.builtinCode, code.deprecatedBuiltinCode)
    specs, seen = [], set()
    for op in range(len(model.operators)):
        slot_axis = FILTER_OPS.get(model.opcode_name(op))
        if slot_axis is None or len(model.op_inputs(op)) <= slot_axis[0]:
            continue
        t = model.op_inputs(op)[slot_axis[0]]
        if t in seen or model.constant_buffer(t) is None:
            continue
        seen.add(t)
        method = lut(model, t, spec)
        if method is not None:
            specs.append(spec.Tensor(subgraph=0, tensor=t, compression=[method]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # upstream warns of "expansion" for small depthwise filters
        return bytes(up.compress(bytes(model.pack()), specs))
