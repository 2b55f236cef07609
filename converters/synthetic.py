"""Synthetic FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D models for the delegate's tests and benchmark.

`build_model` writes a chain of layers straight into a TFLite flatbuffer (no TensorFlow needed), in
float32 or int8 (per-tensor or per-channel weights), with random weights from a seed. The result is
an ordinary `.tflite`; segment it with `tflm_swap.segment_model(Model.from_bytes(...))`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tflm_swap.errors import TflmSwapError
from tflm_swap.format.model import Model
from tflm_swap.format.schema import tfl

from .graph import (
    add_buffer,
    add_operator,
    add_tensor,
    empty_model,
    make_operator,
    make_quantization,
    make_tensor,
    opcode_index,
)

ACTIVATIONS = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3}


@dataclass(frozen=True)
class Layer:
    """One layer: kind is 'fc', 'conv', 'dw' or 'relu' (a standalone RELU operator)."""

    kind: str
    units: int = 0  # fc: output units; conv: output channels; dw: depth multiplier
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    padding: str = "SAME"
    activation: str = "NONE"
    bias: bool = True
    keep_num_dims: bool = False  # fc: keep the input's leading dimensions instead of flattening them


def fc(units: int, activation: str = "NONE", bias: bool = True, keep_num_dims: bool = False) -> Layer:
    return Layer("fc", units, activation=activation, bias=bias, keep_num_dims=keep_num_dims)


def conv(channels: int, kernel=(3, 3), stride=(1, 1), padding="SAME", activation="NONE", dilation=(1, 1),
         bias: bool = True) -> Layer:
    return Layer("conv", channels, tuple(kernel), tuple(stride), tuple(dilation), padding, activation, bias)


def depthwise(multiplier: int = 1, kernel=(3, 3), stride=(1, 1), padding="SAME", activation="NONE",
              dilation=(1, 1), bias: bool = True) -> Layer:
    return Layer("dw", multiplier, tuple(kernel), tuple(stride), tuple(dilation), padding, activation, bias)


def relu() -> Layer:
    return Layer("relu")


class _Builder:
    def __init__(self, dtype: str, per_channel: bool, seed: int):
        if dtype not in ("float32", "int8"):
            raise TflmSwapError(f"dtype {dtype!r}: use 'float32' or 'int8'")
        self.int8 = dtype == "int8"
        self.per_channel = per_channel
        self.rng = np.random.default_rng(seed)
        self.model = empty_model("tflm_swap delegate test model", version=3)

    def tensor(self, name: str, shape, ttype: int, data: bytes | None = None, quant=None) -> int:
        buffer = add_buffer(self.model, data) if data is not None else 0
        q = make_quantization(*quant) if quant is not None else None
        return add_tensor(self.model, make_tensor(name, shape, ttype, buffer, q))

    def activation(self, name: str, shape, scale: float, zero_point: int) -> int:
        if self.int8:
            return self.tensor(name, shape, tfl.TensorType.INT8, quant=([scale], [zero_point], 0))
        return self.tensor(name, shape, tfl.TensorType.FLOAT32)

    def op(self, code: int, inputs, outputs, options_type=0, options=None) -> None:
        versions = {tfl.BuiltinOperator.FULLY_CONNECTED: 4, tfl.BuiltinOperator.CONV_2D: 3,
                    tfl.BuiltinOperator.DEPTHWISE_CONV_2D: 3, tfl.BuiltinOperator.RELU: 2}
        opcode = opcode_index(self.model, code, version=versions.get(code, 1) if self.int8 else 1)
        add_operator(self.model, make_operator(opcode, inputs, outputs, options_type, options))

    def weights(self, name: str, shape, channels: int, axis: int, in_scale: float):
        """Weight and bias tensors data; returns (filter tensor, bias maker, per-channel scales)."""
        fan_in = math.prod(shape) // channels
        if not self.int8:
            w = (self.rng.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32)
            return self.tensor(name, shape, tfl.TensorType.FLOAT32, w.tobytes()), None
        scales = self.rng.uniform(0.5, 1.5, channels if self.per_channel else 1) / (127 * math.sqrt(fan_in))
        w = self.rng.integers(-127, 128, size=shape, dtype=np.int8)
        zps = [0] * len(scales)
        t = self.tensor(name, shape, tfl.TensorType.INT8, w.tobytes(), (scales, zps, axis if self.per_channel else 0))
        return t, scales

    def bias(self, name: str, channels: int, in_scale: float, scales) -> int:
        if not self.int8:
            b = (self.rng.standard_normal(channels) * 0.1).astype(np.float32)
            return self.tensor(name, [channels], tfl.TensorType.FLOAT32, b.tobytes())
        bscale = [float(s) * in_scale for s in scales]
        b = self.rng.integers(-2000, 2000, size=channels).astype(np.int32)
        return self.tensor(name, [channels], tfl.TensorType.INT32, b.tobytes(),
                           (list(bscale), [0] * len(bscale), 0))


def build_model(input_shape, layers: list[Layer], dtype: str = "float32", per_channel: bool = True,
                seed: int = 0) -> bytes:
    """A `.tflite` running `layers` in sequence on an input of `input_shape` (NHWC for convolutions)."""
    b = _Builder(dtype, per_channel, seed)
    shape, scale, zp = list(input_shape), 0.05, int(b.rng.integers(-20, 20))
    x = b.activation("input", shape, scale, zp)
    inputs = [x]
    for i, layer in enumerate(layers):
        x, shape, scale, zp = _add_layer(b, i, layer, x, shape, scale, zp)
    b.model.subgraph.inputs, b.model.subgraph.outputs, b.model.subgraph.name = inputs, [x], "main"
    return bytes(Model.from_bytes(bytes(b.model.pack())).pack())  # as parsed back: 16-byte aligned buffers


def _out_size(n: int, k: int, s: int, d: int, padding: str) -> int:
    eff = (k - 1) * d + 1
    return (n + s - 1) // s if padding == "SAME" else (n + s - eff) // s


def _add_layer(b: _Builder, i: int, layer: Layer, x: int, shape, scale: float, zp: int):
    if layer.kind == "relu":
        y = b.activation(f"relu{i}", shape, scale, zp)
        b.op(tfl.BuiltinOperator.RELU, [x], [y])
        return y, shape, scale, zp
    act = ACTIVATIONS[layer.activation]
    out_scale, out_zp = scale * float(b.rng.uniform(1.0, 3.0)), int(b.rng.integers(-20, 20))
    if layer.kind == "fc":
        depth = shape[-1] if len(shape) == 2 or layer.keep_num_dims else math.prod(shape[1:])
        batches = math.prod(shape) // depth
        w, scales = b.weights(f"fc{i}/weights", [layer.units, depth], layer.units, 0, scale)
        bias = b.bias(f"fc{i}/bias", layer.units, scale, scales) if layer.bias else -1
        out_shape = [*shape[:-1], layer.units] if layer.keep_num_dims else [batches, layer.units]
        y = b.activation(f"fc{i}/out", out_shape, out_scale, out_zp)
        opts = tfl.FullyConnectedOptionsT()
        opts.fusedActivationFunction = act
        opts.keepNumDims = layer.keep_num_dims
        b.op(tfl.BuiltinOperator.FULLY_CONNECTED, [x, w, bias], [y], tfl.BuiltinOptions.FullyConnectedOptions, opts)
        return y, out_shape, out_scale, out_zp
    n, h, wd, c = shape
    kh, kw = layer.kernel
    oh = _out_size(h, kh, layer.stride[0], layer.dilation[0], layer.padding)
    ow = _out_size(wd, kw, layer.stride[1], layer.dilation[1], layer.padding)
    padding = tfl.Padding.SAME if layer.padding == "SAME" else tfl.Padding.VALID
    if layer.kind == "conv":
        oc = layer.units
        w, scales = b.weights(f"conv{i}/weights", [oc, kh, kw, c], oc, 0, scale)
        opts = tfl.Conv2DOptionsT()
        code, otype = tfl.BuiltinOperator.CONV_2D, tfl.BuiltinOptions.Conv2DOptions
    else:
        oc = c * layer.units
        w, scales = b.weights(f"dw{i}/weights", [1, kh, kw, oc], oc, 3, scale)
        opts = tfl.DepthwiseConv2DOptionsT()
        opts.depthMultiplier = layer.units
        code, otype = tfl.BuiltinOperator.DEPTHWISE_CONV_2D, tfl.BuiltinOptions.DepthwiseConv2DOptions
    opts.padding, opts.strideH, opts.strideW = padding, layer.stride[0], layer.stride[1]
    opts.dilationHFactor, opts.dilationWFactor = layer.dilation
    opts.fusedActivationFunction = act
    bias = b.bias(f"{layer.kind}{i}/bias", oc, scale, scales) if layer.bias else -1
    out_shape = [n, oh, ow, oc]
    y = b.activation(f"{layer.kind}{i}/out", out_shape, out_scale, out_zp)
    b.op(code, [x, w, bias], [y], otype, opts)
    return y, out_shape, out_scale, out_zp
