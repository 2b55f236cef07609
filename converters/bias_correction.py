"""Bias correction after clustering (`correct_biases`), with calibration inputs.

Clustering moves each weight of a channel by dW; the channel's int32 accumulator then moves by
sum(dW * (x - zx)) on average over the data. Subtracting that mean shift from the int32 bias keeps
each output channel's mean accumulator where the original model had it (Nagel et al., "Data-free
quantization through weight equalization and bias correction", 2019, with the input means measured
on calibration data instead of derived from batch norm). The input means are those of the original
int8 model's operator inputs (LiteRT reference kernels); a convolution's are taken per input
channel over all positions (border padding is not modelled).
"""

from __future__ import annotations

import numpy as np

from tflm_swap.errors import TflmSwapError
from tflm_swap.format.model import Model
from tflm_swap.format.schema import tfl
from tflm_swap.interpreters import litert_interpreter

from .compress import FILTER_OPS

CALIBRATION_SAMPLES = 500
INT32 = np.iinfo(np.int32)


def correct_biases(model: Model, buffers: list[bytes], inputs: np.ndarray) -> list[bytes]:
    """`buffers` (the clustered filters of `model`) with the int32 biases of every CONV_2D,
    DEPTHWISE_CONV_2D and FULLY_CONNECTED whose filter changed corrected for the mean accumulator
    shift over `inputs` (float samples of the model's single input, or already its int8 values)."""
    ops = [op for op in _biased_filter_ops(model) if buffers[_filter_buffer(model, op)] !=
           model.buffers[_filter_buffer(model, op)]]
    means = input_means(model, ops, inputs) if ops else {}
    out = list(buffers)
    for op, mean in means.items():
        inputs_of = model.op_inputs(op)
        b, bias_buffer = _filter_buffer(model, op), model.constant_buffer(inputs_of[2])
        shape = [int(d) for d in model.tensors[inputs_of[1]].shape]
        change = (np.frombuffer(out[b], np.int8).astype(np.float64)
                  - np.frombuffer(model.buffers[b], np.int8)).reshape(shape)
        bias = np.frombuffer(out[bias_buffer], np.int32).astype(np.float64)
        corrected = bias - np.rint(_accumulator_shift(model.opcode_name(op), change, mean))
        out[bias_buffer] = np.clip(corrected, INT32.min, INT32.max).astype(np.int32).tobytes()
    return out


def _accumulator_shift(kind: str, change: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Mean accumulator change per output channel for filter change `change` and input means `mean`."""
    if kind == "CONV_2D":  # [out, kh, kw, in]
        return change.reshape(change.shape[0], -1, change.shape[-1]).sum(axis=1) @ mean
    if kind == "DEPTHWISE_CONV_2D":  # [1, kh, kw, in * multiplier]
        return change.reshape(-1, change.shape[-1]).sum(axis=0) * np.repeat(mean, change.shape[-1] // len(mean))
    return change @ mean  # FULLY_CONNECTED [out, in]


def input_means(model: Model, ops: list[int], inputs: np.ndarray) -> dict[int, np.ndarray]:
    """Mean of each operator's input minus its zero point over `inputs` (at most
    CALIBRATION_SAMPLES): per input channel (convolutions) or per input element (fully connected)."""
    interpreter = litert_interpreter(bytes(model.pack()), reference_kernels=True, preserve_all_tensors=True)
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()
    if len(details) != 1:
        raise TflmSwapError(f"bias correction calibrates single-input models; this one has {len(details)} inputs")
    samples = _quantized(np.asarray(inputs)[:CALIBRATION_SAMPLES], details[0])
    sums = {op: 0.0 for op in ops}
    for sample in samples:
        interpreter.set_tensor(details[0]["index"], sample[None])
        interpreter.invoke()
        for op in ops:
            t, weights = model.op_inputs(op)[0], model.op_inputs(op)[1]
            x = interpreter.get_tensor(t).astype(np.float64) - _zero_point(model, t)
            depth = int(model.tensors[weights].shape[1]) if model.opcode_name(op) == "FULLY_CONNECTED" \
                else x.shape[-1]
            sums[op] = sums[op] + x.reshape(-1, depth).mean(axis=0)
    return {op: s / len(samples) for op, s in sums.items()}


def _quantized(x: np.ndarray, detail: dict) -> np.ndarray:
    shape = tuple(int(d) for d in detail["shape"][1:])
    if x.ndim == 0 or len(x) == 0 or x.shape[1:] != shape:
        raise TflmSwapError(f"calibration inputs of shape {x.shape} do not match the model's input "
                            f"[N, {', '.join(map(str, shape))}]")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise TflmSwapError("calibration inputs hold NaN or infinite values")
    dtype = np.dtype(detail["dtype"])
    if x.dtype == dtype or not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / scale + zero), info.min, info.max).astype(dtype)


def _zero_point(model: Model, tensor: int) -> float:
    q = model.tensors[tensor].quantization
    return float(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0.0


def _filter_buffer(model: Model, op: int) -> int:
    return model.constant_buffer(model.op_inputs(op)[1])


def _biased_filter_ops(model: Model) -> list[int]:
    """Compressible operators with a constant int8 filter and a constant int32 bias."""
    found = []
    for op in range(len(model.operators)):
        inputs = model.op_inputs(op)
        if model.opcode_name(op) not in FILTER_OPS or len(inputs) < 3 or inputs[2] < 0:
            continue
        constant = model.constant_buffer(inputs[1]) is not None and model.constant_buffer(inputs[2]) is not None
        types = (model.tensors[inputs[1]].type, model.tensors[inputs[2]].type)
        if constant and types == (tfl.TensorType.INT8, tfl.TensorType.INT32):
            found.append(op)
    return found
