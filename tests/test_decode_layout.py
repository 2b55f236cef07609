"""Upstream TFLite Micro's compressed layout (TFLM_DECODE, LUT): models compressed by upstream's own
tool and our `to_decode_layout` output run on TFLM built from the pinned sources (with its DECODE
kernel) bit-identical to the plain compressed model; `expand` reads them back; an upstream model
converted by us streams palette-encoded segments through our load operators, bit-identical too."""

from __future__ import annotations

import functools

import pytest
from conftest import require_model
from test_compress import compressed_mlperf
from test_compress_micro import _encoded_loads
from test_micro import _inputs, _same
from test_micro_native import native_or_skip

import tflm_swap
from tflm_swap.cli import main
from tflm_swap.converters.decode_layout import DCM_SIZE, expand, has_decode, to_decode_layout, upstream_compress
from tflm_swap.errors import MalformedModelError, UnsupportedModelError
from tflm_swap.format.model import Model
from tflm_swap.micro import rewrite_for_tflm, run_host_tflm

MLPERF = ["ad01_int8", "kws_ref_model", "pretrainedResnet_quant", "vww_96_int8"]


@functools.cache
def upstream_mlperf(name: str) -> bytes:
    try:
        return upstream_compress(compressed_mlperf(name).original)
    except ImportError as exc:
        pytest.skip(f"upstream TFLM's compression tool (pip tflite_micro) is missing: {exc}")


def _constants_by_name(model: Model) -> dict[str, bytes]:
    return {model.tensor_name(t): model.buffers[model.tensors[t].buffer] for t in range(len(model.tensors))
            if model.constant_buffer(t) is not None}


@pytest.mark.parametrize("name", MLPERF)
def test_expand_reads_upstream_and_round_trips_ours(name):
    plain = Model.from_bytes(compressed_mlperf(name).original)
    upstream = Model.from_bytes(upstream_mlperf(name))
    assert has_decode(upstream)
    assert _constants_by_name(expand(upstream)) == _constants_by_name(plain)
    ours = Model.from_bytes(to_decode_layout(plain))
    assert has_decode(ours) and len(ours.raw) < len(plain.raw)
    back = expand(ours)
    assert back.buffers == plain.buffers and len(back.tensors) == len(plain.tensors)
    assert [back.opcode_name(k) for k in range(len(back.operators))] == \
        [plain.opcode_name(k) for k in range(len(plain.operators))]


@pytest.mark.native
@pytest.mark.parametrize("name", MLPERF)
def test_pinned_tflm_decode_bit_identical(name):
    plain = compressed_mlperf(name).original
    x = _inputs(plain, 2)
    reference = native_or_skip(lambda: run_host_tflm(plain, None, x, pinned=True)).outputs
    # (a) upstream's tool, (b) our DECODE layout: TFLM's own DECODE kernel decodes them
    for layout in (upstream_mlperf(name), to_decode_layout(plain)):
        assert _same(reference, run_host_tflm(layout, None, x).outputs)
    # (c) the upstream model converted by us: filters stream palette-encoded through TSWAP_LOAD
    converted = tflm_swap.convert(upstream_mlperf(name))
    assert converted.manifest.version == 3
    micro = rewrite_for_tflm(converted.model)
    assert _encoded_loads(micro)
    assert _same(reference, run_host_tflm(micro.graph, micro.image, x, pinned=True).outputs)


@pytest.mark.native
def test_shared_tables_on_per_channel_filters_run_on_pinned_tflm():
    """Per-tensor clustering: one table for a filter quantized per channel, stride 0 (the pinned kernel
    steps one stride per quantization channel), bit-identical on TFLM's DECODE."""
    plain = tflm_swap.compress(require_model("kws_ref_model").read_bytes(), 4, per_channel=False)
    layout = Model.from_bytes(to_decode_layout(plain))
    strides = {layout.buffers[layout.tensors[layout.op_inputs(k)[1]].buffer][6] for k in range(len(layout.operators))
               if layout.opcode_name(k) == "CUSTOM:TFLM_DECODE"}
    assert 0 in strides
    x = _inputs(plain, 2)
    reference = native_or_skip(lambda: run_host_tflm(plain, None, x, pinned=True)).outputs
    assert _same(reference, run_host_tflm(bytes(layout.raw), None, x).outputs)


def test_convert_keeps_upstream_tables_and_cli_layout(tmp_path, capsys):
    name = "kws_ref_model"
    upstream = upstream_mlperf(name)
    converted = tflm_swap.convert(upstream, compress_bits=4)
    expanded = expand(Model.from_bytes(upstream))
    assert expanded.transcoded and converted.manifest.version == 3
    assert _constants_by_name(converted.model) == _constants_by_name(expanded)
    # the entries stored are upstream's tables and bitstring, byte for byte
    kept = [blob for b, blob in expanded.transcoded.items() if len(blob) < len(expanded.buffers[b])]
    assert kept and all(blob in converted.data for blob in kept)
    src = tmp_path / "c.tflite"
    src.write_bytes(compressed_mlperf(name).original)
    out = tmp_path / "decode.tflite"
    assert main(["convert", str(src), "-o", str(out), "--compress", "4", "--layout", "decode"]) == 0
    assert expand(Model.load(out)).buffers == Model.load(src).buffers
    (tmp_path / "up.tflite").write_bytes(upstream)
    assert main(["convert", str(tmp_path / "up.tflite"), "-o", str(tmp_path / "seg.tflite")]) == 0
    assert main(["inspect", str(tmp_path / "up.tflite"), "--no-latency", "--plot", str(tmp_path / "m.png")]) == 0
    assert main(["convert", str(src), "-o", str(tmp_path / "x.tflite"), "--layout", "decode"]) != 0
    assert "--layout decode needs --compress BITS" in capsys.readouterr().err


def _corrupt(edit) -> bytes:
    """KWS in upstream's layout with `edit(model, decode_op, encoded, ancillary bytearray)` applied to
    its first DECODE operator."""
    model = Model.from_bytes(upstream_mlperf("kws_ref_model"))
    k = next(k for k in range(len(model.operators)) if model.opcode_name(k) == "CUSTOM:TFLM_DECODE")
    enc, anc = model.op_inputs(k)[:2]
    data = bytearray(model.buffers[model.tensors[anc].buffer])
    edit(model, enc, data)
    model.buffers[model.tensors[anc].buffer] = bytes(data)
    return bytes(model.pack())


def _set(offset: int, value: int):
    def edit(model, enc, data):
        data[offset] = value
    return edit


def _truncate_encoded(model, enc, data):
    b = model.tensors[enc].buffer
    model.buffers[b] = model.buffers[b][:-3]


def _index_past_table(model, enc, data):
    data[6] = 4  # 4-entry tables, the 4-bit indices reach 15; shrink the tables to match
    del data[DCM_SIZE + 4 * 64:]


@pytest.mark.parametrize("edit, error, message", [
    (_set(0, 1), UnsupportedModelError, "decode type 1 \\(HUFFMAN\\)"),
    (_set(1, 2), MalformedModelError, "DECODE header version 2"),
    (_set(4, 9), MalformedModelError, "LUT version 9"),
    (_set(5, 0x00), MalformedModelError, "bit width 0"),
    (_set(5, 0x24), UnsupportedModelError, "table axis 2"),
    (_set(5, 0x74), MalformedModelError, "axis 7 is outside"),
    (_set(6, 200), MalformedModelError, "stride 200"),
    (_set(6, 15), MalformedModelError, "bytes of value tables"),
    (_truncate_encoded, MalformedModelError, "truncated"),
    (_index_past_table, MalformedModelError, "index \\d+ of element \\d+ is outside its 4-entry table"),
])
def test_corrupt_upstream_file_is_refused_by_name(tmp_path, edit, error, message):
    data = _corrupt(edit)
    with pytest.raises(error, match=f"bad.tflite: operator 0 \\(TFLM_DECODE\\), decoded tensor .*{message}"):
        expand(Model.from_bytes(data, source=str(tmp_path / "bad.tflite")))
    (tmp_path / "bad.tflite").write_bytes(data)
    assert main(["convert", str(tmp_path / "bad.tflite"), "-o", str(tmp_path / "out.tflite")]) != 0
    assert not (tmp_path / "out.tflite").exists()


def test_pinned_archive_format_and_direct_reads():
    """Files of the pinned archive's own tool (no axis bits: the tables follow the quantization, as
    its kernel reads them) expand alike; an operator reading an encoded tensor itself is refused."""
    upstream = Model.from_bytes(upstream_mlperf("vww_96_int8"))
    decodes = [k for k in range(len(upstream.operators)) if upstream.opcode_name(k) == "CUSTOM:TFLM_DECODE"]
    for k in decodes:
        anc = upstream.tensors[upstream.op_inputs(k)[1]].buffer
        data = bytearray(upstream.buffers[anc])
        data[5] &= 0x07
        upstream.buffers[anc] = bytes(data)
    legacy = Model.from_bytes(bytes(upstream.pack()))
    assert _constants_by_name(expand(legacy)) == _constants_by_name(Model.from_bytes(compressed_mlperf(
        "vww_96_int8").original))
    k = decodes[0]
    consumer = legacy.operators[k + 1]
    consumer.inputs = [legacy.op_inputs(k)[0] if t == legacy.op_outputs(k)[0] else t for t in consumer.inputs]
    with pytest.raises(MalformedModelError, match=f"operator {k + 1} .* reads encoded tensor"):
        expand(Model.from_bytes(bytes(legacy.pack()), source="direct.tflite"))
