"""A contiguous range of operators cut out as a standalone `.tflite` model.

The sub-model's inputs are the activations its operators read but do not produce; its outputs are
the tensors it produces that later operators (or the graph outputs) read. Constant data is inlined,
so a sub-model runs on any interpreter on its own. Used to time operators one by one and, by the
stage runtime, to run a model stage by stage.
"""

from __future__ import annotations

import copy

from .errors import TflmSwapError
from .model import Model
from .schema import tfl


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
    inputs, outputs = stage_io(model, first, last)
    ops = [model.operators[i] for i in range(first, last + 1)]
    used = _ordered_unique(
        inputs + outputs
        + [t for i in range(first, last + 1)
           for t in model.op_inputs(i) + model.op_outputs(i) + model.op_intermediates(i)]
    )
    new_index = {t: i for i, t in enumerate(used)}
    buffers, buffer_index = [b""], {}
    tensors = []
    for t in used:
        tensor = copy.copy(model.tensors[t])
        if tensor.buffer > 0 and model.buffers[tensor.buffer]:
            if tensor.buffer not in buffer_index:
                buffer_index[tensor.buffer] = len(buffers)
                buffers.append(model.buffers[tensor.buffer])
            tensor.buffer = buffer_index[tensor.buffer]
        else:
            tensor.buffer = 0
        tensors.append(tensor)

    def remap(indices) -> list[int]:
        return [new_index[int(t)] if t >= 0 else -1 for t in (indices if indices is not None else [])]

    subgraph = tfl.SubGraphT()
    subgraph.tensors = tensors
    subgraph.inputs, subgraph.outputs = remap(inputs), remap(outputs)
    subgraph.operators = []
    for op in ops:
        new_op = copy.copy(op)
        new_op.inputs, new_op.outputs = remap(op.inputs), remap(op.outputs)
        new_op.intermediates = remap(op.intermediates) if op.intermediates is not None else None
        subgraph.operators.append(new_op)
    subgraph.name = f"ops_{first}_{last}"

    fb = tfl.ModelT()
    fb.version = model.fb.version
    fb.operatorCodes = model.fb.operatorCodes
    fb.subgraphs = [subgraph]
    fb.description = f"tflm_swap sub-model: operators {first}..{last}"
    fb.buffers = [tfl.BufferT() for _ in buffers]
    return bytes(Model(fb, buffers, b"", f"{model.source}[{first}:{last}]").pack())


def _check_range(model: Model, first: int, last: int) -> None:
    n = len(model.operators)
    if not 0 <= first <= last < n:
        raise TflmSwapError(f"operator range {first}..{last} is outside the model's {n} operators")


def _ordered_unique(items: list[int]) -> list[int]:
    return list(dict.fromkeys(i for i in items if i >= 0))
