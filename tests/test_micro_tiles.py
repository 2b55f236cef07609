"""Sub-operator weight tiles on the TFLM target: tiled kernels bit-identical to the same TFLM running
the original model, the tile table in the image, tiles chosen for a RAM budget, refusals."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from conftest import require_model
from test_micro_native import native_or_skip

from tflm_swap.cli import main as cli_main
from tflm_swap.converters.flash_image import build_image
from tflm_swap.converters.synthetic import build_model, conv, depthwise, fc
from tflm_swap.converters.tflm_tiles import TileChoice, tile_geometry
from tflm_swap.errors import BudgetError, SegmentIntegrityError, TflmSwapError, UnsupportedModelError
from tflm_swap.format.flash_image import TileEntry, parse_image, parse_tile_table
from tflm_swap.format.model import Model
from tflm_swap.interpreters import random_inputs
from tflm_swap.micro import export_project, rewrite_for_tflm, run_example, run_host_tflm
from tflm_swap.micro.host import host_ops_source, io_specs
from tflm_swap.micro.predict import predict_head, predict_tail
from tflm_swap.micro.tiles import choose_tiles, smallest_tiling, tileable_operators
from tflm_swap.micro.toolchain import build_host_runner

MLPERF = ["kws_ref_model", "vww_96_int8", "pretrainedResnet_quant", "ad01_int8"]
INFERENCES = 20


@pytest.fixture(scope="module")
def runner():
    return native_or_skip(lambda: build_host_runner(host_ops_source(["CONV_2D"])))


def _inputs(graph: bytes, n: int = INFERENCES, seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    details = [{"shape": shape, "dtype": dtype} for shape, dtype in io_specs(graph, "inputs")]
    return [random_inputs(details, rng) for _ in range(n)]


def _same(a, b) -> bool:
    return all(x.tobytes() == y.tobytes() for xs, ys in zip(a, b) for x, y in zip(xs, ys))


def _all_tiled(model: Model, tiles: int, prefetch: bool) -> dict[int, TileChoice]:
    return {op: TileChoice(min(tiles, g.max_tiles), prefetch) for op, g in tileable_operators(model, 1).items()}


def _synthetic(per_channel: bool) -> bytes:
    layers = [conv(12, activation="RELU"), depthwise(2, stride=(2, 2), activation="RELU6"),
              depthwise(1, kernel=(3, 3), dilation=(2, 2), padding="VALID"), conv(16, (1, 1), stride=(2, 2)),
              conv(10, (3, 3), padding="VALID"), fc(24, activation="RELU"), fc(10, bias=False)]
    return build_model([1, 24, 24, 6], layers, dtype="int8", per_channel=per_channel, seed=7)


@pytest.mark.native
@pytest.mark.parametrize("per_channel", [True, False])
def test_synthetic_tiled_bit_identical_blocking_and_prefetch(runner, per_channel):
    data = _synthetic(per_channel)
    model = Model.from_bytes(data)
    kinds = {g.kind for g in tileable_operators(model, 1).values()}
    assert kinds == {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
    x = _inputs(data)
    stock = run_host_tflm(data, None, x)
    untiled = rewrite_for_tflm(data, min_segment_bytes=1)
    assert _same(stock.outputs, run_host_tflm(untiled.graph, untiled.image, x).outputs)
    for tiles, prefetch in ((1, False), (3, False), (4, True), (64, True)):
        micro = rewrite_for_tflm(data, min_segment_bytes=1, tiles=_all_tiled(model, tiles, prefetch))
        ours = run_host_tflm(micro.graph, micro.image, x, deferred=prefetch)
        assert _same(stock.outputs, ours.outputs), (tiles, prefetch)
        assert ours.flash_bytes == INFERENCES * micro.flash_bytes_per_inference
        assert ours.arena_head == predict_head(micro)
        assert 0 <= predict_tail(micro, stock.arena_tail) - ours.arena_tail <= 64 * len(micro.tiled)
    # Tiled operators between prefetched load operators: no START is in flight across a tiled kernel.
    mixed = rewrite_for_tflm(data, min_segment_bytes=1, prefetch=True,
                             tiles={0: TileChoice(3, True), 3: TileChoice(2), 5: TileChoice(4, True)})
    assert {s.kind for s in mixed.loads} >= {"TSWAP_LOAD_START", "TSWAP_LOAD_WAIT"}
    ours = run_host_tflm(mixed.graph, mixed.image, x, deferred=True)
    assert _same(stock.outputs, ours.outputs) and ours.arena_head == predict_head(mixed)


@pytest.mark.native
@pytest.mark.parametrize("name", MLPERF)
def test_mlperf_tiled_bit_identical_and_head_predicted(runner, name):
    data = require_model(name).read_bytes()
    model = Model.from_bytes(data)
    x = _inputs(data)
    stock = run_host_tflm(data, None, x)
    for tiles, prefetch in ((4, False), (7, True)):
        micro = rewrite_for_tflm(data, prefetch=prefetch, tiles=_all_tiled(model, tiles, prefetch))
        assert micro.tiled and parse_tile_table(micro.image)
        ours = run_host_tflm(micro.graph, micro.image, x, deferred=prefetch)
        assert _same(stock.outputs, ours.outputs), (name, tiles, prefetch)
        assert ours.arena_head == predict_head(micro)
        assert ours.flash_bytes == INFERENCES * micro.flash_bytes_per_inference


@pytest.mark.native
@pytest.mark.parametrize("name", MLPERF)
def test_smallest_budget_runs_bit_identical_within_its_prediction(runner, name):
    data = require_model(name).read_bytes()
    model = Model.from_bytes(data)
    x = _inputs(data)
    stock = run_host_tflm(data, None, x)
    plan = smallest_tiling(model, stock.arena_tail, offline_plan=True)
    ours = run_host_tflm(plan.micro.graph, plan.micro.image, x)
    assert _same(stock.outputs, ours.outputs)
    assert ours.arena_head == plan.head == plan.bound  # the planner's prediction and its lower bound, to the byte
    assert ours.arena_total <= plan.arena
    largest = max(g.tile_bytes(g.channels) for g in tileable_operators(model).values())
    assert max(s for t in plan.micro.tiled for s in t.scratch) < largest


@pytest.mark.native
def test_budget_below_the_largest_layer_runs_inside_it(runner, tmp_path):
    data = require_model("ad01_int8").read_bytes()
    largest = max(g.tile_bytes(g.channels) for g in tileable_operators(Model.from_bytes(data)).values())
    budget = 16000
    assert largest > 5 * budget  # the 640x128 dense layers: 84,480 bytes of weights each
    project = export_project(data, tmp_path / "p", prefix="ad", ram_budget=f"{budget}")
    assert project.arena_measured and project.arena_size <= budget
    x = _inputs(data, 3)
    ours = run_host_tflm(project.micro.graph, project.micro.image, x)
    assert _same(run_host_tflm(data, None, x).outputs, ours.outputs)
    assert ours.arena_total <= budget
    example = native_or_skip(lambda: run_example(project, x[0][0]))  # the generated project, built and run
    assert example.outputs[0].tobytes() == ours.outputs[0][0].tobytes()
    assert example.flash_bytes_read == project.flash_bytes_per_inference
    assert example.arena_used_bytes <= budget
    assert cli_main(["convert", str(require_model("ad01_int8")), "--target", "tflm", "-o", str(tmp_path / "cli"),
                     "--prefix", "ad", "--ram-budget", str(budget)]) == 0
    assert (tmp_path / "cli" / "ad_image.bin").read_bytes() == project.micro.image


@pytest.mark.native
def test_budget_too_small_names_the_minimum_and_writes_nothing(runner, tmp_path, capsys):
    path = require_model("kws_ref_model")
    out = tmp_path / "out"
    with pytest.raises(BudgetError, match=r"smallest TFLM arena .* \d+ bytes predicted .* set by operator \d+"):
        export_project(path, out, ram_budget="8KiB")
    assert not out.exists()
    assert cli_main(["plan", str(path), "--target", "tflm", "--ram-budget", "8KiB"]) == 1
    assert "does not fit" in capsys.readouterr().out
    assert cli_main(["plan", str(path), "--target", "tflm", "--ram-budget", "27000"]) == 0
    printed = capsys.readouterr().out
    assert "fits in 27000 bytes" in printed and "tiles of" in printed
    assert not out.exists()


@pytest.mark.native
def test_choose_tiles_splits_only_as_needed(runner):
    model = Model.from_bytes(require_model("kws_ref_model").read_bytes())
    from tflm_swap.micro.tiles import stock_tail

    tail = stock_tail(model)
    roomy = choose_tiles(model, 10**6, tail)
    assert roomy.tiles == {} and not roomy.micro.tiled  # fits whole: load operators, the stock kernels
    tight = choose_tiles(model, 27000, tail)
    assert tight.tiles and tight.arena <= 27000
    assert tight.reads > roomy.reads
    smallest = smallest_tiling(model, tail)
    assert smallest.arena < tight.arena
    with pytest.raises(BudgetError, match=f"{smallest.arena} bytes predicted"):
        choose_tiles(model, smallest.arena - 1, tail)


def test_bad_tile_options_fail_before_writing(tmp_path):
    data = require_model("kws_ref_model").read_bytes()
    out = tmp_path / "out"
    softmax = len(Model.from_bytes(data).operators) - 1
    for kwargs, message in (({"tiles": {2: 0}}, "tile count 0"),
                            ({"tiles": {99: 2}}, "no operator 99"),
                            ({"tiles": {softmax: 2}}, "can be tiled"),
                            ({"tiles": {2: 65}}, "between 1 and 64"),
                            ({"ram_budget": 0}, "must be a positive"),
                            ({"ram_budget": "lots"}, "cannot read size"),
                            ({"ram_budget": 30000, "tiles": {2: 2}}, "not both")):
        with pytest.raises(TflmSwapError, match=message):
            export_project(data, out, arena_size=50000, **kwargs)
    assert not out.exists()
    assert cli_main(["convert", str(require_model("kws_ref_model")), "--target", "tflm", "-o", str(out),
                     "--tile", "2=0"]) == 2
    assert cli_main(["convert", str(require_model("kws_ref_model")), "--target", "tflm", "-o", str(out),
                     "--tile", "two"]) == 2
    assert not out.exists()


def test_only_int8_conv_depthwise_fc_with_constant_weights_tile():
    floats = Model.from_bytes(build_model([1, 8, 8, 4], [conv(8)], dtype="float32"))
    with pytest.raises(UnsupportedModelError, match="int8"):
        tile_geometry(floats, 0)
    g = tile_geometry(Model.from_bytes(build_model([1, 8, 8, 4], [depthwise(3)], dtype="int8")), 0)
    assert (g.channels, g.granularity, g.max_tiles) == (12, 3, 4)
    assert [n for _, n in g.ranges(4)] == [3, 3, 3, 3] and g.tile_channels(4) == 3
    assert [n for _, n in g.ranges(3)] == [6, 6]  # 4 channel groups in 3 tiles: 2 groups each, 2 tiles
    assert [n for _, n in g.ranges(2)] == [6, 6]


def test_tile_payloads_hold_each_channels_filter_and_bias():
    data = _synthetic(True)
    model = Model.from_bytes(data)
    micro = rewrite_for_tflm(data, min_segment_bytes=1, tiles={1: TileChoice(2), 5: TileChoice(5)})
    entries = parse_tile_table(micro.image)
    segments = parse_image(micro.image)
    assert [(e.tiles, e.channels, e.tile_channels) for e in entries] == [(2, 24, 12), (5, 24, 5)]
    dw = tile_geometry(model, 1)
    filt = np.frombuffer(model.buffers[model.tensors[dw.filter].buffer], np.int8).reshape(-1, 24)
    bias = np.frombuffer(model.buffers[model.tensors[dw.bias].buffer], "<i4")
    s = segments[entries[0].first_segment + 1]
    tile = micro.image[s.offset : s.offset + s.size]
    assert tile[: filt.shape[0] * 12] == filt[:, 12:].tobytes()
    assert tile[-48:] == bias[12:].tobytes()
    graph = Model.from_bytes(micro.graph)
    assert graph.opcode_name(micro.tiled[0].op) == "CUSTOM:TSWAP_DEPTHWISE_CONV_2D"
    assert list(graph.tensors[dw.filter].shape) == [0] and graph.constant_buffer(dw.filter) is None
    assert micro.flash_bytes_per_inference == sum(s.size for s in segments)


def test_image_versions_and_tile_table_checks():
    plain, _ = build_image([b"abc", b"defgh"])
    assert struct.unpack_from("<I", plain, 4)[0] == 1 and parse_tile_table(plain) == []
    tiled, segments = build_image([b"abc", b"defgh"], tiles=[TileEntry(0, 2, 3, 2)])
    assert struct.unpack_from("<I", tiled, 4)[0] == 2 and len(segments) == 2
    assert parse_tile_table(tiled) == [TileEntry(0, 2, 3, 2)]
    for entry in (TileEntry(1, 2, 3, 2), TileEntry(0, 2, 5, 2), TileEntry(0, 0, 0, 1), TileEntry(0, 2, 2, 2)):
        bad, _ = build_image([b"abc", b"defgh"], tiles=[entry])
        with pytest.raises(SegmentIntegrityError, match="tile-table entry 0"):
            parse_tile_table(bad)
    flipped = bytearray(tiled)
    flipped[48 + 32 + 4] ^= 1  # tile count of entry 0: the table CRC catches it
    with pytest.raises(SegmentIntegrityError, match="table CRC"):
        parse_image(bytes(flipped))


@pytest.mark.native
def test_tile_table_that_does_not_match_the_graph_is_refused_in_prepare(runner):
    data = _synthetic(True)
    x = _inputs(data, 1)
    micro = rewrite_for_tflm(data, min_segment_bytes=1, tiles={0: TileChoice(3), 5: TileChoice(2)})
    other = rewrite_for_tflm(data, min_segment_bytes=1, tiles={0: TileChoice(4), 5: TileChoice(2)})
    # The tile count lives in the image: another consistent tiling of the same operators runs the same.
    assert _same(run_host_tflm(micro.graph, other.image, x).outputs, run_host_tflm(data, None, x).outputs)
    segments, entries = parse_image(micro.image), parse_tile_table(micro.image)
    payloads = [micro.image[s.offset : s.offset + s.size] for s in segments]
    forged = [TileEntry(entries[1].first_segment, 2, 12, 6), entries[1]]  # op 0's entry names op 5's tiles
    with pytest.raises(TflmSwapError, match="segment .* holds .* bytes but tile 0 needs"):
        run_host_tflm(micro.graph, build_image(payloads, tiles=forged)[0], x)
    swapped = rewrite_for_tflm(data, min_segment_bytes=1, tiles={5: TileChoice(2), 6: TileChoice(2)})
    with pytest.raises(TflmSwapError, match="tile entry 0 covers 24 channels but the operator has 12"):
        run_host_tflm(micro.graph, swapped.image, x)
    untiled = rewrite_for_tflm(data, min_segment_bytes=1)
    with pytest.raises(TflmSwapError, match="tile entry 0: tile-table entry out of range"):
        run_host_tflm(micro.graph, untiled.image, x)
    graph = Model.from_bytes(micro.graph)
    options = graph.operators[micro.tiled[0].op].customOptions
    graph.operators[micro.tiled[0].op].customOptions = list(bytes(options)[:-4])
    with pytest.raises(TflmSwapError, match="custom options are malformed"):
        run_host_tflm(bytes(graph.pack()), micro.image, x)
    corrupt = bytearray(micro.image)
    seg = parse_image(micro.image)[micro.tiled[1].first_segment + 1]
    corrupt[seg.offset + 3] ^= 0x40
    crc = rewrite_for_tflm(data, min_segment_bytes=1, verify_crc=True,
                           tiles={0: TileChoice(3), 5: TileChoice(2, True)})
    assert crc.image == micro.image
    with pytest.raises(TflmSwapError, match="loading tile 1 .* CRC mismatch"):
        run_host_tflm(crc.graph, bytes(corrupt), x, deferred=True)


def _no_overlap(blocks, offsets: dict[int, int]) -> None:
    from tflm_swap.format.segments import align

    for i, a in offsets.items():
        for j, b in offsets.items():
            if i < j and blocks[i].first <= blocks[j].last and blocks[j].first <= blocks[i].last:
                assert a + align(blocks[i].size, 16) <= b or b + align(blocks[j].size, 16) <= a, (i, j)


@pytest.mark.parametrize("name", MLPERF)
def test_packed_arena_is_valid_and_no_worse_than_greedy(name):
    from tflm_swap.planner import activation_blocks, greedy_arena, live_bytes, packed_arena

    model = Model.from_bytes(require_model(name).read_bytes())
    blocks = activation_blocks(model)
    greedy = greedy_arena(blocks)[0]
    size, offsets = packed_arena(blocks, seconds=0.5)
    _no_overlap(blocks, offsets)
    assert max(live_bytes(blocks, len(model.operators))) <= size <= greedy
    assert greedy_arena(blocks, fixed=offsets) == (size, [offsets[i] for i in range(len(blocks))])
    if name == "vww_96_int8":
        assert (greedy, size) == (73728, 55296)  # TFLM's greedy layout wastes 18,432 bytes there


def test_greedy_arena_places_online_blocks_around_fixed_ones():
    from tflm_swap.planner import Block, greedy_arena

    blocks = [Block("a", 32, 0, 1, "activation"), Block("b", 16, 1, 2, "activation"),
              Block("scratch", 48, 1, 1, "scratch")]
    size, offsets = greedy_arena(blocks, fixed={0: 64, 1: 0})
    assert offsets == [64, 0, 16] and size == 96


@pytest.mark.native
@pytest.mark.parametrize("name", MLPERF)
def test_offline_plan_bit_identical_and_predicted(runner, name):
    data = require_model(name).read_bytes()
    model = Model.from_bytes(data)
    x = _inputs(data)
    stock = run_host_tflm(data, None, x)
    for prefetch, tiles in ((False, {}), (True, _all_tiled(model, 3, True))):
        micro = rewrite_for_tflm(data, prefetch=prefetch, tiles=tiles, offline_plan=True)
        assert Model.from_bytes(micro.graph).metadata("OfflineMemoryAllocation") is not None
        greedy = rewrite_for_tflm(data, prefetch=prefetch, tiles=tiles)
        ours = run_host_tflm(micro.graph, micro.image, x, deferred=prefetch)
        assert _same(stock.outputs, ours.outputs)
        assert ours.arena_head == predict_head(micro) <= predict_head(greedy)
    with pytest.raises(UnsupportedModelError, match="offline memory plan"):
        rewrite_for_tflm(micro.graph)
