"""Fully-connected tiling: outputs bit-identical to the original model with every kernel family."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from conftest import require_model
from helpers import assert_bit_identical, outputs_on_random_inputs, reads_only

import tflm_swap
from tflm_swap.cli import main
from tflm_swap.converters.tiling import tile_fully_connected, verify_tiling
from tflm_swap.errors import TflmSwapError, UnsupportedModelError
from tflm_swap.format.model import Model
from tflm_swap.interpreters import random_inputs, run_litert, tflm_interpreter
from tflm_swap.planner import plan_model
from tflm_swap.runtime import SwapInterpreter, min_ram_budget

KERNELS = {"xnnpack": {}, "builtin": {"default_delegates": False}, "reference": {"reference_kernels": True}}


def _outputs(data: bytes, kernels: dict, n: int = 8) -> list[list[np.ndarray]]:
    return outputs_on_random_inputs(data, n, seed=1, **kernels)


def _assert_same_on_every_kernel(original: bytes, tiled: bytes) -> None:
    for kernels in KERNELS.values():
        assert_bit_identical(original, tiled, n=8, **kernels)


def _fc_ops(model: Model) -> int:
    return sum(model.opcode_name(i) == "FULLY_CONNECTED" for i in range(len(model.operators)))


def _dense_model(quantization: str, rank3: bool = False):
    keras = pytest.importorskip("keras", reason="builds its dense models with Keras (pip install .[convert])")

    rng = np.random.default_rng(0)
    shape = (6, 40) if rank3 else (40,)
    model = keras.Sequential([
        keras.Input(shape),
        keras.layers.Dense(300, activation="relu"),
        keras.layers.Dense(130, activation="tanh", use_bias=False),
        keras.layers.Dense(10),
    ])
    data = rng.standard_normal((64, *shape)).astype(np.float32)
    return tflm_swap.to_tflite(model, quantization=quantization,
                               representative_data=data if quantization == "int8" else None)


@pytest.mark.parametrize("quantization", ["float32", "dynamic", "int8"])
def test_keras_dense_layers_tile_bit_identical(quantization):
    original = _dense_model(quantization)
    model = Model.from_bytes(original)
    tiled, layers = tile_fully_connected(model, 4000)
    expected = {}  # operator: tiles, for the layers above 4000 bytes
    for i in range(len(model.operators)):
        if model.opcode_name(i) != "FULLY_CONNECTED":
            continue
        weights = model.tensors[model.op_inputs(i)[1]]
        size, rows = model.buffer_size(weights.buffer), int(weights.shape[0])
        if size > 4000 and rows >= 16:  # multiples of 8 rows, at least 8; a remainder under 8 joins the last
            per_tile = max(8, 4000 // (size // rows) // 8 * 8)
            expected[i] = rows // per_tile + (rows % per_tile >= 8)
    assert {layer.op: layer.tiles for layer in layers} == expected and expected
    assert _fc_ops(tiled) == _fc_ops(model) - len(layers) + sum(expected.values())
    for i in range(len(tiled.operators)):
        if tiled.opcode_name(i) == "FULLY_CONNECTED":
            weights = tiled.tensors[tiled.op_inputs(i)[1]]
            row_bytes = tiled.buffer_size(weights.buffer) // int(weights.shape[0])
            assert int(weights.shape[0]) >= 8
            assert tiled.buffer_size(weights.buffer) < max(4000, 8 * row_bytes) + 8 * row_bytes
    _assert_same_on_every_kernel(original, bytes(tiled.pack()))
    if quantization != "dynamic":  # (TFLite Micro has no hybrid fully-connected kernel)
        _assert_same_on_tflm(original, bytes(tiled.pack()))


def test_rank3_input_tiles_on_the_last_axis():
    original = _dense_model("float32", rank3=True)
    tiled, layers = tile_fully_connected(Model.from_bytes(original), 8000)
    assert layers
    _assert_same_on_every_kernel(original, bytes(tiled.pack()))


def _assert_same_on_tflm(original: bytes, tiled: bytes) -> None:
    pytest.importorskip("tflite_micro", reason="compares on the TFLite Micro interpreter (pip install tflite-micro)")
    rng = np.random.default_rng(2)
    runs = [tflm_interpreter(m) for m in (original, tiled)]
    for _ in range(5):
        x = random_inputs([runs[0].get_input_details(0)], rng)[0]
        outs = []
        for interpreter in runs:
            interpreter.set_input(x, 0)
            interpreter.invoke()
            outs.append(interpreter.get_output(0).copy())
        assert outs[0].tobytes() == outs[1].tobytes(), "TFLM: outputs differ"


def test_mlperf_toycar_tiles_bit_identical_on_litert_and_tflm():
    original = require_model("ad01_int8").read_bytes()  # (the other MLPerf Tiny dense layers have < 16 rows)
    tiled, layers = tile_fully_connected(Model.from_bytes(original), 1024)
    assert len(layers) == 8 and max(layer.tiles for layer in layers) > 10  # a tree of concatenations too
    data = bytes(tiled.pack())
    _assert_same_on_every_kernel(original, data)
    _assert_same_on_tflm(original, data)


def test_small_or_shared_layers_stay_whole():
    original = _dense_model("float32")
    model = Model.from_bytes(original)
    same, layers = tile_fully_connected(model, 10**9)
    assert same is model and layers == []
    dense = [i for i in range(len(model.operators)) if model.opcode_name(i) == "FULLY_CONNECTED"]
    model.operators[dense[2]].inputs[1] = model.op_inputs(dense[1])[1]  # a second reader: not split
    _, layers = tile_fully_connected(model, 4000)
    assert [layer.op for layer in layers] == [dense[0]]
    with pytest.raises(TflmSwapError, match="tile size"):
        tile_fully_connected(Model.from_bytes(original), 0)


def test_shared_bias_stays_whole_and_a_single_tile_is_no_split():
    keras = pytest.importorskip("keras", reason="builds its dense models with Keras (pip install .[convert])")

    model = keras.Sequential([keras.Input((64,))] + [keras.layers.Dense(64, bias_initializer="ones")
                                                     for _ in range(3)])
    original = Model.from_bytes(tflm_swap.to_tflite(model))
    dense = [i for i in range(len(original.operators)) if original.opcode_name(i) == "FULLY_CONNECTED"]
    biased = [i for i in dense if len(original.op_inputs(i)) == 3]  # (the converter drops some biases)
    assert len(biased) >= 2
    original.operators[biased[1]].inputs[2] = original.op_inputs(biased[0])[2]  # one bias, two readers
    shared = bytes(original.pack())
    tiled, layers = tile_fully_connected(Model.from_bytes(shared), 64 * 4 * 8)
    assert [layer.op for layer in layers] == [i for i in dense if i not in biased[:2]]
    _assert_same_on_every_kernel(shared, bytes(tiled.pack()))
    # 64 rows in tiles of 56: the 8-row remainder is a tile of its own
    assert {layer.tiles for layer in tile_fully_connected(Model.from_bytes(shared), 64 * 4 * 56)[1]} == {2}
    # 130 rows of 300 floats in tiles of 128 rows: the 2 left join the first, so the layer stays whole
    assert tile_fully_connected(Model.from_bytes(_dense_model("float32")), 128 * 300 * 4)[1] == []


def test_verify_tiling_refuses_a_model_that_computes_differently():
    original = _dense_model("float32")
    tiled, _ = tile_fully_connected(Model.from_bytes(original), 8000)
    verify_tiling(original, bytes(tiled.pack()))
    weights = tiled.tensors[tiled.op_inputs(0)[1]].buffer
    tiled.buffers[weights] = bytes(len(tiled.buffers[weights]))  # not the same layer any more
    with pytest.raises(UnsupportedModelError, match="outputs differ from the original"):
        verify_tiling(original, bytes(tiled.pack()))


def test_tiled_model_streams_below_the_untiled_minimum(tmp_path):
    original = _dense_model("float32")
    whole = tflm_swap.convert(original)
    result = tflm_swap.convert(original, tile_bytes=8192)
    assert result.tiled and result.manifest.source_sha256 == hashlib.sha256(original).hexdigest()
    path, whole_path = tmp_path / "tiled.swap.tflite", tmp_path / "whole.swap.tflite"
    result.save(path)
    whole.save(whole_path)
    untiled_minimum = min_ram_budget(whole_path, prefetch=1, default_delegates=False)
    minimum = min_ram_budget(path, prefetch=1, default_delegates=False)
    tiled = Model.from_bytes(result.data)
    largest_tile = max(tiled.buffer_size(tiled.tensors[tiled.op_inputs(i)[1]].buffer)
                       for i in range(len(tiled.operators)) if tiled.opcode_name(i) == "FULLY_CONNECTED")
    assert largest_tile == 10 * 300 * 4  # 130 rows of 300 floats: 15 tiles of 8 rows, then 10
    assert minimum <= 2 * largest_tile < untiled_minimum / 4
    assert_bit_identical(original, result.data)
    stock = _outputs(original, KERNELS["builtin"], n=30)
    with SwapInterpreter(path, ram_budget=minimum, default_delegates=False) as swap:
        swap.allocate_tensors()
        assert swap.stats()["streamed_bytes_per_invoke"] > 0
        rng = np.random.default_rng(1)
        for expected in stock:
            got = run_litert(swap, random_inputs(swap.get_input_details(), rng))
            assert got[0].tobytes() == expected[0].tobytes()
        assert swap.stats()["peak_weight_bytes"] <= minimum


def test_cli_convert_tile_fc(tmp_path, capsys):
    source = tmp_path / "dense.tflite"
    source.write_bytes(_dense_model("float32"))
    out = tmp_path / "dense.swap.tflite"
    assert main(["convert", str(source), "-o", str(out), "--tile-fc", "8KiB"]) == 0
    printed = capsys.readouterr().out
    assert "split into 7 fully-connected tiles" in printed and "split into 16" in printed
    assert _fc_ops(Model.load(out)) == 7 + 16 + 1
    assert_bit_identical(source.read_bytes(), out.read_bytes())
    budget = min_ram_budget(out, prefetch=1, default_delegates=False)
    assert main(["run", str(out), "--ram-budget", str(budget), "--no-xnnpack", "--original", str(source),
                 "--invokes", "5"]) == 0
    assert f"bit-identical to stock LiteRT on {source} on 5 random inputs: True" in capsys.readouterr().out


def _tiled_mlp() -> tuple[bytes, bytes]:
    """A float MLP of three 64 KiB layers and its segmented form in 8 KiB tiles (8 per layer)."""
    keras = pytest.importorskip("keras", reason="builds its dense models with Keras (pip install .[convert])")

    model = keras.Sequential([keras.Input((128,)), keras.layers.Dense(128, use_bias=False),
                              keras.layers.Dense(128, use_bias=False), keras.layers.Dense(128, use_bias=False)])
    original = tflm_swap.to_tflite(model)
    return original, tflm_swap.convert(original, tile_bytes=8192).data


def test_planner_spreads_streamed_tiles_between_resident_ones(monkeypatch):
    """Equal tiles leave free which ones stay resident: streaming tiles between resident ones hides
    their reads behind resident compute, which streaming the last ones cannot (reading a tile costs
    here twice as much as computing with it)."""
    from tflm_swap.planner import CostModel, partition_stages, simulate_invoke
    from tflm_swap.planner import stages as planner

    monkeypatch.setattr(planner, "MIN_RESIDENT_BYTES", 0)  # (8 KiB tiles: a small model for a test)
    _, data = _tiled_mlp()
    plan = plan_model(Model.from_bytes(data))
    costs = CostModel(per_mac=0.0, per_weight_byte=1e-9, per_read_byte=2e-9, per_copy_byte=0.0,
                      per_stage=0.0, per_stage_build=0.0)
    budget = 20 * 8192  # of 24 tiles: 18 resident, 2 slots, 6 streamed
    stages = partition_stages(plan, budget, 1, costs)
    assert planner.streamed_bytes(stages) == 6 * 8192
    compute = plan.external_bytes * costs.per_weight_byte
    assert simulate_invoke(plan, stages, 1, costs) == pytest.approx(compute)  # every read hidden
    weights = [op.weight_bytes for op in plan.ops]
    first_kept = planner._pin_and_cut(plan, weights, budget - 2 * 8192, 8192)  # the first 18 tiles resident
    assert simulate_invoke(plan, first_kept, 1, costs) > 1.15 * compute


def test_two_stages_prefetched_while_a_resident_one_runs(tmp_path, monkeypatch):
    """With prefetch 1 a running streamed stage and one prepared behind it fill the two slots; while a
    resident stage runs it holds no slot, so the next two streamed stages are prepared."""
    reads_only(monkeypatch)  # keep as much resident as the budget holds
    original, data = _tiled_mlp()
    path = tmp_path / "mlp.swap.tflite"
    path.write_bytes(data)
    stock = _outputs(original, KERNELS["builtin"], n=40)
    with SwapInterpreter(path, ram_budget=20 * 8192, prefetch=1, default_delegates=False) as swap:
        swap.allocate_tensors()
        resident = next(i for i, s in enumerate(swap.stages) if s.resident)
        swap._schedule(resident)
        after = [i for i in swap._streamed if i > resident] + [i for i in swap._streamed if i < resident]
        assert set(after[:2]) <= set(swap._pending) and after[2] not in swap._pending
        rng = np.random.default_rng(1)
        for expected in stock:
            got = run_litert(swap, random_inputs(swap.get_input_details(), rng))
            assert got[0].tobytes() == expected[0].tobytes()
        assert swap.stats()["peak_weight_bytes"] <= 20 * 8192


def test_input_read_by_a_resident_first_stage_and_a_later_one(tmp_path, monkeypatch):
    """Every tile of a split first layer reads the model input: with the first stage resident (the
    input goes straight into it) and a later stage reading it too, the later one gets it as well."""
    reads_only(monkeypatch)
    original, data = _tiled_mlp()
    path = tmp_path / "mlp.swap.tflite"
    path.write_bytes(data)
    stock = _outputs(original, KERNELS["builtin"], n=6)
    found = False
    for tiles in range(6, 24):
        with SwapInterpreter(path, ram_budget=tiles * 8192, prefetch=1, default_delegates=False) as swap:
            swap.allocate_tensors()
            model_input = swap.get_input_details()[0]["index"]
            if not swap.stages[0].resident or model_input not in swap._later_inputs:
                continue
            found = True
            rng = np.random.default_rng(1)
            for expected in stock:
                got = run_litert(swap, random_inputs(swap.get_input_details(), rng))
                assert got[0].tobytes() == expected[0].tobytes()
    assert found, "no budget gave a resident first stage with the input read again later"
