"""Split large fully-connected layers into tiles of output rows, so that weights stream in smaller pieces.

A FULLY_CONNECTED operator with weights [N, K] becomes T operators on row ranges [a, b) of the
same weights (a contiguous byte range each, since rows are stored one after another), their
outputs joined by one CONCATENATION on the last axis. Every output element is the same dot
product over the same K inputs, with the same bias, rescale and activation, so the outputs are
bit-identical with every kernel family (checked by the tests with LiteRT's XNNPACK, builtin and
reference kernels and with TFLite Micro); the concatenation only copies.

For the runtimes, each tile is an operator of its own: the planner can keep some tiles of a
layer resident and stream the rest, and the smallest budget falls from (prefetch + 1) times
the largest layer's weights to (prefetch + 1) times one tile's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from tflm_swap.errors import TflmSwapError, UnsupportedModelError
from tflm_swap.format.model import Model, element_bits
from tflm_swap.format.schema import tfl

from .graph import add_buffer, add_tensor, make_operator, opcode_index, splice_operators

# Rows per tile: a multiple of this, and no tile has fewer. Float kernels may take another path
# for very few rows (LiteRT's builtin kernel gives a one-row FULLY_CONNECTED a different summation
# order on x86), so tiles stay in the row blocks kernels are built around.
MIN_TILE_ROWS = 8
VERIFY_INPUTS = 3
MAX_CONCAT_INPUTS = 10  # TFLite Micro's CONCATENATION takes at most 10 inputs
_FULLY_CONNECTED = tfl.BuiltinOperator.FULLY_CONNECTED
_CONCATENATION = tfl.BuiltinOperator.CONCATENATION


@dataclass(frozen=True)
class TiledLayer:
    """A fully-connected operator that was split: its index in the original graph, its weights'
    tensor name and bytes, and the number of tiles (operators) it became."""

    op: int
    weights: str
    weight_bytes: int
    tiles: int


def tile_fully_connected(model: Model, max_tile_bytes: int) -> tuple[Model, list[TiledLayer]]:
    """Return a copy of `model` whose fully-connected layers hold at most `max_tile_bytes` of
    weights per operator, and the list of layers split. Tiles hold a multiple of MIN_TILE_ROWS
    rows (at least that many, even above `max_tile_bytes`); a shorter remainder joins the last tile.

    Layers that cannot be split exactly are left whole: weights that are not a constant 2-D
    tensor, sparse or shuffled weights, sub-byte element types, per-channel quantization on
    another axis than the output rows, weights or bias shared with another operator, fewer than
    two tiles' worth of rows.
    """
    if max_tile_bytes < 1:
        raise TflmSwapError(f"tile size {max_tile_bytes} must be at least 1 byte")
    model.check_single_graph()
    tiled = Model.from_bytes(model.pack(), source=model.source)  # a deep copy to rewrite
    users = _weight_users(tiled)
    replaced: dict[int, list[tfl.OperatorT]] = {}
    layers: list[TiledLayer] = []
    for index, op in enumerate(tiled.operators):
        rows = _rows_per_tile(tiled, index, max_tile_bytes, users)
        if rows is None:
            continue
        name, size = tiled.tensor_name(op.inputs[1]), tiled.buffer_size(tiled.tensors[op.inputs[1]].buffer)
        tiles, joins = _split(tiled, op, rows)
        replaced[index] = tiles + joins
        layers.append(TiledLayer(index, name, size, len(tiles)))
    if not layers:
        return model, []
    splice_operators(tiled, replace=replaced)
    return Model.from_bytes(tiled.pack(), source=model.source), layers


def _weight_users(model: Model) -> dict[int, int]:
    """How many operator inputs read each buffer (segment.weight_users counts operators: a buffer
    read twice by one operator must not be cut either)."""
    users: dict[int, int] = {}
    for i in range(len(model.operators)):
        for t in model.op_inputs(i):
            users[model.tensors[t].buffer] = users.get(model.tensors[t].buffer, 0) + 1
    return users


def _rows_per_tile(model: Model, index: int, max_tile_bytes: int, users: dict[int, int]) -> int | None:
    """Output rows per tile for operator `index`, or None when it stays whole."""
    op = model.operators[index]
    code = model.fb.operatorCodes[op.opcodeIndex]
    if max(code.builtinCode, code.deprecatedBuiltinCode) != _FULLY_CONNECTED or len(op.inputs) < 2:
        return None
    weights = model.tensors[op.inputs[1]]
    buffer = model.constant_buffer(op.inputs[1])
    if buffer is None or weights.shape is None or len(weights.shape) != 2 or weights.sparsity is not None:
        return None
    options = op.builtinOptions
    if options is not None and getattr(options, "weightsFormat", 0) != tfl.FullyConnectedOptionsWeightsFormat.DEFAULT:
        return None
    rows, size = int(weights.shape[0]), model.buffer_size(buffer)
    if size <= max_tile_bytes or size % rows or users.get(buffer, 0) > 1:
        return None
    if element_bits(weights.type) not in (8, 16, 32, 64) or model.tensor_nbytes(op.inputs[1]) != size:
        return None  # sub-byte or packed elements: a row is not a whole number of bytes
    if not _row_quantized(weights.quantization, rows):
        return None
    if len(op.inputs) > 2 and op.inputs[2] >= 0 and not _bias_splits(model, op.inputs[2], rows, users):
        return None
    per_tile = max(MIN_TILE_ROWS, max_tile_bytes // (size // rows) // MIN_TILE_ROWS * MIN_TILE_ROWS)
    return per_tile if len(_tile_starts(rows, per_tile)) > 1 else None


def _tile_starts(rows: int, per_tile: int) -> list[int]:
    """First row of each tile; a remainder shorter than MIN_TILE_ROWS joins the tile before it."""
    starts = list(range(0, rows, per_tile))
    if len(starts) > 1 and rows - starts[-1] < MIN_TILE_ROWS:
        starts.pop()
    return starts


def _row_quantized(q: tfl.QuantizationParametersT | None, rows: int) -> bool:
    """Quantization a row range can take a slice of: per-tensor, or per output row (axis 0)."""
    if q is None or q.scale is None or len(q.scale) <= 1:
        return True
    return len(q.scale) == rows and q.quantizedDimension == 0


def _bias_splits(model: Model, tensor: int, rows: int, users: dict[int, int]) -> bool:
    """A constant bias of one value per row, read by this operator only (converters share equal
    constants, such as zero biases, between layers)."""
    bias = model.tensors[tensor]
    buffer = model.constant_buffer(tensor)
    return (buffer is not None and users.get(buffer, 0) == 1 and bias.shape is not None
            and list(bias.shape) == [rows] and model.buffer_size(buffer) % rows == 0
            and _row_quantized(bias.quantization, rows))


def _split(model: Model, op: tfl.OperatorT, rows: int) -> tuple[list[tfl.OperatorT], list[tfl.OperatorT]]:
    """The tile operators for `op`, and the concatenations that write its original output.

    The first tile takes over the original weights and bias tensors and buffers (cut to its rows),
    so that the graph holds no orphaned tensor or data."""
    n = int(model.tensors[op.inputs[1]].shape[0])
    sliced = [1] + ([2] if len(op.inputs) > 2 and op.inputs[2] >= 0 else [])
    originals = {k: (copy.deepcopy(model.tensors[t]), model.buffers[model.tensors[t].buffer], model.tensor_name(t))
                 for k, t in ((k, op.inputs[k]) for k in sliced)}
    starts = _tile_starts(n, rows)
    tiles, outputs = [], []
    for first, last in zip(starts, starts[1:] + [n]):
        tile = copy.deepcopy(op)
        tile.inputs = list(op.inputs)
        for k in sliced:
            tensor, data = _row_slice(model, *originals[k], first, last, n)
            if first == 0:  # reuse the original tensor and buffer
                tensor.buffer = model.tensors[op.inputs[k]].buffer
                model.buffers[tensor.buffer] = data
                model.subgraph.tensors[op.inputs[k]] = tensor
            else:
                tensor.buffer = add_buffer(model, data)
                tile.inputs[k] = add_tensor(model, tensor)
        tile.outputs = [_tile_output(model, op.outputs[0], first, last)]
        tiles.append(tile)
        outputs.append(tile.outputs[0])
    return tiles, _join(model, outputs, op.outputs[0])


def _join(model: Model, parts: list[int], output: int) -> list[tfl.OperatorT]:
    """CONCATENATION operators joining `parts` on the last axis into `output`: a tree when there
    are more parts than TFLite Micro's concatenation takes."""
    joins = []
    while len(parts) > MAX_CONCAT_INPUTS:
        groups = [parts[i: i + MAX_CONCAT_INPUTS] for i in range(0, len(parts), MAX_CONCAT_INPUTS)]
        parts = []
        for group in groups:
            if len(group) == 1:
                parts.append(group[0])
                continue
            width = sum(int(model.tensors[t].shape[-1]) for t in group)
            joined = _tile_output(model, output, 0, width, f"joined_{len(model.tensors)}")
            joins.append(_concatenation(model, group, joined))
            parts.append(joined)
    return joins + [_concatenation(model, parts, output)]


def _concatenation(model: Model, inputs: list[int], output: int) -> tfl.OperatorT:
    options = tfl.ConcatenationOptionsT()
    options.axis = len(model.tensors[output].shape) - 1
    return make_operator(opcode_index(model, _CONCATENATION), inputs, [output],
                         tfl.BuiltinOptions.ConcatenationOptions, options)


def _row_slice(model: Model, source: tfl.TensorT, data: bytes, name: str, first: int, last: int,
               rows: int) -> tuple[tfl.TensorT, bytes]:
    """A tensor for rows first..last-1 of `source` (weights or bias, named `name`) and those rows'
    bytes."""
    row_bytes = len(data) // rows
    tensor = copy.deepcopy(source)
    tensor.shape = [last - first] + list(source.shape[1:])
    tensor.shapeSignature = None
    tensor.name = f"{name}/rows_{first}_{last}"
    q = tensor.quantization
    if q is not None and q.scale is not None and len(q.scale) > 1:
        q.scale = list(q.scale[first:last])
        if q.zeroPoint is not None and len(q.zeroPoint) > 1:
            q.zeroPoint = list(q.zeroPoint[first:last])
    return tensor, bytes(data[first * row_bytes: last * row_bytes])


def _tile_output(model: Model, like: int, first: int, last: int, label: str = "") -> int:
    """A new activation like tensor `like` with last - first elements on its last axis."""
    output = model.tensors[like]
    tensor = copy.deepcopy(output)
    tensor.shape = list(output.shape[:-1]) + [last - first]
    if output.shapeSignature is not None:
        tensor.shapeSignature = list(output.shapeSignature[:-1]) + [last - first]
    tensor.name = f"{model.tensor_name(like)}/{label or f'rows_{first}_{last}'}"
    tensor.buffer = add_buffer(model, b"")
    return add_tensor(model, tensor)


def verify_tiling(original: bytes, tiled: bytes, source: str = "<model>") -> None:
    """Run both models on LiteRT here, with XNNPACK and with the builtin kernels, on a few random
    inputs; raise UnsupportedModelError unless every output is bit-identical.

    Integer layers are exact on any kernel; float layers are exact where each output row is the
    same dot product whatever the row count, which depends on the kernels: this checks the ones
    installed here (on another machine, `tflm-swap run --original` checks that machine's)."""
    import numpy as np

    from tflm_swap.interpreters import litert_interpreter, random_inputs, run_litert

    for delegates in (True, False):
        runs = [litert_interpreter(m, default_delegates=delegates) for m in (original, tiled)]
        for interpreter in runs:
            interpreter.allocate_tensors()
        rng = np.random.default_rng(0)
        for _ in range(VERIFY_INPUTS):
            inputs = random_inputs(runs[0].get_input_details(), rng)
            want, got = (run_litert(interpreter, inputs) for interpreter in runs)
            if any(a.tobytes() != b.tobytes() for a, b in zip(want, got)):
                raise UnsupportedModelError(
                    f"{source}: with its fully-connected layers tiled, the model's outputs differ from the "
                    f"original's on LiteRT's {'XNNPACK' if delegates else 'builtin'} kernels here; convert "
                    "it without tiling or with larger tiles"
                )
