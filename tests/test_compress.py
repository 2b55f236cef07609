"""Weight sharing (`tflm_swap.compress`), the palette encoding (format/palette.py), compressed
segments written by `convert(..., compress_bits=)` and decoded by SwapInterpreter's stage loads,
bit-identical to the compressed model on LiteRT's reference kernels."""

from __future__ import annotations

import functools
import struct

import numpy as np
import pytest
from conftest import require_model
from helpers import outputs_on_random_inputs

import tflm_swap
from tflm_swap.converters.compress import compress, filter_channels
from tflm_swap.converters.synthetic import build_model, conv, depthwise, fc
from tflm_swap.errors import SegmentIntegrityError, UnsupportedModelError
from tflm_swap.format import palette
from tflm_swap.format.model import Model
from tflm_swap.runtime import SwapInterpreter


# ------------------------------------------------------------------------------------ encoding
@pytest.mark.parametrize("channels,inner,levels", [(8, 27, 16), (8, 1, 5), (3, 64, 2), (4, 32, 200), (1, 500, 7)])
def test_palette_round_trip(channels, inner, levels):
    rng = np.random.default_rng(channels * inner + levels)
    palette_values = rng.integers(-127, 128, (channels, levels))
    picks = rng.integers(0, levels, (3, channels, inner))
    values = np.take_along_axis(palette_values[None, :, :], picks.reshape(3, channels, inner),
                                axis=2).astype(np.int8).reshape(-1)
    blob = palette.encode(values, channels, inner)
    if blob is None:  # not smaller than raw: only when the tables cannot pay
        assert palette.encoded_size(palette.bits_for(levels), levels, values.size, 1) >= values.size
        return
    assert len(blob) < values.size
    assert np.array_equal(palette.decode(blob, "test", values.size), values)


def test_palette_picks_the_smaller_table():
    """Few weights per channel (3x3 depthwise): one shared table beats a table per channel."""
    rng = np.random.default_rng(1)
    values = rng.choice(np.arange(-8, 8), size=9 * 64).astype(np.int8)  # [3, 3, 64], channel axis last
    header = palette.read_header(palette.encode(values, 64, 1), "test")
    assert header.channels == 1 and header.table_len == 16 and header.bits == 4
    assert palette.encode(rng.integers(-128, 128, 100).astype(np.int8), 1, 100) is None  # 100 values: raw


def _blob() -> bytearray:
    values = np.tile(np.arange(-3, 3, dtype=np.int8), 40)  # 6 values -> 3-bit indices, 240 elements
    return bytearray(palette.encode(values, 4, 60))


@pytest.mark.parametrize("corrupt,message", [
    (lambda b: b.__setitem__(5, 0), "bit width 0"),
    (lambda b: b.__setitem__(5, 9), "bit width 9"),
    (lambda b: b.__setitem__(0, ord("X")), "magic"),
    (lambda b: b.__setitem__(4, 2), "encoding version 2"),
    (lambda b: struct.pack_into("<H", b, 6, 9), "table length 9"),
    (lambda b: struct.pack_into("<I", b, 12, 7), "do not split"),
    (lambda b: b.__setitem__(20, 1), "reserved"),
    (lambda b: b.__delitem__(slice(30, 31)), "bytes, but"),
    (lambda b: b.__delitem__(slice(10, None)), "shorter than its"),
    (lambda b: b.__setitem__(24 + 4 * 6, 0xFF), "outside its 6-entry table"),
    (lambda b: b.__setitem__(-1, b[-1] | 0), None),  # untouched: decodes
])
def test_palette_corrupt_entries_name_the_segment(corrupt, message):
    blob = _blob()
    corrupt(blob)
    if message is None:
        palette.decode(bytes(blob), "segment 3", 240)
        return
    with pytest.raises(SegmentIntegrityError, match=f"segment 3.*{message}"):
        palette.decode(bytes(blob), "segment 3", 240)


def test_palette_wrong_size_and_padding_bits():
    blob = _blob()
    with pytest.raises(SegmentIntegrityError, match="segment 1.*decodes to 240 bytes; the tensor needs 256"):
        palette.decode(bytes(blob), "segment 1", 256)
    values = np.resize(np.arange(-3, 3, dtype=np.int8), 50)  # 50 3-bit indices: 150 bits, 2 spare
    odd = bytearray(palette.encode(values, 1, 50) or b"")
    assert len(odd) == palette.HEADER_SIZE + 6 + 19
    odd[-1] |= 1
    with pytest.raises(SegmentIntegrityError, match="segment 1.*bits after the last index are not zero"):
        palette.decode(bytes(odd), "segment 1", 50)


def test_every_bit_flip_is_caught_or_harmless():
    """A flip in an entry either raises SegmentIntegrityError or (in a table value) decodes to other
    values: never an exception of another kind. (In a file, the segment's CRC32 catches them all.)"""
    blob = _blob()
    for bit in range(len(blob) * 8):
        flipped = bytearray(blob)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            palette.decode(bytes(flipped), "segment 0", 240)
        except SegmentIntegrityError:
            pass


# ------------------------------------------------------------------------------------ compress
@pytest.mark.parametrize("per_channel", [True, False])
def test_compress_limits_values_and_keeps_quantization(per_channel):
    src = build_model([1, 8, 8, 6], [conv(16, activation="RELU"), depthwise(1), conv(8), fc(10)], dtype="int8",
                      seed=3)
    out = Model.from_bytes(compress(src, bits=3, per_channel=per_channel))
    orig = Model.from_bytes(src)
    filters = filter_channels(out)
    assert len(filters) == 4
    for b, (channels, inner) in filters.items():
        v = np.frombuffer(out.buffers[b], np.int8).reshape(-1, channels, inner)
        groups = [v[:, c, :] for c in range(channels)] if per_channel else [v]
        assert max(len(np.unique(g)) for g in groups) <= 8
    for a, b in zip(orig.tensors, out.tensors):
        qa, qb = a.quantization, b.quantization
        assert (qa is None) == (qb is None)
        if qa is not None and qa.scale is not None:
            assert np.array_equal(qa.scale, qb.scale) and np.array_equal(qa.zeroPoint, qb.zeroPoint)
    with pytest.raises(tflm_swap.TflmSwapError, match="bit width 8"):
        compress(src, bits=8)


# ---------------------------------------------------------------------- compressed segments + runtime
def _stage_outputs(path, reference: bytes, n: int = 5, ram_budget: int | None = None) -> None:
    """SwapInterpreter on the compressed segmented file == LiteRT's reference kernels on `reference`."""
    want = outputs_on_random_inputs(reference, n, reference_kernels=True)
    rng = np.random.default_rng(0)
    from tflm_swap.interpreters import random_inputs

    with SwapInterpreter(str(path), ram_budget=ram_budget, reference_kernels=True) as sw:
        sw.allocate_tensors()
        details = sw.get_input_details()
        for i, outs in enumerate(want):
            for d, x in zip(details, random_inputs(details, rng)):
                sw.set_tensor(d["index"], x)
            sw.invoke()
            got = [sw.get_tensor(d["index"]) for d in sw.get_output_details()]
            assert all(a.tobytes() == b.tobytes() for a, b in zip(outs, got)), f"inference {i} differs"
        return sw.stats()


def _smallest_budget(manifest) -> int:
    return 2 * max(s.decoded_size for s in manifest.segments)


@pytest.mark.parametrize("per_channel", [True, False])
def test_compressed_synthetic_models_bit_identical(tmp_path, per_channel):
    """Per-channel and per-tensor quantized filters, each compressed per channel and per tensor."""
    for quant_per_channel in (True, False):
        src = build_model([1, 12, 12, 8], [conv(32, activation="RELU"), depthwise(2), conv(48), fc(64), fc(10)],
                          dtype="int8", per_channel=quant_per_channel, seed=5)
        result = tflm_swap.convert(src, compress_bits=4, per_channel=per_channel)
        manifest = result.manifest
        assert manifest.version == 3 and any(s.encoded for s in manifest.segments)
        decoded = Model.from_bytes(result.data)
        original = Model.from_bytes(result.original)
        for e in (e for s in manifest.segments for e in s.entries):
            assert decoded.buffers[e.buffer] == original.buffers[e.buffer]
        path = tmp_path / f"m{quant_per_channel}.tflite"
        path.write_bytes(result.data)
        _stage_outputs(path, result.original, ram_budget=_smallest_budget(manifest))


@functools.cache
def compressed_mlperf(name: str) -> tflm_swap.SegmentedModel:
    # ad01's ten dense layers hold 1,700 channels: per tensor keeps the test fast (per channel: the benchmark)
    return tflm_swap.convert(str(require_model(name)), compress_bits=4, per_channel=name != "ad01_int8")


@pytest.mark.parametrize("name", ["ad01_int8", "kws_ref_model", "pretrainedResnet_quant", "vww_96_int8"])
def test_compressed_mlperf_stage_loads_bit_identical(tmp_path, name):
    result = compressed_mlperf(name)
    manifest = result.manifest
    path = tmp_path / "c.tflite"
    path.write_bytes(result.data)
    _stage_outputs(path, result.original, n=3, ram_budget=_smallest_budget(manifest))
    stored = sum(s.size for s in manifest.segments)
    assert stored < sum(s.decoded_size for s in manifest.segments)
    stats = _stage_outputs(path, result.original, n=1)  # no budget: every stage loaded once
    assert stats["flash_bytes_read"] == stored  # the stored (compressed) bytes are what is read
    assert tflm_swap.verify(result.data) == manifest


def test_stock_litert_refuses_the_compressed_file_and_the_delegate_says_why(tmp_path):
    result = compressed_mlperf("kws_ref_model")
    from tflm_swap.interpreters import litert_interpreter

    with pytest.raises((RuntimeError, ValueError)):
        litert_interpreter(result.data, reference_kernels=True).allocate_tensors()
    path = tmp_path / "c.tflite"
    path.write_bytes(result.data)
    with pytest.raises(UnsupportedModelError, match="palette-encoded.*SwapInterpreter"):
        tflm_swap.delegate_options(str(path))


def test_corrupt_compressed_entry_with_valid_crcs_names_the_segment(tmp_path):
    """A wrong bit width, written with a CRC32 that matches: the decoder, not the CRC, refuses it."""
    import zlib

    from tflm_swap.format.manifest import MANIFEST_NAME, Manifest, find_metadata, metadata_span

    result = compressed_mlperf("kws_ref_model")
    data = bytearray(result.data)
    manifest = result.manifest
    seg = next(s for s in manifest.segments if s.encoded)
    entry = next(e for e in seg.entries if e.decoded is not None)
    at = manifest.image_offset + seg.offset + entry.offset
    data[at + 5] = 9  # bit width 9
    seg.crc32 = zlib.crc32(bytes(data[manifest.image_offset + seg.offset:][: seg.size]))
    start, end = metadata_span(bytes(data), MANIFEST_NAME)
    blob = manifest.encode(min_capacity=end - start - 16)
    assert len(blob) == end - start and find_metadata(bytes(data), MANIFEST_NAME) is not None
    data[start:end] = blob
    Manifest.decode(blob)
    path = tmp_path / "c.tflite"
    path.write_bytes(bytes(data))
    with pytest.raises(SegmentIntegrityError, match=f"segment {seg.id} entry for buffer {entry.buffer}.*bit width 9"):
        Model.from_bytes(bytes(data), source=str(path))
    with pytest.raises(SegmentIntegrityError, match=f"segment {seg.id} entry .*bit width 9"):
        _stage_outputs(path, result.original, n=1)


def test_cli_convert_compress(tmp_path, capsys):
    from tflm_swap.cli import main

    src = tmp_path / "m.tflite"
    src.write_bytes(build_model([1, 8, 8, 4], [conv(32), fc(40)], dtype="int8", seed=2))
    out = tmp_path / "m.swap.tflite"
    assert main(["convert", str(src), "-o", str(out), "--compress", "3", "--per-tensor"]) == 0
    manifest = tflm_swap.verify(out.read_bytes())
    assert manifest.version == 3 and all(s.size < s.decoded_size for s in manifest.segments)
    decoded = Model.from_bytes(out.read_bytes())
    for b in filter_channels(decoded):
        assert len(np.unique(np.frombuffer(decoded.buffers[b], np.int8))) <= 8  # per tensor: 8 values in all
    assert main(["convert", str(src), "-o", str(out), "--compress", "8"]) == 2
    assert "invalid choice: 8" in capsys.readouterr().err
    calibration = tmp_path / "x.npy"
    np.save(calibration, np.random.default_rng(0).integers(-128, 128, (20, 8, 8, 4)).astype(np.int8))
    corrected = tmp_path / "c.swap.tflite"
    assert main(["convert", str(src), "-o", str(corrected), "--compress", "3", "--per-tensor",
                 "--calibration", str(calibration)]) == 0
    a, b = Model.from_bytes(out.read_bytes()), Model.from_bytes(corrected.read_bytes())
    changed = {i for i, (x, y) in enumerate(zip(a.buffers, b.buffers)) if x != y}
    assert changed and not changed & set(filter_channels(a))  # biases corrected, filters as without
    assert main(["convert", str(src), "-o", str(corrected), "--calibration", str(calibration)]) == 2
    assert "--calibration goes with --compress" in capsys.readouterr().err


@pytest.mark.parametrize("seed", range(4))
def test_clustering_is_optimal_for_integer_centres(seed):
    """The least squared error over every set of 3 integer centres (exhaustive) is what
    `cluster_values` reaches."""
    import itertools

    from tflm_swap.converters.compress import cluster_values

    rng = np.random.default_rng(seed)
    row = np.rint(rng.normal(0, 3, 60)).clip(-7, 7).astype(np.int8)
    error = float(np.sum((cluster_values(row, 3).astype(np.int64) - row) ** 2))
    best = min(float(np.sum(np.min((row[:, None].astype(np.int64) - np.array(c)[None, :]) ** 2, axis=1)))
               for c in itertools.combinations(range(-7, 8), 3))
    assert len(np.unique(cluster_values(row, 3))) <= 3 and error == best


@pytest.mark.parametrize("layer,shape", [(fc(16), [1, 64]), (conv(8, padding="VALID"), [1, 6, 6, 12]),
                                         (depthwise(2, padding="VALID"), [1, 6, 6, 12])])
def test_bias_correction_keeps_mean_outputs(layer, shape):
    """Calibration inputs given: each output channel's mean over them (and over positions) stays
    where the original model has it (within rounding), which clustering alone moves by LSBs."""
    from tflm_swap.interpreters import litert_interpreter, run_litert

    src = build_model(shape, [layer], dtype="int8", per_channel=False, seed=4)
    x = np.random.default_rng(0).integers(-128, 128, (100, *shape[1:])).astype(np.int8)

    def mean_outputs(model: bytes) -> np.ndarray:
        it = litert_interpreter(model, reference_kernels=True)
        it.allocate_tensors()
        outs = np.stack([run_litert(it, [s[None]])[0].astype(np.float64) for s in x])
        return outs.reshape(-1, outs.shape[-1]).mean(axis=0)  # per output channel, over samples and positions

    want = mean_outputs(src)
    plain, corrected = compress(src, 2, per_channel=False), compress(src, 2, per_channel=False, data=x)
    a, b = Model.from_bytes(plain), Model.from_bytes(corrected)
    changed = [i for i, (x_, y_) in enumerate(zip(a.buffers, b.buffers)) if x_ != y_]
    assert changed == [a.constant_buffer(a.op_inputs(0)[2])]  # the bias, nothing else
    before, after = np.abs(mean_outputs(plain) - want), np.abs(mean_outputs(corrected) - want)
    # within 0.5 LSB: the input means are per channel over all positions, a VALID convolution's
    # corner taps see fewer of them (border effects are not modelled)
    assert after.max() < 0.5 < before.max() and after.mean() < before.mean() / 3
    with pytest.raises(tflm_swap.TflmSwapError, match="calibration inputs of shape \\(3, 5\\) do not match"):
        compress(src, 2, data=np.zeros((3, 5), np.float32))
    with pytest.raises(tflm_swap.TflmSwapError, match="NaN"):
        compress(src, 2, data=np.full((2, *shape[1:]), np.nan, np.float32))
