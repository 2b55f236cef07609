"""Compressed (palette-encoded) segments on a real TFLite Micro (xmos-ai-tools' host TFLM): TSWAP_LOAD
decodes them into the staged tensor, bit-identical to the same TFLM running the compressed model,
blocking, prefetched (START reads the stored bytes to the tensor's end, WAIT decodes in place) and
next to tiled operators, whose tiles are encoded too and decoded tile by tile (blocking and
prefetched)."""

from __future__ import annotations

import pytest
from test_compress import compressed_mlperf
from test_micro import _inputs, _same, runner  # noqa: F401 - the fixture
from test_micro_native import native_or_skip  # noqa: F401

from tflm_swap.converters.tflm import FLAG_ENCODED
from tflm_swap.converters.tflm_tiles import TileChoice
from tflm_swap.errors import TflmSwapError
from tflm_swap.format.model import Model
from tflm_swap.micro import LOAD_OP, LOAD_START_OP, LOAD_WAIT_OP, rewrite_for_tflm, run_host_tflm
from tflm_swap.micro.predict import predict_head, predict_tail
from tflm_swap.micro.tiles import tileable_operators

pytestmark = pytest.mark.native

MLPERF = ["ad01_int8", "kws_ref_model", "pretrainedResnet_quant", "vww_96_int8"]


def _encoded_loads(micro) -> list:
    graph = Model.from_bytes(micro.graph)
    flags = [int.from_bytes(bytes(graph.operators[s.op].customOptions)[4:8], "little") for s in micro.loads]
    return [s for s, f in zip(micro.loads, flags) if f & FLAG_ENCODED]


@pytest.mark.parametrize("name", MLPERF)
def test_host_tflm_decodes_bit_identical(runner, name):  # noqa: F811
    result = compressed_mlperf(name)
    reference = result.original  # the compressed model, plain
    x = _inputs(reference, 3)
    stock = run_host_tflm(reference, None, x)
    blocking = rewrite_for_tflm(result.model, verify_crc=True)
    encoded = _encoded_loads(blocking)
    assert encoded and all(s.kind == LOAD_OP for s in encoded)
    assert blocking.flash_bytes_per_inference < rewrite_for_tflm(reference).flash_bytes_per_inference
    ours = run_host_tflm(blocking.graph, blocking.image, x)
    assert _same(stock.outputs, ours.outputs), "decoded model differs from the compressed model on TFLM"
    assert ours.flash_bytes == 3 * blocking.flash_bytes_per_inference
    prefetch = rewrite_for_tflm(result.model, prefetch=True, verify_crc=True)
    assert {s.kind for s in _encoded_loads(prefetch)} >= {LOAD_START_OP, LOAD_WAIT_OP}  # decoded in place
    ran = run_host_tflm(prefetch.graph, prefetch.image, x, deferred=True)
    assert _same(stock.outputs, ran.outputs), "prefetched encoded loads differ from the compressed model"
    assert ran.flash_bytes == 3 * prefetch.flash_bytes_per_inference == ours.flash_bytes
    assert 0 <= predict_tail(prefetch, stock.arena_tail) - ran.arena_tail <= 64 * len(prefetch.loads)
    tileable = tileable_operators(Model.from_bytes(reference))
    op = max(tileable, key=lambda k: tileable[k].channels)  # one tiled operator, the rest loaded
    raw_tiles = rewrite_for_tflm(result.model, tiles={op: TileChoice(2, True)}, encode=False)
    for choice, verify in [(TileChoice(2, True), False), (TileChoice(3, False), True)]:
        tiled = rewrite_for_tflm(result.model, tiles={op: choice}, verify_crc=verify)
        assert _encoded_loads(tiled) or name == "ad01_int8"
        assert _tiles_encoded(tiled), "the tiled operator's tiles should be palette-encoded"
        ran = run_host_tflm(tiled.graph, tiled.image, x, deferred=choice.prefetch)
        assert _same(stock.outputs, ran.outputs), f"encoded tiles {choice} differ from the compressed model"
        assert ran.arena_head == predict_head(tiled)  # tile buffers + slack, then the value tables
        assert 0 <= predict_tail(tiled, stock.arena_tail) - ran.arena_tail <= 64 * (len(tiled.loads) + 1)
    assert tiled.flash_bytes_per_inference < raw_tiles.flash_bytes_per_inference


def _tiles_encoded(micro) -> bool:
    graph = Model.from_bytes(micro.graph)
    return all(int.from_bytes(bytes(graph.operators[t.op].customOptions)[4:8], "little") & FLAG_ENCODED
               for t in micro.tiled)


def test_corrupt_encoded_segment_fails_in_prepare_or_eval(runner):  # noqa: F811
    import zlib

    from tflm_swap.format.flash_image import parse_image

    result = compressed_mlperf("kws_ref_model")
    micro = rewrite_for_tflm(result.model)
    x = _inputs(result.original, 1)
    seg = micro.segments[_encoded_loads(micro)[0].segment]
    # bit width 9, table length 0, reserved word: each with valid CRCs, each refused in Prepare by name
    # (an index outside its table, found while decoding in Eval: the C unit tests)
    for offset, value in [(5, 9), (6, 0), (20, 1)]:
        bad = bytearray(micro.image)
        bad[seg.offset + offset] = value
        _reseal(bad, seg, zlib)
        parse_image(bytes(bad))
        with pytest.raises(TflmSwapError, match=f"segment {seg.id} \\(encoded.*corrupt palette-encoded segment"):
            run_host_tflm(micro.graph, bytes(bad), x)


def test_corrupt_encoded_tile_fails_clearly(runner):  # noqa: F811
    """A tile whose header is corrupt (CRCs valid) is refused in Prepare naming the tile; a tile
    whose stored index bytes changed is caught by the CRC check before it is decoded."""
    from tflm_swap.converters.flash_image import build_image
    from tflm_swap.format.flash_image import parse_tile_table

    result = compressed_mlperf("kws_ref_model")
    tileable = tileable_operators(Model.from_bytes(result.original))
    op = max(tileable, key=lambda k: tileable[k].channels)
    micro = rewrite_for_tflm(result.model, tiles={op: TileChoice(2, True)}, verify_crc=True)
    x = _inputs(result.original, 1)
    seg = micro.segments[micro.tiled[0].first_segment + 1]
    payloads = [bytearray(micro.image[s.offset : s.offset + s.size]) for s in micro.segments]
    payloads[seg.id][5] = 9  # bit width 9
    bad, _ = build_image([bytes(p) for p in payloads], tiles=parse_tile_table(micro.image))
    with pytest.raises(TflmSwapError, match=f"tile 1 \\(segment {seg.id}, encoded.*corrupt palette-encoded"):
        run_host_tflm(micro.graph, bytes(bad), x)
    bad = bytearray(micro.image)
    bad[seg.offset + seg.size - 4 * 32 - 1] ^= 0x11  # an index byte (before the bias), CRC left stale
    with pytest.raises(TflmSwapError, match="CRC"):
        run_host_tflm(micro.graph, bytes(bad), x, deferred=True)


def _reseal(image: bytearray, seg, zlib) -> None:
    """Write a segment's CRC32 (and the table and header CRCs) for its edited bytes."""
    import struct

    from tflm_swap.format.flash_image import HEADER_BYTES

    table_at = HEADER_BYTES + 16 * seg.id
    struct.pack_into("<I", image, table_at + 8, zlib.crc32(bytes(image[seg.offset : seg.offset + seg.size])))
    n = struct.unpack_from("<I", image, 12)[0]
    struct.pack_into("<I", image, 24, zlib.crc32(bytes(image[HEADER_BYTES : HEADER_BYTES + 16 * n])))
    struct.pack_into("<I", image, 28, zlib.crc32(bytes(image[:28])))
