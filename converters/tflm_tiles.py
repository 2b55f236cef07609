"""Sub-operator weight tiles for the TFLM target: an int8 CONV_2D, DEPTHWISE_CONV_2D or
FULLY_CONNECTED becomes one custom operator (`TSWAP_CONV_2D`, ...) that reads its filter and bias
from the flash image in output-channel tiles and computes each tile with TFLM's reference kernels
(`delegates/micro/tswap_tiled.cc`).

A tile is one image segment: the filter rows of its output channels (depthwise: the [Kh, Kw, tile]
slice), then, at the next multiple of 4, their int32 bias. Tiles hold `tile_channels` channels
(a multiple of the depth multiplier for depthwise), the last one the rest. The operator's custom
options (`tiled_options`) describe the filter (dims, scales, zero point) so that Prepare computes
the same requantization as the stock kernel; the filter and bias tensors stay in the graph without
data and with shape [0], read by no operator.

Encoded tiles (`encoded_tile_payloads`, flag `FLAG_ENCODED`): when every tile's filter slice is
smaller palette-encoded (`tflm_swap.format.palette`: per-channel or one shared table for the tile),
a tile's segment is that entry followed by the raw bias; the kernel reads it to the end of a tile
buffer `ENCODED_SLACK` bytes larger than the raw tile and decodes it in place (a tile at a time,
blocking or prefetched), the value tables in one more scratch buffer.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from tflm_swap.errors import UnsupportedModelError
from tflm_swap.format import palette
from tflm_swap.format.model import Model
from tflm_swap.format.schema import tfl

from .graph import make_operator, opcode_index

TILED_KERNELS = {
    "CONV_2D": "TSWAP_CONV_2D",
    "DEPTHWISE_CONV_2D": "TSWAP_DEPTHWISE_CONV_2D",
    "FULLY_CONNECTED": "TSWAP_FULLY_CONNECTED",
}
FLAG_VERIFY_CRC = 1
FLAG_PREFETCH = 2
FLAG_ENCODED = 4  # the tiles are palette-encoded (and a TSWAP_LOAD's segment: converters/tflm.py)
ENCODED_SLACK = 16  # extra bytes per tile buffer for in-place decoding (kEncodedSlack in tswap_tiled.cc)
OPTION_WORDS = 18  # fixed words of the custom options before the scales (see tswap_tflm.h)


@dataclass(frozen=True)
class TileChoice:
    """How one operator is tiled: into `tiles` output-channel tiles, with or without reading tile
    k + 1 while tile k computes (`prefetch`: two tile buffers)."""

    tiles: int
    prefetch: bool = False


@dataclass(frozen=True)
class TileGeometry:
    """What tiling one operator involves: its kind, output channels, the channel granularity of a
    tile (the depth multiplier for depthwise, else 1), filter bytes per output channel, and the
    filter and bias tensors (bias -1 when absent)."""

    op: int
    kind: str
    channels: int
    granularity: int
    channel_bytes: int
    filter: int
    bias: int
    window_pixels: int  # depthwise: receptive-field pixels of one output (the window buffer), else 0

    @property
    def max_tiles(self) -> int:
        return self.channels // self.granularity

    def tile_channels(self, tiles: int) -> int:
        """Channels per tile for `tiles` tiles (rounded up to the granularity)."""
        if not 1 <= tiles <= self.max_tiles:
            raise UnsupportedModelError(f"operator {self.op} ({self.kind}): tile count {tiles} must be between 1 and "
                                        f"{self.max_tiles} (its {self.channels} output channels)")
        groups = self.channels // self.granularity
        return math.ceil(groups / tiles) * self.granularity

    def ranges(self, tiles: int) -> list[tuple[int, int]]:
        """(first channel, channel count) of each tile; fewer than `tiles` when they do not divide evenly."""
        step = self.tile_channels(tiles)
        return [(c, min(step, self.channels - c)) for c in range(0, self.channels, step)]

    def tile_bytes(self, channels: int) -> int:
        """Bytes of one tile's segment: filter rows (padded to 4), then the int32 bias."""
        filt = (channels * self.channel_bytes + 3) // 4 * 4
        return filt + (4 * channels if self.bias >= 0 else 0)

    def scratch(self, choice: TileChoice, table_bytes: int | None = None) -> list[int]:
        """Bytes of the arena scratch buffers the kernel requests in Prepare, in request order: the
        tile buffer (twice with prefetch), then the depthwise window; for encoded tiles (`table_bytes`:
        the largest tile's value tables) the buffers are ENCODED_SLACK larger and the tables follow
        (with a flash alignment above ENCODED_SLACK the kernel widens the buffers to it)."""
        largest = max(self.tile_bytes(n) for _, n in self.ranges(choice.tiles))
        largest += ENCODED_SLACK if table_bytes is not None else 0
        buffers = [largest] * (2 if choice.prefetch else 1)
        if self.kind == "DEPTHWISE_CONV_2D":
            buffers.append(self.window_pixels * self.tile_channels(choice.tiles) // self.granularity)
        return buffers + ([table_bytes] if table_bytes is not None else [])

    def flash_bytes(self, choice: TileChoice) -> int:
        """Image bytes the kernel reads per inference (every tile once)."""
        return sum(self.tile_bytes(n) for _, n in self.ranges(choice.tiles))


def tile_geometry(model: Model, op: int) -> TileGeometry:
    """The tiling geometry of operator `op`; raises UnsupportedModelError naming why it cannot be
    tiled (not an int8 CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED with constant weights)."""
    kind = model.opcode_name(op)
    where = f"{model.source}: operator {op} ({kind})"
    if kind not in TILED_KERNELS:
        raise UnsupportedModelError(f"{where}: only {', '.join(TILED_KERNELS)} can be tiled")
    inputs = [int(t) for t in model.operators[op].inputs]
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else -1
    y = model.op_outputs(op)[0]
    for t, what in ((x, "input"), (y, "output"), (w, "filter")):
        if model.tensors[t].type != tfl.TensorType.INT8:
            raise UnsupportedModelError(f"{where}: tiles need int8 input, output and filter; the {what} is "
                                        f"{model.tensor_type_name(t)}")
    if model.constant_buffer(w) is None or (b >= 0 and model.constant_buffer(b) is None):
        raise UnsupportedModelError(f"{where}: its filter and bias must be constants to be tiled")
    if b >= 0 and model.tensors[b].type != tfl.TensorType.INT32:
        raise UnsupportedModelError(f"{where}: tiles need an int32 bias, not {model.tensor_type_name(b)}")
    if len(model.buffers[model.tensors[w].buffer]) != model.tensor_nbytes(w):
        raise UnsupportedModelError(f"{where}: its filter data is packed or sparse")
    _check_quantization(model, w, kind, where)
    shape = [int(d) for d in model.tensors[w].shape]
    if kind == "FULLY_CONNECTED":
        options = model.operators[op].builtinOptions
        if options is not None and getattr(options, "weightsFormat", 0) != 0:
            raise UnsupportedModelError(f"{where}: shuffled fully-connected weights cannot be tiled")
        if len(shape) != 2:
            raise UnsupportedModelError(f"{where}: a fully-connected filter of rank {len(shape)}")
        return TileGeometry(op, kind, shape[0], 1, shape[1], w, b, 0)
    if len(shape) != 4 or len(model.tensors[x].shape) != 4:
        raise UnsupportedModelError(f"{where}: convolutions need rank-4 input and filter")
    in_depth = int(model.tensors[x].shape[3])
    if kind == "CONV_2D":
        if shape[3] != in_depth:
            raise UnsupportedModelError(f"{where}: grouped convolutions cannot be tiled")
        return TileGeometry(op, kind, shape[0], 1, shape[1] * shape[2] * shape[3], w, b, 0)
    options = model.operators[op].builtinOptions
    window = ((shape[1] - 1) * options.dilationHFactor + 1) * ((shape[2] - 1) * options.dilationWFactor + 1)
    if in_depth < 1 or shape[3] % in_depth:
        raise UnsupportedModelError(f"{where}: depthwise output channels {shape[3]} are not a multiple of "
                                    f"the input's {in_depth}")
    return TileGeometry(op, kind, shape[3], shape[3] // in_depth, shape[1] * shape[2], w, b, window)


def _check_quantization(model: Model, w: int, kind: str, where: str) -> None:
    q = model.tensors[w].quantization
    scales = [] if q is None or q.scale is None else list(q.scale)
    if not scales:
        raise UnsupportedModelError(f"{where}: the filter has no quantization scales")
    axis = 3 if kind == "DEPTHWISE_CONV_2D" else 0
    if len(scales) > 1 and int(q.quantizedDimension) != axis:
        raise UnsupportedModelError(f"{where}: per-channel scales along dimension {q.quantizedDimension}, "
                                    f"expected {axis}")
    zero_points = [] if q.zeroPoint is None else [int(z) for z in q.zeroPoint]
    if len(scales) > 1 and any(zero_points):
        raise UnsupportedModelError(f"{where}: per-channel filter zero points must be 0")


def tile_payloads(model: Model, geometry: TileGeometry, tiles: int) -> list[bytes]:
    """The image segment of each tile: filter rows of its channels (padded to 4), then its bias."""
    shape = [int(d) for d in model.tensors[geometry.filter].shape]
    data = np.frombuffer(model.buffers[model.tensors[geometry.filter].buffer], np.int8).reshape(shape)
    bias = None
    if geometry.bias >= 0:
        bias = np.frombuffer(model.buffers[model.tensors[geometry.bias].buffer], "<i4")
    rows = data.reshape(-1, geometry.channels).T if geometry.kind == "DEPTHWISE_CONV_2D" else \
        data.reshape(geometry.channels, -1)  # one row of filter values per output channel
    payloads = []
    for first, count in geometry.ranges(tiles):
        part = rows[first : first + count]
        filt = (part.T if geometry.kind == "DEPTHWISE_CONV_2D" else part).tobytes()  # dw: [Kh*Kw, tile]
        filt += b"\0" * (-len(filt) % 4)
        payloads.append(filt + (bias[first : first + count].tobytes() if bias is not None else b""))
    return payloads


def encoded_tile_payloads(model: Model, geometry: TileGeometry, tiles: int) -> tuple[list[bytes], int] | None:
    """Each tile's segment palette-encoded (the entry of its filter slice, then its raw bias) and the
    largest tile's table bytes; None unless every tile's filter slice is smaller encoded."""
    raw = tile_payloads(model, geometry, tiles)
    payloads, table_bytes = [], 0
    for (_, count), payload in zip(geometry.ranges(tiles), raw):
        filter_bytes = count * geometry.channel_bytes
        depthwise = geometry.kind == "DEPTHWISE_CONV_2D"  # [Kh*Kw, tile]: channel innermost
        entry = palette.encode(np.frombuffer(payload[:filter_bytes], np.int8), count,
                               1 if depthwise else geometry.channel_bytes)
        if entry is None:
            return None
        table_bytes = max(table_bytes, palette.read_header(entry, "tile").table_bytes)
        payloads.append(entry + payload[len(payload) - (4 * count if geometry.bias >= 0 else 0):])
    return payloads, table_bytes


def tiled_options(model: Model, geometry: TileGeometry, entry: int, flags: int) -> bytes:
    """The custom options of the tiled operator (layout in delegates/micro/tswap_tflm.h)."""
    op = model.operators[geometry.op]
    options = op.builtinOptions
    filt = model.tensors[geometry.filter]
    q = filt.quantization
    dims = [int(d) for d in filt.shape]
    zero_points = [] if q.zeroPoint is None else [int(z) for z in q.zeroPoint]
    conv = geometry.kind != "FULLY_CONNECTED"
    words = [
        entry, flags,
        int(options.padding) + 1 if conv else 0,  # schema SAME=0/VALID=1 -> TfLitePadding 1/2
        options.strideW if conv else 0, options.strideH if conv else 0,
        options.dilationWFactor if conv else 0, options.dilationHFactor if conv else 0,
        int(options.fusedActivationFunction) if options is not None else 0,
        geometry.granularity if geometry.kind == "DEPTHWISE_CONV_2D" else 0,
        len(dims), *(dims + [0] * (4 - len(dims))),
        1 if geometry.bias >= 0 else 0,
        int(q.quantizedDimension) if len(q.scale) > 1 else (3 if geometry.kind == "DEPTHWISE_CONV_2D" else 0),
        zero_points[0] if zero_points else 0,
        len(q.scale),
    ]
    return struct.pack(f"<{OPTION_WORDS}i{len(q.scale)}f", *words, *q.scale)


def tiled_operator(target: Model, model: Model, geometry: TileGeometry, entry: int, flags: int) -> tfl.OperatorT:
    """The custom operator standing in for operator `geometry.op` of `model` (input -> output), its
    operator code added to `target` (the rewritten model)."""
    code = opcode_index(target, tfl.BuiltinOperator.CUSTOM, TILED_KERNELS[geometry.kind])
    op = model.operators[geometry.op]
    return make_operator(code, [int(op.inputs[0])], [int(t) for t in op.outputs],
                         custom_options=tiled_options(model, geometry, entry, flags))
