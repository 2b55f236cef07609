"""The one graph-editing surface of the converters: add buffers, tensors, operator codes and
operators to a `Model` (its object-API flatbuffer `fb` and its buffer bytes, kept side by side), and
insert or replace operators in execution order. Strings read back from a flatbuffer go through
`tflm_swap.format.schema.text`.

Every editor (FC tiling, the TFLM rewrite, stage sub-models, synthetic models) builds on these, so
a tensor or buffer is always added the same way: a buffer's bytes live in `Model.buffers` and its
`BufferT` stays empty until `Model.pack` places them.
"""

from __future__ import annotations

from collections.abc import Sequence

from tflm_swap.format.model import Model
from tflm_swap.format.schema import text, tfl


def empty_model(description: str, version: int = 3, operator_codes: list | None = None,
                source: str = "<model>") -> Model:
    """A model with one empty subgraph and the empty buffer 0 (TFLite reserves it)."""
    fb = tfl.ModelT()
    fb.version, fb.description = version, description
    fb.operatorCodes = list(operator_codes) if operator_codes is not None else []
    fb.subgraphs = [tfl.SubGraphT()]
    fb.subgraphs[0].tensors, fb.subgraphs[0].operators = [], []
    fb.subgraphs[0].inputs, fb.subgraphs[0].outputs = [], []
    fb.buffers = [tfl.BufferT()]
    return Model(fb, [b""], b"", source)


def add_buffer(model: Model, data: bytes) -> int:
    """Append a buffer holding `data` (b"": no data); returns its index."""
    model.fb.buffers.append(tfl.BufferT())
    model.buffers.append(bytes(data))
    return len(model.buffers) - 1


def add_tensor(model: Model, tensor: tfl.TensorT) -> int:
    """Append `tensor` to the main subgraph; returns its index."""
    model.subgraph.tensors.append(tensor)
    return len(model.subgraph.tensors) - 1


def make_tensor(name: str, shape: Sequence[int], tensor_type: int, buffer: int = 0,
                quantization: tfl.QuantizationParametersT | None = None) -> tfl.TensorT:
    """A tensor object (not yet in a model): `buffer` 0 for an activation."""
    tensor = tfl.TensorT()
    tensor.name, tensor.shape, tensor.type, tensor.buffer = name, list(shape), tensor_type, buffer
    tensor.quantization = quantization
    return tensor


def make_quantization(scales: Sequence[float], zero_points: Sequence[int], axis: int = 0
                      ) -> tfl.QuantizationParametersT:
    """Affine quantization parameters: per tensor (one scale) or per channel along `axis`."""
    q = tfl.QuantizationParametersT()
    q.scale, q.zeroPoint = [float(s) for s in scales], [int(z) for z in zero_points]
    q.quantizedDimension = axis
    return q


def opcode_index(model: Model, builtin: int, custom: str | None = None, version: int = 1) -> int:
    """Index of the operator code for builtin operator `builtin` (for CUSTOM, the custom op named
    `custom`), appended to the model's operator codes (at `version`) when it has none."""
    codes = model.fb.operatorCodes
    for i, code in enumerate(codes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin and (
                custom is None or _custom_name(code) == custom):
            return i
    code = tfl.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), version
    code.customCode = custom
    codes.append(code)
    return len(codes) - 1


def make_operator(opcode: int, inputs: Sequence[int], outputs: Sequence[int], options_type: int = 0,
                  options: object = None, custom_options: bytes | None = None) -> tfl.OperatorT:
    """An operator object (not yet in a model) running operator code `opcode`."""
    op = tfl.OperatorT()
    op.opcodeIndex = opcode
    op.inputs, op.outputs = list(inputs), list(outputs)
    op.builtinOptionsType, op.builtinOptions = options_type, options
    if custom_options is not None:
        op.customOptions = list(custom_options)
        op.customOptionsFormat = tfl.CustomOptionsFormat.FLEXBUFFERS
    return op


def add_operator(model: Model, op: tfl.OperatorT) -> int:
    """Append `op` to the main subgraph's operators; returns its index."""
    model.subgraph.operators.append(op)
    return len(model.subgraph.operators) - 1


def splice_operators(model: Model, before: dict[int, list[tfl.OperatorT]] | None = None,
                     replace: dict[int, list[tfl.OperatorT]] | None = None) -> list[int]:
    """Rewrite the main subgraph's operator list in place: the operators of `before[k]` go just
    before original operator k, and `replace[k]` stands in for operator k. Returns, for each
    original operator, its new index (for a replaced one, that of its first replacement)."""
    before, replace = before or {}, replace or {}
    operators, position = [], []
    for k, op in enumerate(model.subgraph.operators):
        operators.extend(before.get(k, []))
        position.append(len(operators))
        operators.extend(replace.get(k, [op]))
    model.subgraph.operators = operators
    return position


def set_metadata(model: Model, name: str, data: bytes) -> int:
    """Give the model a metadata entry `name` holding `data` in a new buffer (replacing an entry of
    that name); returns the buffer index."""
    model.fb.metadata = [m for m in model.fb.metadata or [] if text(m.name) != name]
    entry = tfl.MetadataT()
    entry.name, entry.buffer = name, add_buffer(model, data)
    model.fb.metadata.append(entry)
    return entry.buffer


def detach_tensor(model: Model, tensor: int) -> None:
    """Leave tensor `tensor` in the subgraph (indices stay valid) but without data or size: buffer
    0, shape [0], no quantization. For a constant no operator reads any more (its bytes moved
    elsewhere): TFLite Micro gives a zero-byte tensor no arena space."""
    t = model.subgraph.tensors[tensor]
    t.buffer, t.shape, t.shapeSignature, t.quantization = 0, [0], None, None


def _custom_name(code: tfl.OperatorCodeT) -> str:
    return text(code.customCode)


def drop_tensors(model: Model, drop: set[int]) -> None:
    """Remove the main subgraph's tensors `drop` (none may still be read or written) and renumber
    every reference to the others: operators, subgraph inputs/outputs, signatures."""
    sg = model.subgraph
    new_index, kept = {}, []
    for t, tensor in enumerate(sg.tensors or []):
        if t not in drop:
            new_index[t] = len(kept)
            kept.append(tensor)
    sg.tensors = kept

    def renumber(indices):
        return None if indices is None else [t if t < 0 else new_index[int(t)] for t in indices]

    for op in sg.operators or []:
        op.inputs, op.outputs = renumber(op.inputs), renumber(op.outputs)
        op.intermediates = renumber(op.intermediates)
    sg.inputs, sg.outputs = renumber(sg.inputs), renumber(sg.outputs)
    for sig in model.fb.signatureDefs or []:
        if int(sig.subgraphIndex) == 0:
            for entry in [*(sig.inputs or []), *(sig.outputs or [])]:
                entry.tensorIndex = new_index[int(entry.tensorIndex)]


def drop_buffers(model: Model, drop: set[int]) -> None:
    """Remove buffers `drop` (no tensor or metadata may still refer to one) and renumber the rest."""
    new_index, kept_fb, kept = {}, [], []
    for b, (entry, data) in enumerate(zip(model.fb.buffers, model.buffers)):
        if b not in drop:
            new_index[b] = len(kept)
            kept_fb.append(entry)
            kept.append(data)
    model.fb.buffers, model.buffers = kept_fb, kept
    for sg in model.fb.subgraphs:
        for tensor in sg.tensors or []:
            tensor.buffer = new_index[int(tensor.buffer)]
    for m in model.fb.metadata or []:
        m.buffer = new_index[int(m.buffer)]


def drop_operator_code(model: Model, code: int) -> None:
    """Remove operator code `code` (no operator may still run it) and renumber the others."""
    del model.fb.operatorCodes[code]
    for sg in model.fb.subgraphs:
        for op in sg.operators or []:
            if op.opcodeIndex > code:
                op.opcodeIndex -= 1
