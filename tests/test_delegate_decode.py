"""The LiteRT delegate on models in upstream TFLM's DECODE layout (TFLM_DECODE custom operator +
LUT-encoded filter + ancillary tensor), made with upstream's own tool from `tflm_swap.compress`
outputs: bit-identical to LiteRT's reference kernels on the decoded model, clear errors on corrupt
or inconsistent data, and stock LiteRT refusing the file without the delegate."""

from __future__ import annotations

import functools
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import load_delegate
from conftest import require_model
from test_compress import compressed_mlperf
from test_delegate import assert_same, outputs
from upstream_decode import decode_ops, upstream_decode_layout

import tflm_swap
from tflm_swap import Model, segment_model, verify
from tflm_swap.cli import main
from tflm_swap.converters import synthetic as m
from tflm_swap.delegate import (
    DelegateError,
    default_table_path,
    delegate_library,
    delegate_options,
    delegate_stats,
    read_tile_table,
)
from tflm_swap.errors import UnsupportedModelError
from tflm_swap.interpreters import litert_interpreter, random_inputs, run_litert


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(data)
    return path


def run_delegated(path: Path, reference: Path, n: int = 2, **options):
    """Delegate outputs on `path` against the reference kernels on `reference`; returns the stats."""
    delegate = load_delegate(delegate_library(), delegate_options(path, **options))
    assert_same(outputs(path, delegate, n=n), outputs(reference, n=n))
    return delegate_stats(delegate)


def streamed_encoded_bytes(path: Path) -> tuple[int, int]:
    """Stored bytes of the encoded tensors in segments, and of those inline in the graph."""
    model = Model.from_bytes(path.read_bytes())
    _, records = read_tile_table(default_table_path(path))
    in_segments = {r.tensor: r.size for r in records if r.bits}
    encoded = [model.op_inputs(op)[0] for op in decode_ops(model)]
    inline = sum(model.buffer_size(model.tensors[t].buffer) for t in encoded if t not in in_segments)
    return sum(in_segments[t] for t in encoded if t in in_segments), inline


@functools.cache
def per_tensor_reference(name: str) -> bytes:
    return tflm_swap.compress(require_model(name).read_bytes(), 4, per_channel=False)


MLPERF = ["ad01_int8", "kws_ref_model", "pretrainedResnet_quant", "vww_96_int8"]


@pytest.mark.parametrize("lut", ["per_channel", "per_tensor"])
@pytest.mark.parametrize("name", MLPERF)
def test_mlperf_decode_layout_bit_identical(tmp_path, name, lut):
    """Every TFLM_DECODE pair is claimed; outputs equal the reference kernels on the decoded model with
    prefetch and blocking, small and large tiles; the encoded bytes are what is read."""
    # per-channel references come from test_compress's cache (ad01 is compressed per tensor there)
    reference = compressed_mlperf(name).original if lut == "per_channel" else per_tensor_reference(name)
    decoded = write(tmp_path, "reference", reference)
    model = upstream_decode_layout(reference, 4, per_channel=lut == "per_channel")
    path = write(tmp_path, "decode", segment_model(model, keep_decode=True))
    stats = run_delegated(path, decoded, tile_bytes=4096, prefetch=lut == "per_channel")
    assert stats.claimed_nodes == len(decode_ops(model))
    in_segments, inline = streamed_encoded_bytes(path)
    assert in_segments > 0 and stats.bytes_read == 2 * in_segments and stats.mapped_bytes == 2 * inline
    run_delegated(path, decoded, n=1, tile_bytes=1 << 20, prefetch=lut != "per_channel")


@functools.cache
def synthetic_reference(bits: int, per_channel: bool = True) -> bytes:
    raw = m.build_model([1, 12, 12, 16], [m.conv(32, (3, 3), (1, 1), "SAME", "RELU"),
                                          m.depthwise(2, (3, 3), (2, 2), "SAME", "RELU6"),
                                          m.conv(48, (1, 1)), m.fc(300, "RELU"), m.fc(10)],
                        "int8", per_channel=True, seed=3)
    return tflm_swap.compress(raw, bits, per_channel=per_channel)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A 3-bit per-channel DECODE-layout model (not a multiple of 8 bits: tiles hold 8-index groups of
    3 bytes) whose FULLY_CONNECTED filter spans many 4 KiB tiles, and its decoded reference."""
    tmp = tmp_path_factory.mktemp("decode")
    reference = synthetic_reference(3, per_channel=False)  # k-means per tensor is fast; the LUT is per channel
    model = upstream_decode_layout(reference, 3, per_channel=True)
    return write(tmp, "decode", segment_model(model, keep_decode=True)), write(tmp, "reference", reference), model


@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "blocking"])
def test_synthetic_decode_layout_bit_identical(synthetic, prefetch):
    path, reference, model = synthetic
    stats = run_delegated(path, reference, n=2, tile_bytes=4096, prefetch=prefetch)
    assert stats.claimed_nodes == len(decode_ops(model)) == 5
    header, records = read_tile_table(default_table_path(path))
    encoded = [r for r in records if r.bits]
    assert header["version"] == 2 and encoded and all(r.bits == 3 and r.tile_len == 4096 * 3 // 8 for r in encoded)
    assert max(len(r.tile_crcs) for r in encoded) > 10
    assert stats.slot_bytes == 4096  # a tile decodes into one tile_bytes buffer


def test_cli_writes_the_segmented_decode_layout_the_delegate_runs(tmp_path):
    """`tflm-swap convert --compress 4 --layout decode-segments`: the DECODE layout, segmented with its
    TFLM_DECODE operators kept; the delegate's outputs are those of the compressed model."""
    raw = tmp_path / "raw.tflite"
    raw.write_bytes(m.build_model([1, 12, 12, 16], [m.conv(32, (3, 3), (1, 1), "SAME", "RELU"), m.fc(300), m.fc(10)],
                                  "int8", per_channel=True, seed=4))
    out = tmp_path / "decode.tflite"
    assert main(["convert", str(raw), "-o", str(out), "--compress", "4", "--layout", "decode-segments"]) == 0
    assert decode_ops(Model.load(out)) and verify(out.read_bytes()).segments
    reference = write(tmp_path, "reference", tflm_swap.convert(str(raw), compress_bits=4).original)
    assert run_delegated(out, reference, n=1, tile_bytes=4096).claimed_nodes == len(decode_ops(Model.load(out)))


def test_shared_table_with_stride_zero(tmp_path):
    """Per-tensor clustering of a filter quantized per channel: `to_decode_layout` writes one shared
    table with stride 0 (what the pinned TFLM kernel reads for every channel); the delegate too."""
    from tflm_swap.converters.decode_layout import to_decode_layout

    reference = synthetic_reference(4, per_channel=False)
    layout = Model.from_bytes(to_decode_layout(reference))
    strides = [layout.buffers[layout.tensors[layout.op_inputs(op)[1]].buffer][6] for op in decode_ops(layout)]
    assert 0 in strides
    path = write(tmp_path, "decode", segment_model(layout, keep_decode=True))
    stats = run_delegated(path, write(tmp_path, "reference", reference), n=1, tile_bytes=4096)
    assert stats.claimed_nodes >= len(strides)


def test_one_bit_per_tensor_lut(tmp_path):
    reference = synthetic_reference(1, per_channel=False)
    layout = upstream_decode_layout(reference, 1, per_channel=False)
    path = write(tmp_path, "decode", segment_model(layout, keep_decode=True))
    stats = run_delegated(path, write(tmp_path, "reference", reference), n=1, tile_bytes=4096,
                          min_weight_bytes=1 << 30)  # decode pairs are claimed whatever the threshold
    assert stats.claimed_nodes == 5


def test_decoded_filters_are_not_allocated_by_litert(synthetic):
    """The decoded tensor lives only inside the delegate's partition: LiteRT never gives it memory."""
    path, _, model = synthetic
    delegate = load_delegate(delegate_library(), delegate_options(path, tile_bytes=4096))
    interpreter = litert_interpreter(model_path=str(path), delegates=[delegate], reference_kernels=True)
    interpreter.allocate_tensors()
    for op in decode_ops(model):
        decoded = model.fb.subgraphs[0].operators[op].outputs[0]
        with pytest.raises(ValueError, match="Tensor data is null"):
            interpreter.get_tensor(decoded)


def test_stock_litert_refuses_the_decode_layout(synthetic):
    path, _, _ = synthetic
    with pytest.raises(RuntimeError, match="unresolved custom op: TFLM_DECODE"):
        litert_interpreter(model_path=str(path), reference_kernels=True).allocate_tensors()


def _segment_entry(path: Path, tensor: int) -> tuple[int, int]:
    _, records = read_tile_table(default_table_path(path))
    record = next(r for r in records if r.tensor == tensor)
    return record.offset, record.size


def test_flipped_index_byte_fails_the_invoke(tmp_path, synthetic):
    path, _, model = synthetic
    options = delegate_options(path, tile_bytes=4096)
    encoded = model.op_inputs(decode_ops(model)[-2])[0]  # the large FULLY_CONNECTED filter
    offset, size = _segment_entry(path, encoded)
    data = bytearray(path.read_bytes())
    data[offset + size // 2] ^= 0x10
    bad = write(tmp_path, "flipped", bytes(data))
    delegate = load_delegate(delegate_library(), {**options, "weights": str(bad)})  # same graph: table accepted
    interpreter = litert_interpreter(model_path=str(bad), delegates=[delegate], reference_kernels=True)
    interpreter.allocate_tensors()
    with pytest.raises(RuntimeError, match=f"tile \\d+ of tensor {encoded} .*fails its CRC32 check"):
        interpreter.invoke()


def test_corrupt_ancillary_segment_fails_prepare(tmp_path, synthetic):
    path, _, model = synthetic
    options = delegate_options(path, tile_bytes=4096)
    ancillary = model.op_inputs(decode_ops(model)[-2])[1]
    offset, _ = _segment_entry(path, ancillary)  # 16 + 300 x 8 bytes: stored in a segment
    data = bytearray(path.read_bytes())
    data[offset + 20] ^= 0x01
    bad = write(tmp_path, "ancillary", bytes(data))
    delegate = load_delegate(delegate_library(), {**options, "weights": str(bad)})
    with pytest.raises(RuntimeError, match=f"tensor {ancillary} \\(the TFLM_DECODE ancillary data.*CRC32"):
        litert_interpreter(model_path=str(bad), delegates=[delegate], reference_kernels=True).allocate_tensors()


def _with_ancillary(model: Model, op: int, edit) -> bytes:
    """The model with the ancillary data of DECODE `op` edited (before segmenting: CRCs stay valid)."""
    model = Model.from_bytes(bytes(model.pack()))
    buffer = model.tensors[model.op_inputs(op)[1]].buffer
    data = bytearray(model.buffers[buffer])
    model.buffers[buffer] = bytes(edit(data) or data)
    model.fb.subgraphs[0].tensors[model.op_inputs(op)[1]].shape = [len(model.buffers[buffer])]
    return segment_model(Model.from_bytes(bytes(model.pack())), keep_decode=True)


def _set(index: int, value: int):
    def edit(data: bytearray) -> None:
        data[index] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set(0, 1), "decode type 1 is not LUT"),
    (_set(1, 2), "DCM version 2 / LUT version 1"),
    (_set(4, 9), "DCM version 1 / LUT version 9"),
    (_set(5, 0x33), "value tables along axis 3, but the filter's channel axis is 0"),
    (_set(6, 4), "ancillary data is 2416 bytes, but 300 value table\\(s\\) of 4 int8 entries need 1216"),
    (lambda d: d[:-1], "ancillary data is 2415 bytes"),
], ids=["decode_type", "dcm_version", "lut_version", "axis", "stride", "size"])
def test_inconsistent_ancillary_data_fails_prepare(tmp_path, synthetic, edit, message):
    _, _, model = synthetic
    op = decode_ops(model)[-2]
    path = write(tmp_path, "bad", _with_ancillary(model, op, edit))
    delegate = load_delegate(delegate_library(), delegate_options(path, tile_bytes=4096))
    with pytest.raises(RuntimeError, match=f"TFLM_DECODE of filter tensor \\d+ .* is invalid: {message}"):
        litert_interpreter(model_path=str(path), delegates=[delegate], reference_kernels=True).allocate_tensors()


def test_index_past_a_short_value_table_fails_the_invoke(tmp_path, synthetic):
    """A stride below 2**bits with matching sizes: indices past a table are caught while decoding."""
    _, _, model = synthetic
    op = decode_ops(model)[-1]  # fc(10): 10 channels x stride 8, inline in the graph
    path = write(tmp_path, "short", _with_ancillary(model, op, lambda d: _set(6, 1)(d) or d[:16 + 10]))
    delegate = load_delegate(delegate_library(), delegate_options(path, tile_bytes=4096))
    interpreter = litert_interpreter(model_path=str(path), delegates=[delegate], reference_kernels=True)
    interpreter.allocate_tensors()
    with pytest.raises(RuntimeError, match="index past its value table \\(1 entries\\)"):
        interpreter.invoke()


def test_bad_bitwidth_is_refused_when_the_table_is_built(tmp_path, synthetic):
    _, _, model = synthetic
    path = write(tmp_path, "bits", _with_ancillary(model, decode_ops(model)[0], _set(5, 0x08)))
    with pytest.raises(DelegateError, match="ancillary tensor \\d+ .*index bitwidth 8, outside 1..7"):
        delegate_options(path, tile_bytes=4096)


def test_old_tile_table_version_is_refused(tmp_path, synthetic):
    path, _, _ = synthetic
    options = delegate_options(path, tile_bytes=4096)
    body = bytearray(Path(options["table"]).read_bytes()[:-4])
    body[4:8] = struct.pack("<I", 1)
    old = tmp_path / "old.tiles"
    old.write_bytes(bytes(body) + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(ValueError, match="has version 1; this delegate reads version 2; rebuild it"):
        load_delegate(delegate_library(), {**options, "table": str(old)})


def test_palette_encoded_file_is_refused_with_the_way_out(tmp_path):
    reference = Model.from_bytes(synthetic_reference(3, per_channel=False))
    path = write(tmp_path, "v3", segment_model(reference, encode=True))
    with pytest.raises(UnsupportedModelError, match="palette-encoded.*layout decode-segments.*to_decode_layout"):
        delegate_options(path)


def test_prepare_again_after_invokes_with_a_tile_fetched_ahead(synthetic):
    """Re-preparing (same shapes) while the reader may hold a decoded tile ahead stays bit-identical."""
    path, reference, _ = synthetic
    delegate = load_delegate(delegate_library(), delegate_options(path, tile_bytes=4096, prefetch=True))
    interpreter = litert_interpreter(model_path=str(path), delegates=[delegate], reference_kernels=True)
    interpreter.allocate_tensors()
    stock = litert_interpreter(model_path=str(reference), reference_kernels=True)
    stock.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    rng = np.random.default_rng(5)
    for _ in range(3):
        x = random_inputs(stock.get_input_details(), rng)
        assert_same([run_litert(interpreter, x)], [run_litert(stock, x)])
        interpreter.resize_tensor_input(detail["index"], detail["shape"])
        interpreter.allocate_tensors()
