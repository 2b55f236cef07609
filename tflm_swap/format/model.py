"""A parsed `.tflite` model: the schema object tree plus the resolved bytes of every buffer.

Reading validates the flatbuffer at the boundary so that later stages never meet an index out of range
or a buffer beyond the end of the file. Writing goes through the schema's object API and the
`flatbuffers` builder; constant data is kept 16-byte aligned as the TFLite schema requires.
"""

from __future__ import annotations

import copy
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import flatbuffers
import numpy as np

from ..errors import MalformedModelError, SegmentIntegrityError, TflmSwapError, UnsupportedModelError
from .schema import BUILTIN_NAMES, FILE_IDENTIFIER, TENSOR_TYPE_NAMES, text, tfl

DATA_ALIGNMENT = 16  # TFLite's `force_align: 16` on Buffer.data
_NO_EXTERNAL_OFFSET = 1  # TFLite treats Buffer.offset <= 1 as "no external data"

# Bits per element of each tensor type; None for types without a fixed size.
_TYPE_BITS: dict[int, int | None] = {
    tfl.TensorType.FLOAT32: 32, tfl.TensorType.FLOAT16: 16, tfl.TensorType.INT32: 32,
    tfl.TensorType.UINT8: 8, tfl.TensorType.INT64: 64, tfl.TensorType.STRING: None,
    tfl.TensorType.BOOL: 8, tfl.TensorType.INT16: 16, tfl.TensorType.COMPLEX64: 64,
    tfl.TensorType.INT8: 8, tfl.TensorType.FLOAT64: 64, tfl.TensorType.COMPLEX128: 128,
    tfl.TensorType.UINT64: 64, tfl.TensorType.RESOURCE: None, tfl.TensorType.VARIANT: None,
    tfl.TensorType.UINT32: 32, tfl.TensorType.UINT16: 16, tfl.TensorType.INT4: 4,
}
for _name in ("BFLOAT16",):
    if hasattr(tfl.TensorType, _name):
        _TYPE_BITS[getattr(tfl.TensorType, _name)] = 16

_NUMPY_TYPES = {
    tfl.TensorType.FLOAT32: np.float32, tfl.TensorType.FLOAT16: np.float16, tfl.TensorType.FLOAT64: np.float64,
    tfl.TensorType.INT8: np.int8, tfl.TensorType.UINT8: np.uint8, tfl.TensorType.INT16: np.int16,
    tfl.TensorType.UINT16: np.uint16, tfl.TensorType.INT32: np.int32, tfl.TensorType.UINT32: np.uint32,
    tfl.TensorType.INT64: np.int64, tfl.TensorType.UINT64: np.uint64, tfl.TensorType.BOOL: np.bool_,
    tfl.TensorType.COMPLEX64: np.complex64, tfl.TensorType.COMPLEX128: np.complex128,
}


def element_bits(tensor_type: int) -> int | None:
    """Bits per element of a TFLite tensor type (None: no fixed size, e.g. STRING)."""
    return _TYPE_BITS.get(tensor_type)


def numpy_dtype(tensor_type: int) -> type:
    """The numpy type LiteRT uses for a TFLite tensor type."""
    if tensor_type not in _NUMPY_TYPES:
        raise UnsupportedModelError(f"tensor type {TENSOR_TYPE_NAMES.get(tensor_type, tensor_type)} has no numpy type")
    return _NUMPY_TYPES[tensor_type]


# Operators that call other subgraphs: their data flow is not visible in one operator list.
CONTROL_FLOW_OPS = frozenset({"IF", "WHILE", "CALL_ONCE", "CALL", "STABLEHLO_WHILE", "STABLEHLO_CASE"})


@dataclass(frozen=True)
class ExternalBuffer:
    """Where a buffer's bytes live outside the flatbuffer: absolute file offset and size."""

    offset: int
    size: int


class Model:
    """A TFLite model with resolved buffer data.

    `buffers[i]` holds the bytes of buffer `i`, whether they sit inside the flatbuffer or after it
    (`Buffer.offset/size`). Only the first subgraph is the model's graph; see `check_single_graph`.
    """

    def __init__(
        self,
        fb: tfl.ModelT,
        buffers: list[bytes],
        raw: bytes,
        source: str,
        deferred: dict[int, ExternalBuffer] | None = None,
    ):
        self.fb = fb
        self.buffers = buffers
        self.raw = raw
        self.source = source
        self.deferred = deferred or {}  # external buffers not read (graph-only parse)
        # buffer -> palette entry with the tables and bitstring the file stored it as (upstream TFLM's
        # DECODE layout, read by `converters.decode_layout.expand`); `segment_model(encode=True)` keeps it
        self.transcoded: dict[int, bytes] = {}

    # ----------------------------------------------------------------------------------- reading
    @classmethod
    def from_bytes(
        cls, data: bytes | bytearray | memoryview, source: str = "<bytes>", read_external: bool = True
    ) -> Model:
        """Parse and validate `.tflite` bytes. Raises MalformedModelError on corrupt input.

        With `read_external=False` only the flatbuffer is needed: buffers stored after it
        (`Buffer.offset`) are not read; they are listed in `deferred` and their `buffers` entry is empty.
        """
        raw = bytes(data)
        _check_header(raw, source)
        try:
            fb = tfl.ModelT.InitFromPackedBuf(bytearray(raw), 0)
        except Exception as exc:  # flatbuffers raises whatever its struct reads hit
            raise MalformedModelError(
                f"{source}: not a readable TFLite flatbuffer (truncated or corrupt): {exc!r}"
            ) from exc
        deferred = {} if read_external else _external_buffers(fb)
        buffers = _resolve_buffers(fb, raw, source, skip=deferred)
        model = cls(fb, buffers, raw, source, deferred)
        model._validate()
        if read_external:
            _check_external_weights(model)
        else:
            _note_decoded_sizes(model)
        return model

    @classmethod
    def load(cls, path: str | Path) -> Model:
        """Read and parse a `.tflite` file."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise MalformedModelError(f"{path}: cannot read model file: {exc.strerror}") from exc
        return cls.from_bytes(data, source=str(path))

    def _validate(self) -> None:
        fb, where = self.fb, self.source
        if not fb.subgraphs:
            raise MalformedModelError(f"{where}: model has no subgraph")
        if not fb.buffers:
            raise MalformedModelError(f"{where}: model has no buffer table")
        n_codes, n_buffers = len(fb.operatorCodes or []), len(fb.buffers)
        for s, sg in enumerate(fb.subgraphs):
            tensors = sg.tensors or []
            for t, tensor in enumerate(tensors):
                if not 0 <= tensor.buffer < n_buffers:
                    raise MalformedModelError(
                        f"{where}: subgraph {s} tensor {t} refers to buffer {tensor.buffer}, "
                        f"but the model has {n_buffers} buffers"
                    )
                if tensor.shape is not None and any(int(d) < 0 for d in tensor.shape):
                    raise UnsupportedModelError(
                        f"{where}: tensor {t} ({_name_of(tensor)}) has a dynamic shape "
                        f"{list(tensor.shape)}; resize it before conversion"
                    )
            _check_indices(sg.inputs, len(tensors), f"{where}: subgraph {s} inputs")
            _check_indices(sg.outputs, len(tensors), f"{where}: subgraph {s} outputs")
            for o, op in enumerate(sg.operators or []):
                if not 0 <= op.opcodeIndex < n_codes:
                    raise MalformedModelError(
                        f"{where}: subgraph {s} operator {o} has opcode index {op.opcodeIndex}, "
                        f"but the model has {n_codes} operator codes"
                    )
                for field in ("inputs", "outputs", "intermediates"):
                    _check_indices(getattr(op, field), len(tensors),
                                   f"{where}: subgraph {s} operator {o} {field}", optional=True)
        for m in fb.metadata or []:
            if not 0 <= m.buffer < n_buffers:
                raise MalformedModelError(f"{where}: metadata {m.name!r} refers to missing buffer {m.buffer}")

    # ------------------------------------------------------------------------------- the graph
    def check_single_graph(self, allow_call_once: bool = False) -> None:
        """Raise UnsupportedModelError unless the model is one subgraph without control flow.

        `allow_call_once`: also accept further subgraphs run only by CALL_ONCE (the initialiser of a
        stateful model's resource variables); the main subgraph's operators still run in list order."""
        allowed = {"CALL_ONCE"} if allow_call_once else set()
        for s, name in self.all_operator_names():
            if name in CONTROL_FLOW_OPS and name not in allowed:
                raise UnsupportedModelError(
                    f"{self.source}: subgraph {s} has {name}, a control-flow op calling other subgraphs; "
                    f"tflm_swap does not handle control flow{' other than CALL_ONCE' if allowed else ''}"
                )
        if len(self.fb.subgraphs) != 1 and not allowed:
            raise UnsupportedModelError(
                f"{self.source}: model has {len(self.fb.subgraphs)} subgraphs; tflm_swap handles "
                "single-subgraph models here (the TFLM target also takes stateful models with CALL_ONCE)"
            )

    def all_operator_names(self) -> list[tuple[int, str]]:
        """(subgraph, builtin name) of every operator of every subgraph (custom ops as 'CUSTOM:<code>')."""
        return [(s, self._code_name(op.opcodeIndex)) for s, sg in enumerate(self.fb.subgraphs)
                for op in sg.operators or []]

    def resource_variable_count(self) -> int:
        """Distinct resource variables (VAR_HANDLE container/shared name pairs) over all subgraphs."""
        names = set()
        for sg in self.fb.subgraphs:
            for op in sg.operators or []:
                if self._code_name(op.opcodeIndex) == "VAR_HANDLE":
                    options = op.builtinOptions
                    names.add((text(getattr(options, "container", None) or b""),
                               text(getattr(options, "sharedName", None) or b"")))
        return len(names)

    @property
    def subgraph(self) -> tfl.SubGraphT:
        return self.fb.subgraphs[0]

    @property
    def tensors(self) -> list[tfl.TensorT]:
        return self.subgraph.tensors or []

    @property
    def operators(self) -> list[tfl.OperatorT]:
        """Operators of the main subgraph, in execution order (TFLite runs them in list order)."""
        return self.subgraph.operators or []

    @property
    def inputs(self) -> list[int]:
        return [int(i) for i in (self.subgraph.inputs if self.subgraph.inputs is not None else [])]

    @property
    def outputs(self) -> list[int]:
        return [int(i) for i in (self.subgraph.outputs if self.subgraph.outputs is not None else [])]

    def opcode_name(self, op_index: int) -> str:
        """Builtin name of an operator (custom ops as 'CUSTOM:<code>')."""
        return self._code_name(self.operators[op_index].opcodeIndex)

    def _code_name(self, opcode_index: int) -> str:
        code = self.fb.operatorCodes[opcode_index]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        if builtin == tfl.BuiltinOperator.CUSTOM:
            return f"CUSTOM:{text(code.customCode)}"
        return BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}")

    def op_inputs(self, op_index: int) -> list[int]:
        """Tensor indices read by an operator (optional inputs, -1, left out)."""
        ins = self.operators[op_index].inputs
        return [int(t) for t in (ins if ins is not None else []) if t >= 0]

    def op_outputs(self, op_index: int) -> list[int]:
        outs = self.operators[op_index].outputs
        return [int(t) for t in (outs if outs is not None else []) if t >= 0]

    def op_intermediates(self, op_index: int) -> list[int]:
        mids = self.operators[op_index].intermediates
        return [int(t) for t in (mids if mids is not None else []) if t >= 0]

    def tensor_name(self, tensor_index: int) -> str:
        return _name_of(self.tensors[tensor_index])

    def tensor_type_name(self, tensor_index: int) -> str:
        return TENSOR_TYPE_NAMES.get(self.tensors[tensor_index].type, "UNKNOWN")

    def tensor_nbytes(self, tensor_index: int) -> int:
        """Bytes the tensor occupies at run time (shape x element size)."""
        tensor = self.tensors[tensor_index]
        bits = _TYPE_BITS.get(tensor.type)
        if bits is None:
            data = self.buffers[tensor.buffer]
            if data:
                return len(data)
            raise UnsupportedModelError(
                f"{self.source}: tensor {tensor_index} ({_name_of(tensor)}) has type "
                f"{self.tensor_type_name(tensor_index)}, whose size is not known before run time"
            )
        count = math.prod(int(d) for d in (tensor.shape if tensor.shape is not None else []))
        return (count * bits + 7) // 8

    def constant_buffer(self, tensor_index: int) -> int | None:
        """Index of the buffer holding the tensor's constant data, or None for activations."""
        tensor = self.tensors[tensor_index]
        if tensor.isVariable or tensor.buffer <= 0:
            return None
        return tensor.buffer if self.buffers[tensor.buffer] or tensor.buffer in self.deferred else None

    def buffer_size(self, buffer_index: int) -> int:
        """Bytes of a buffer's data, read or deferred."""
        ext = self.deferred.get(buffer_index)
        return ext.size if ext else len(self.buffers[buffer_index])

    def metadata(self, name: str) -> bytes | None:
        """Bytes of the named metadata entry, or None."""
        for m in self.fb.metadata or []:
            if text(m.name) == name:
                return self.buffers[m.buffer]
        return None

    # ----------------------------------------------------------------------------------- writing
    def pack(
        self,
        external: dict[int, ExternalBuffer] | None = None,
        metadata: dict[str, bytes] | None = None,
    ) -> bytearray:
        """Serialise the model.

        `external` maps buffer indices to the place their bytes will occupy after the flatbuffer
        (the caller appends them); other buffers are stored inline. `metadata` adds or replaces
        named metadata entries. The model object itself is left unchanged.
        """
        external = external or {}
        unread = sorted(set(self.deferred) - set(external))
        if unread:
            raise TflmSwapError(f"{self.source}: buffers {unread[:5]} were not read; cannot write them inline")
        fb = copy.copy(self.fb)
        fb.buffers = [
            _AlignedBufferT(None, ext.offset, ext.size) if (ext := external.get(i))
            else _AlignedBufferT(_as_array(data))
            for i, data in enumerate(self.buffers)
        ]
        fb.metadata = [copy.copy(m) for m in self.fb.metadata or []]
        for name, payload in (metadata or {}).items():
            entry = next((m for m in fb.metadata if text(m.name) == name), None)
            if entry is None:  # a new entry gets a new buffer; a replaced one keeps its slot
                entry = tfl.MetadataT()
                entry.name, entry.buffer = name, len(fb.buffers)
                fb.metadata.append(entry)
                fb.buffers.append(None)
            fb.buffers[entry.buffer] = _AlignedBufferT(_as_array(payload))
        builder = flatbuffers.Builder(1024 + sum(len(b) for b in self.buffers))
        builder.Finish(fb.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return builder.Output()

    def without_external(self) -> bytearray:
        """The model as a plain flatbuffer with every buffer inline."""
        return self.pack()


class _AlignedBufferT(tfl.BufferT):
    """BufferT whose data vector starts on a 16-byte boundary, as `force_align: 16` demands."""

    def __init__(self, data: np.ndarray | None = None, offset: int = 0, size: int = 0):
        super().__init__(data, offset, size)

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 - schema API name
        data_offset = None
        if self.data is not None:
            payload = self.data.tobytes()
            builder.StartVector(1, len(payload), DATA_ALIGNMENT)
            builder.head -= len(payload)
            builder.Bytes[builder.head : builder.head + len(payload)] = payload
            data_offset = builder.EndVector()
        tfl.BufferStart(builder)
        if data_offset is not None:
            tfl.BufferAddData(builder, data_offset)
        tfl.BufferAddOffset(builder, self.offset)
        tfl.BufferAddSize(builder, self.size)
        return tfl.BufferEnd(builder)


def _as_array(data: bytes) -> np.ndarray | None:
    return np.frombuffer(data, dtype=np.uint8) if data else None


def _check_header(raw: bytes, source: str) -> None:
    if len(raw) < 8:
        raise MalformedModelError(f"{source}: {len(raw)} bytes is too short to be a TFLite model")
    if raw[4:8] != FILE_IDENTIFIER:
        raise MalformedModelError(
            f"{source}: not a TFLite flatbuffer (file identifier {raw[4:8]!r}, expected {FILE_IDENTIFIER!r})"
        )
    (root,) = struct.unpack_from("<I", raw, 0)
    if not 8 <= root < len(raw):
        raise MalformedModelError(f"{source}: root table offset {root} lies outside the {len(raw)}-byte file")


def _external_buffers(fb: tfl.ModelT) -> dict[int, ExternalBuffer]:
    return {
        i: ExternalBuffer(buf.offset, buf.size)
        for i, buf in enumerate(fb.buffers or [])
        if buf.offset > _NO_EXTERNAL_OFFSET
    }


def _check_external_weights(model: Model) -> None:
    """Weights a segmented file stores after its flatbuffer are used (or re-emitted) only intact:
    every external buffer must lie inside a segment of the `tflm_swap` manifest, and every segment
    must match its CRC32. Raises SegmentIntegrityError naming the file and the segment."""
    from .manifest import MANIFEST_NAME, Manifest

    external = _external_buffers(model.fb)
    blob = model.metadata(MANIFEST_NAME)
    if not external or blob is None:
        return
    manifest = Manifest.decode(blob)
    spans = []
    for seg in manifest.segments:
        start = manifest.image_offset + seg.offset
        payload = model.raw[start : start + seg.size]
        crc = zlib.crc32(payload)
        if len(payload) != seg.size or crc != seg.crc32:
            raise SegmentIntegrityError(
                f"{model.source}: segment {seg.id} at image offset {seg.offset} is corrupt "
                f"({len(payload)} of {seg.size} bytes, CRC32 {crc:#010x}, expected {seg.crc32:#010x}); "
                "refusing to use its weights")
        spans.append((start, start + seg.size))
    for i, ext in external.items():
        if not any(lo <= ext.offset and ext.offset + ext.size <= hi for lo, hi in spans):
            raise SegmentIntegrityError(
                f"{model.source}: buffer {i} (file bytes {ext.offset}..{ext.offset + ext.size}) lies "
                "outside every segment of the manifest; refusing to use unchecked weights")
    _decode_entries(model, manifest)


def _encoded_entries(model: Model):
    """(segment, entry) of every palette-encoded entry of the model's manifest (version 3)."""
    from .manifest import MANIFEST_NAME, Manifest

    blob = model.metadata(MANIFEST_NAME)
    if blob is None:
        return []
    return [(seg, e) for seg in Manifest.decode(blob).segments for e in seg.entries if e.decoded is not None]


def _decode_entries(model: Model, manifest) -> None:
    """Replace each palette-encoded buffer (checked intact) by its decoded bytes: the model is then
    the one that was encoded."""
    from . import palette

    for seg in manifest.segments:
        for e in seg.entries:
            if e.decoded is not None and 0 <= e.buffer < len(model.buffers):
                where = f"{model.source}: segment {seg.id} entry for buffer {e.buffer} ({e.name})"
                model.buffers[e.buffer] = palette.decode(model.buffers[e.buffer], where, e.decoded).tobytes()


def _note_decoded_sizes(model: Model) -> None:
    """A graph-only parse: deferred encoded buffers take their decoded size once loaded."""
    for _, e in _encoded_entries(model):
        ext = model.deferred.get(e.buffer)
        if ext is not None:
            model.deferred[e.buffer] = ExternalBuffer(ext.offset, e.decoded)


def _resolve_buffers(fb: tfl.ModelT, raw: bytes, source: str, skip: dict | None = None) -> list[bytes]:
    """Bytes of every buffer, read inline or from `Buffer.offset/size` after the flatbuffer."""
    resolved = []
    for i, buf in enumerate(fb.buffers or []):
        if skip and i in skip:
            resolved.append(b"")
        elif buf.offset > _NO_EXTERNAL_OFFSET:
            end = buf.offset + buf.size
            if end > len(raw):
                raise MalformedModelError(
                    f"{source}: buffer {i} occupies bytes {buf.offset}..{end} but the file has only "
                    f"{len(raw)} bytes (truncated?)"
                )
            resolved.append(raw[buf.offset : end])
        elif buf.data is not None:
            resolved.append(np.asarray(buf.data, dtype=np.uint8).tobytes())
        else:
            resolved.append(b"")
    return resolved


def _check_indices(indices, limit: int, what: str, optional: bool = False) -> None:
    for t in indices if indices is not None else []:
        if (optional and t == -1) or 0 <= t < limit:
            continue
        raise MalformedModelError(f"{what} refer to tensor {t}, but the subgraph has {limit} tensors")


def _name_of(tensor: tfl.TensorT) -> str:
    return text(tensor.name)
