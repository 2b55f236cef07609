"""Weight sharing on Keras-made models (issue 18's acceptance): a tiny CNN with CONV_2D,
DEPTHWISE_CONV_2D and FULLY_CONNECTED, trained for a moment, converted by tf.lite.TFLiteConverter
with per-channel and with per-tensor int8 quantization, compressed, segmented: bit-identical to the
compressed model on LiteRT's reference kernels (SwapInterpreter stage loads), through the LiteRT
delegate (upstream TFLM's DECODE layout) and on host TFLM (blocking loads, prefetch, tiles)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from test_compress import _smallest_budget, _stage_outputs
from test_compress_micro import _encoded_loads
from test_micro import _inputs, _same, runner  # noqa: F401 - the fixture
from test_micro_native import native_or_skip  # noqa: F401

import tflm_swap
from tflm_swap.converters.compress import filter_channels
from tflm_swap.format.model import Model

pytest.importorskip("tensorflow", reason="Keras-made models need TensorFlow (pip install .[convert])")

MIN_SEGMENT = 128  # the depthwise filter (144 B) is loaded too
OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}


@functools.cache
def keras_net():
    """The tiny CNN, compiled and trained for a moment on random data, and that data (x, y)."""
    from tensorflow import keras

    keras.utils.set_random_seed(7)
    net = keras.Sequential([
        keras.Input((16, 16, 8)),
        keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
        keras.layers.DepthwiseConv2D(3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10),
    ])
    rng = np.random.default_rng(7)
    x = rng.normal(size=(256, 16, 16, 8)).astype(np.float32)
    y = rng.integers(0, 10, 256)
    net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x, y, epochs=2, batch_size=64, verbose=0)  # biases and weights away from their initial values
    return net, x, y


@functools.cache
def keras_int8(per_channel_quant: bool) -> bytes:
    """The tiny CNN, int8 (inputs and outputs too), weights quantized per channel or per tensor."""
    import tensorflow as tf

    net, x, _ = keras_net()
    converter = tf.lite.TFLiteConverter.from_keras_model(net)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([s[None]] for s in x[:64])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    converter._experimental_disable_per_channel = not per_channel_quant
    return bytes(converter.convert())


@functools.cache
def compressed_keras(per_channel_quant: bool, bits: int, per_channel: bool) -> tflm_swap.SegmentedModel:
    return tflm_swap.convert(keras_int8(per_channel_quant), compress_bits=bits, per_channel=per_channel,
                             min_segment_bytes=MIN_SEGMENT)


# (weights quantized per channel, bits, clustered per channel)
SETTINGS = [(True, 4, True), (False, 4, True), (False, 4, False), (True, 2, True)]


def _check_clustered(result: tflm_swap.SegmentedModel, bits: int, per_channel: bool) -> None:
    model = Model.from_bytes(result.original)
    assert {model.opcode_name(op) for op in range(len(model.operators))} >= OPS
    filters = filter_channels(model)
    assert len(filters) == 5  # two conv, one depthwise, two dense
    for b, (channels, inner) in filters.items():
        v = np.frombuffer(model.buffers[b], np.int8).reshape(-1, channels, inner)
        groups = [v[:, c, :] for c in range(channels)] if per_channel else [v]
        assert max(len(np.unique(g)) for g in groups) <= 1 << bits
    encoded = [e for s in result.manifest.segments for e in s.entries if e.decoded is not None]
    assert result.manifest.version == 3 and len(encoded) >= 3  # at least both convs and the hidden dense


@pytest.mark.parametrize("quant_per_channel,bits,per_channel", SETTINGS)
def test_keras_compressed_stage_loads_bit_identical(tmp_path, quant_per_channel, bits, per_channel):
    result = compressed_keras(quant_per_channel, bits, per_channel)
    _check_clustered(result, bits, per_channel)
    quant = Model.from_bytes(keras_int8(quant_per_channel))
    scales = [len(quant.tensors[t].quantization.scale) for op in range(len(quant.operators))
              if quant.opcode_name(op) == "CONV_2D" for t in quant.op_inputs(op)[1:2]]
    assert (min(scales) > 1) == quant_per_channel  # the converter did quantize as asked
    path = tmp_path / "c.tflite"
    path.write_bytes(result.data)
    _stage_outputs(path, result.original, n=3, ram_budget=_smallest_budget(result.manifest))
    _stage_outputs(path, result.original, n=2)


@pytest.mark.parametrize("quant_per_channel,bits,per_channel", SETTINGS)
def test_keras_compressed_delegate_bit_identical(tmp_path, quant_per_channel, bits, per_channel):
    """The DECODE layout of the compressed model, segmented with its TFLM_DECODE operators kept: the
    delegate decodes every pair, outputs those of the reference kernels on the compressed model."""
    from test_delegate import assert_same, outputs

    from tflm_swap.converters.decode_layout import to_decode_layout
    from tflm_swap.delegate import delegate_library, delegate_options, delegate_stats

    load_delegate = pytest.importorskip("ai_edge_litert.interpreter").load_delegate
    result = compressed_keras(quant_per_channel, bits, per_channel)
    layout = Model.from_bytes(to_decode_layout(result.original))
    decodes = sum(layout.opcode_name(op) == "CUSTOM:TFLM_DECODE" for op in range(len(layout.operators)))
    # per-channel tables on a filter quantized per tensor have no form in the layout TFLM decodes
    # (to_decode_layout, docs/FORMAT.md): those filters stay raw there
    assert decodes >= (0 if per_channel and not quant_per_channel else 3)
    path, reference = tmp_path / "decode.tflite", tmp_path / "reference.tflite"
    path.write_bytes(tflm_swap.segment_model(layout, min_segment_bytes=MIN_SEGMENT, keep_decode=True))
    reference.write_bytes(result.original)
    delegate = load_delegate(delegate_library(), delegate_options(path, tile_bytes=4096))
    assert_same(outputs(path, delegate, n=2), outputs(reference, n=2))
    assert delegate_stats(delegate).claimed_nodes >= decodes  # every pair, and the raw filters in segments


@pytest.mark.native
@pytest.mark.parametrize("quant_per_channel,bits,per_channel", SETTINGS)
def test_keras_compressed_host_tflm_bit_identical(runner, quant_per_channel, bits, per_channel):  # noqa: F811
    from tflm_swap.converters.tflm_tiles import TileChoice
    from tflm_swap.micro import rewrite_for_tflm, run_host_tflm
    from tflm_swap.micro.tiles import tileable_operators

    result = compressed_keras(quant_per_channel, bits, per_channel)
    reference = result.original
    x = _inputs(reference, 3)
    stock = run_host_tflm(reference, None, x)
    blocking = rewrite_for_tflm(result.model, min_segment_bytes=MIN_SEGMENT, verify_crc=True)
    assert len(_encoded_loads(blocking)) >= 3
    assert _same(stock.outputs, run_host_tflm(blocking.graph, blocking.image, x).outputs)
    prefetch = rewrite_for_tflm(result.model, min_segment_bytes=MIN_SEGMENT, prefetch=True)
    assert _same(stock.outputs, run_host_tflm(prefetch.graph, prefetch.image, x, deferred=True).outputs)
    tileable = tileable_operators(Model.from_bytes(reference), MIN_SEGMENT)
    op = max(tileable, key=lambda k: tileable[k].channels)  # one tiled operator, the others decoded on load
    tiled = rewrite_for_tflm(result.model, min_segment_bytes=MIN_SEGMENT, tiles={op: TileChoice(2, True)})
    assert _encoded_loads(tiled)
    assert _same(stock.outputs, run_host_tflm(tiled.graph, tiled.image, x, deferred=True).outputs)


def _most_values_per_channel(model: Model) -> int:
    return max(len(np.unique(v[:, c, :])) for b, (channels, inner) in filter_channels(model).items()
               for v in [np.frombuffer(model.buffers[b], np.int8).reshape(-1, channels, inner)]
               for c in range(channels))


def test_finetuned_clusters_survive_int8_conversion(tmp_path):
    """Fine-tuning with tied weights: every kernel holds <= 2**bits values per output channel, the
    int8 model the converter makes from it too (clustering it again changes no byte), the caller's
    model is untouched; `compress(keras, data=)` and `convert(keras, compress_bits=, data=)` run it."""
    from tflm_swap.converters.finetune import finetune_clustered
    from tflm_swap.converters.keras import to_tflite

    net, x, y = keras_net()
    before = [w.copy() for w in net.get_weights()]
    tuned = finetune_clustered(net, (x, y), bits=2, epochs=1)
    assert all(np.array_equal(a, b) for a, b in zip(before, net.get_weights()))
    assert not all(np.array_equal(a, b) for a, b in zip(before, tuned.get_weights()))
    for layer in tuned.layers:
        if hasattr(layer, "kernel"):
            k = layer.kernel.numpy()
            depthwise = type(layer).__name__ == "DepthwiseConv2D"  # channels: input channel x multiplier
            k = k.reshape(-1, k.shape[-2] * k.shape[-1] if depthwise else k.shape[-1])
            assert max(len(np.unique(k[:, c])) for c in range(k.shape[1])) <= 4
    int8 = Model.from_bytes(to_tflite(tuned, representative_data=x, quantization="int8"))
    assert _most_values_per_channel(int8) <= 4
    again = Model.from_bytes(tflm_swap.compress(int8, 2))
    assert all(int8.buffers[b] == again.buffers[b] for b in filter_channels(int8))
    assert _most_values_per_channel(Model.from_bytes(tflm_swap.compress(net, 3, data=(x, y)))) <= 8
    result = tflm_swap.convert(net, compress_bits=3, data=(x, y), min_segment_bytes=MIN_SEGMENT)
    path = tmp_path / "ft.tflite"
    path.write_bytes(result.data)
    _stage_outputs(path, result.original, n=2)
    with pytest.raises(tflm_swap.TflmSwapError, match="cannot compress a Sequential"):
        tflm_swap.compress(net, 4)
    with pytest.raises(tflm_swap.TflmSwapError, match="give compress_bits too"):
        tflm_swap.convert(net, data=(x, y))
    with pytest.raises(tflm_swap.TflmSwapError, match="pair"):
        tflm_swap.compress(net, 4, data=x)
    with pytest.raises(tflm_swap.TflmSwapError, match="finite"):
        tflm_swap.compress(net, 4, data=(np.full_like(x, np.inf), y))
