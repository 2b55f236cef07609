"""A contiguous range of operators cut out as a standalone `.tflite` model.

The sub-model's inputs are the activations its operators read but do not produce; its outputs are
the tensors it produces that later operators (or the graph outputs) read. Constant data is inlined,
so a sub-model runs on any interpreter on its own. Used to time operators one by one and, by the
stage runtime, to run a model stage by stage.
"""

from __future__ import annotations

import copy

from tflm_swap.errors import TflmSwapError
from tflm_swap.format.model import ExternalBuffer, Model

from .graph import add_buffer, add_operator, add_tensor, empty_model

TEMPLATE_ALIGNMENT = 64  # where a template's weight blob starts (XNNPACK-friendly)


def stage_io(model: Model, first: int, last: int) -> tuple[list[int], list[int]]:
    """(input tensors, output tensors) of operators first..last, in the parent model's indices."""
    _check_range(model, first, last)
    produced: set[int] = set()
    inputs: list[int] = []
    for op in range(first, last + 1):
        for t in model.op_inputs(op):
            if t not in produced and t not in inputs and model.constant_buffer(t) is None:
                inputs.append(t)
        produced.update(model.op_outputs(op))
    read_later = {t for op in range(last + 1, len(model.operators)) for t in model.op_inputs(op)}
    read_later.update(model.outputs)
    outputs = [t for op in range(first, last + 1) for t in model.op_outputs(op) if t in read_later]
    if not outputs:  # a dead-end range: expose what its last operator makes
        outputs = model.op_outputs(last)
    return inputs, outputs


def extract(model: Model, first: int, last: int) -> bytes:
    """Standalone `.tflite` bytes running operators first..last of `model` (inclusive)."""
    sub, _ = _submodel(model, first, last)
    return bytes(sub.pack())


def extract_template(
    model: Model, first: int, last: int, placement: dict[int, int]
) -> tuple[bytes, int]:
    """A sub-model whose weights are appended by the caller instead of stored inline.

    `placement` maps parent buffer indices to offsets inside a weights blob. Returns the flatbuffer
    and `base`: the caller builds `flatbuffer + zeros up to base + blob`, and the sub-model's
    `Buffer.offset`s point into the blob. Buffers not in `placement` are inlined.
    """
    sub, new_buffer = _submodel(model, first, last, deferred=placement)
    def layout(base: int) -> dict[int, ExternalBuffer]:
        return {new_buffer[b]: ExternalBuffer(base + rel, model.buffer_size(b))
                for b, rel in placement.items() if b in new_buffer}

    # Buffer.offset is a fixed-width field: the size with a placeholder base is the final size.
    base = -(-len(sub.pack(layout(1 << 32))) // TEMPLATE_ALIGNMENT) * TEMPLATE_ALIGNMENT
    graph = bytes(sub.pack(layout(base)))
    if len(graph) > base:  # pragma: no cover - would be a flatbuffers bug
        raise TflmSwapError("sub-model template grew after placing its weights")
    return graph, base


def _submodel(
    model: Model, first: int, last: int, deferred: dict[int, int] | None = None
) -> tuple[Model, dict[int, int]]:
    """The sub-model for operators first..last and the map parent buffer -> sub-model buffer."""
    deferred = deferred or {}
    inputs, outputs = stage_io(model, first, last)
    ops = [model.operators[i] for i in range(first, last + 1)]
    used = _ordered_unique(
        inputs + outputs
        + [t for i in range(first, last + 1)
           for t in model.op_inputs(i) + model.op_outputs(i) + model.op_intermediates(i)]
    )
    new_index = {t: i for i, t in enumerate(used)}
    sub = empty_model(f"tflm_swap sub-model: operators {first}..{last}", model.fb.version,
                      source=f"{model.source}[{first}:{last}]")
    sub.fb.operatorCodes = model.fb.operatorCodes  # shared, not copied: the codes are not edited
    buffer_index: dict[int, int] = {}
    for t in used:
        tensor = copy.copy(model.tensors[t])
        if model.constant_buffer(t) is not None:
            if tensor.buffer not in buffer_index:
                data = b"" if tensor.buffer in deferred else model.buffers[tensor.buffer]
                buffer_index[tensor.buffer] = add_buffer(sub, data)
            tensor.buffer = buffer_index[tensor.buffer]
        else:
            tensor.buffer = 0
        add_tensor(sub, tensor)

    def remap(indices) -> list[int]:
        return [new_index[int(t)] if t >= 0 else -1 for t in (indices if indices is not None else [])]

    subgraph = sub.subgraph
    subgraph.inputs, subgraph.outputs = remap(inputs), remap(outputs)
    for op in ops:
        new_op = copy.copy(op)
        new_op.inputs, new_op.outputs = remap(op.inputs), remap(op.outputs)
        new_op.intermediates = remap(op.intermediates) if op.intermediates is not None else None
        add_operator(sub, new_op)
    subgraph.name = f"ops_{first}_{last}"
    sub.deferred = {buffer_index[b]: ExternalBuffer(0, 0) for b in deferred if b in buffer_index}
    return sub, buffer_index


def _check_range(model: Model, first: int, last: int) -> None:
    n = len(model.operators)
    if not 0 <= first <= last < n:
        raise TflmSwapError(f"operator range {first}..{last} is outside the model's {n} operators")


def _ordered_unique(items: list[int]) -> list[int]:
    return list(dict.fromkeys(i for i in items if i >= 0))
