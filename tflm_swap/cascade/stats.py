"""Cost figures read from a `.tflite` graph: weight bytes, parameters and multiply-accumulates."""

from __future__ import annotations

import numpy as np

from ..format.model import Model

_MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL")


def model_stats(data: bytes) -> dict[str, int]:
    """{'weight_bytes', 'params', 'macs'} of a (segmented or plain) `.tflite`.

    weight_bytes: bytes of every constant buffer (inline or in segments), i.e. what is read from
    flash to run the model once; params: elements of those constants; macs: multiply-accumulates
    of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / TRANSPOSE_CONV per inference (batch 1).
    """
    model = Model.from_bytes(data, read_external=False)
    seen: set[int] = set()
    weight_bytes = params = 0
    for t in range(len(model.tensors)):
        buffer = model.constant_buffer(t)
        if buffer is None or buffer in seen:
            continue
        seen.add(buffer)
        weight_bytes += model.buffer_size(buffer)
        params += int(np.prod(model.tensors[t].shape)) if model.tensors[t].shape is not None else 0
    return {"weight_bytes": weight_bytes, "params": params, "macs": _macs(model)}


def _macs(model: Model) -> int:
    total = 0
    for op in range(len(model.operators)):
        name = model.opcode_name(op)
        if name not in _MAC_OPS:
            continue
        ins, outs = model.op_inputs(op), model.op_outputs(op)
        out = int(np.prod(model.tensors[outs[0]].shape))
        weight = [int(s) for s in model.tensors[ins[1]].shape]
        if name == "CONV_2D":
            total += out * weight[1] * weight[2] * weight[3]
        elif name == "DEPTHWISE_CONV_2D":
            total += out * weight[1] * weight[2]
        elif name == "FULLY_CONNECTED":
            total += out * weight[-1]
        elif name == "TRANSPOSE_CONV":
            total += int(np.prod(model.tensors[ins[2]].shape)) * weight[1] * weight[2] * weight[0]
        else:
            total += out * weight[-2]
    return total
