"""Models in upstream TFLite Micro's DECODE layout, made with upstream's own compression tool (the
installed `tflite_micro` package): shared by tests/test_delegate_decode.py and
benchmarks/delegate_decode.py. Works offline."""

from __future__ import annotations

import contextlib
import importlib
import io
import warnings

from tflm_swap.converters.compress import FILTER_OPS
from tflm_swap.format.model import Model
from tflm_swap.format.schema import tfl

DECODE = "CUSTOM:TFLM_DECODE"


def upstream_decode_layout(reference: bytes, bits: int, per_channel: bool) -> Model:
    """`reference` (int8, <= 2**bits values per filter channel or tensor) with every CONV_2D /
    DEPTHWISE_CONV_2D / FULLY_CONNECTED filter LUT-compressed by upstream TFLM's compression tool."""
    upstream = importlib.import_module("tflite_micro.tensorflow.lite.micro.compression.compress")
    spec = importlib.import_module("tflite_micro.tensorflow.lite.micro.compression.spec")
    model = Model.from_bytes(reference)
    for code in model.fb.operatorCodes:  # the tool reads builtin_code only (old models use the deprecated field)
        code.builtinCode = max(code.builtinCode, code.deprecatedBuiltinCode)
    specs, seen = [], set()
    for op in range(len(model.operators)):
        slot_axis = FILTER_OPS.get(model.opcode_name(op))
        if slot_axis is None:
            continue
        t = model.op_inputs(op)[slot_axis[0]]
        if t in seen or model.constant_buffer(t) is None or model.tensors[t].type != tfl.TensorType.INT8:
            continue
        seen.add(t)
        mode = spec.PerChannel(axis=slot_axis[1]) if per_channel else spec.PerTensor()
        specs.append(spec.Tensor(subgraph=0, tensor=t, compression=[
            spec.LookUpTableCompression(index_bitwidth=bits, mode=mode)]))
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):  # "expansion" of tiny filters
        warnings.simplefilter("ignore")
        out = Model.from_bytes(bytes(upstream.compress(bytes(model.pack()), specs)))
    for op in decode_ops(out):  # the tool leaves the filter's quantization on the uint8 encoded tensor,
        for t in out.op_inputs(op):  # which LiteRT rejects
            out.fb.subgraphs[0].tensors[t].quantization = None
    return Model.from_bytes(bytes(out.pack()))


def decode_ops(model: Model) -> list[int]:
    return [op for op in range(len(model.operators)) if model.opcode_name(op) == DECODE]
