"""Models in upstream TFLite Micro's DECODE layout, made with upstream's own compression tool (the
installed `tflite_micro` package): shared by tests/test_delegate_decode.py and
benchmarks/delegate_decode.py. Works offline."""

from __future__ import annotations

import contextlib
import io

from tflm_swap.converters.compress import FILTER_OPS
from tflm_swap.converters.decode_layout import run_upstream_tool
from tflm_swap.format.model import Model
from tflm_swap.format.schema import tfl

DECODE = "CUSTOM:TFLM_DECODE"


def upstream_decode_layout(reference: bytes, bits: int, per_channel: bool) -> Model:
    """`reference` (int8, <= 2**bits values per filter channel or tensor) with every CONV_2D /
    DEPTHWISE_CONV_2D / FULLY_CONNECTED filter LUT-compressed by upstream TFLM's compression tool,
    `bits`-bit indices, tables per output channel or one per tensor."""
    model = Model.from_bytes(reference)
    axes = {model.op_inputs(op)[FILTER_OPS[name][0]]: FILTER_OPS[name][1]
            for op in range(len(model.operators)) for name in [model.opcode_name(op)] if name in FILTER_OPS}

    def lut(model: Model, t: int, spec):
        if model.tensors[t].type != tfl.TensorType.INT8:
            return None
        mode = spec.PerChannel(axis=axes[t]) if per_channel else spec.PerTensor()
        return spec.LookUpTableCompression(index_bitwidth=bits, mode=mode)

    with contextlib.redirect_stderr(io.StringIO()):  # the tool's notes on tiny filters
        out = Model.from_bytes(run_upstream_tool(model, lut))
    for op in decode_ops(out):  # the tool leaves the filter's quantization on the uint8 encoded tensor,
        for t in out.op_inputs(op):  # which LiteRT rejects
            out.fb.subgraphs[0].tensors[t].quantization = None
    return Model.from_bytes(bytes(out.pack()))


def decode_ops(model: Model) -> list[int]:
    return [op for op in range(len(model.operators)) if model.opcode_name(op) == DECODE]
