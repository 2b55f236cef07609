"""SwapInterpreter against the stock LiteRT interpreter on the original model: bit-identical."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
from helpers import reads_only

from tflm_swap import BudgetError, ManifestError, Model, SegmentIntegrityError, plan_model, read_manifest
from tflm_swap.converters.segment import segment_model
from tflm_swap.errors import TflmSwapError
from tflm_swap.interpreters import BackendUnavailableError, litert_interpreter, random_inputs, resolve_backend
from tflm_swap.planner import min_stage_budget, partition_stages
from tflm_swap.runtime import SwapInterpreter, min_ram_budget
from tflm_swap.runtime.compiled import _Ranges


@pytest.fixture(scope="module")
def segmented_files(mlperf_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("segmented")
    files = {}
    for path in mlperf_models:
        model = Model.load(path)
        out = folder / path.name
        out.write_bytes(segment_model(model))
        files[path.name] = (model, out)
    return files


COPIES = 2  # XNNPACK (LiteRT's default) packs a second copy of each stage's weights


def _smallest_stage(model: Model) -> int:
    """The budget one stage of a single operator needs with XNNPACK."""
    return max(op.weight_bytes for op in plan_model(model).ops) * COPIES


def _compare(model: Model, swap: SwapInterpreter, n: int = 20, seed: int = 0, reference: bool = False,
             default_delegates: bool = True):
    stock = litert_interpreter(model.raw, reference_kernels=reference, default_delegates=default_delegates)
    stock.allocate_tensors()
    rng = np.random.default_rng(seed)
    for i in range(n):
        xs = random_inputs(stock.get_input_details(), rng)
        for d, x in zip(stock.get_input_details(), xs):
            stock.set_tensor(d["index"], x)
        for d, x in zip(swap.get_input_details(), xs):
            swap.set_tensor(d["index"], x)
        stock.invoke()
        swap.invoke()
        for a, b in zip(stock.get_output_details(), swap.get_output_details()):
            want, got = stock.get_tensor(a["index"]), swap.get_tensor(b["index"])
            assert want.dtype == got.dtype and want.shape == got.shape
            assert want.tobytes() == got.tobytes(), f"{model.source}: invoke {i} differs"


def _budgets(model: Model):
    smallest = _smallest_stage(model)
    total = plan_model(model).external_bytes * COPIES
    return [(None, 1), (total // 2 + smallest, 1), (2 * smallest, 1), (smallest, 0)]


def test_bit_identical_on_every_model_and_budget(segmented_files):
    for model, path in segmented_files.values():
        for budget, prefetch in _budgets(model):
            with SwapInterpreter(path, ram_budget=budget, prefetch=prefetch) as swap:
                swap.allocate_tensors()
                _compare(model, swap)
                stats = swap.stats()
                if budget is not None:
                    assert stats["peak_weight_bytes"] <= budget, (path.name, budget, stats)
                assert stats["resident"] == (len(stats["stages"]) == 1)


def test_int8_with_reference_kernels(segmented_files):
    model, path = segmented_files["vww_96_int8.tflite"]
    with SwapInterpreter(path, ram_budget=2 * _smallest_stage(model), reference_kernels=True) as swap:
        swap.allocate_tensors()
        _compare(model, swap, n=5, reference=True)


def test_threaded_prefetch_never_changes_results(segmented_files):
    model, path = segmented_files["kws_ref_model.tflite"]
    with SwapInterpreter(path, ram_budget=3 * _smallest_stage(model), prefetch=2) as swap:
        swap.allocate_tensors()
        assert len(swap.stages) > 2
        _compare(model, swap, n=150, seed=7)
        stats = swap.stats()
    assert stats["invokes"] == 150
    assert all(s["loads"] >= 150 for s in stats["stages"])
    assert stats["fresh_buffers"] == 3  # one per slot (prefetch 2 + the running stage), then reused


def test_partition_respects_budget_and_covers_every_operator(segmented_files):
    for model, _ in segmented_files.values():
        plan = plan_model(model)
        smallest = _smallest_stage(model) // COPIES  # partition_stages budgets one copy
        for prefetch in (0, 1, 2):
            budget = (prefetch + 1) * smallest + 1000
            stages = partition_stages(plan, budget, prefetch)
            assert [s.first for s in stages] == [0] + [s.last + 1 for s in stages[:-1]]
            assert stages[-1].last == plan.n_ops - 1
            resident = sum(s.weight_bytes for s in stages if s.resident)
            streamed = max((s.weight_bytes for s in stages if not s.resident), default=0)
            assert resident + (prefetch + 1) * streamed <= budget  # running + prepared + resident
            assert sum(s.weight_bytes for s in stages) >= plan.external_bytes
        assert len(partition_stages(plan, None)) == 1
        minimum = min_stage_budget(plan, 1)  # <= 2 * smallest: the largest may stay resident
        assert minimum <= 2 * smallest
        with pytest.raises(BudgetError, match=str(minimum)):
            partition_stages(plan, minimum - 1, prefetch=1)


def test_resident_and_streamed_stages_mixed(segmented_files, monkeypatch):
    """With room in the budget, some stages stay resident (read once) and the rest stream; outputs
    stay bit-identical, each invoke reads only the streamed stages, and the budget holds."""
    from tflm_swap import planner

    reads_only(monkeypatch)
    mixed = 0
    for name in ("ad01_int8.tflite", "pretrainedResnet_quant.tflite", "vww_96_int8.tflite"):
        model, path = segmented_files[name]
        plan = plan_model(model)
        low, total = planner.min_stage_budget(plan, 1), plan.external_bytes
        for budget in (low + (total - low) // 3, low + 2 * (total - low) // 3):
            stages = partition_stages(plan, budget, 1)
            if all(s.resident for s in stages) or not any(s.resident for s in stages):
                continue
            mixed += 1
            assert planner.streamed_bytes(stages) < total
            with SwapInterpreter(path, ram_budget=budget, prefetch=1, default_delegates=False) as swap:
                swap.allocate_tensors()
                assert [s.resident for s in swap.stages] == [s.resident for s in stages]
                _compare(model, swap, n=4, default_delegates=False)
                stats = swap.stats()
            assert stats["peak_weight_bytes"] <= budget
            once = stats["resident_weight_bytes"]
            per_invoke = stats["streamed_bytes_per_invoke"]
            # read ahead for a next invoke: up to prefetch + 1 streamed stages, while a resident one runs
            ahead = sum([s["weight_bytes"] for s in stats["stages"] if not s["resident"]][:2])
            assert once + 4 * per_invoke <= stats["flash_bytes_read"] <= once + 4 * per_invoke + ahead
            assert all(s["loads"] == 1 for s in stats["stages"] if s["resident"])
    assert mixed >= 2


def test_resident_model_reads_flash_once(segmented_files):
    model, path = segmented_files["pretrainedResnet_quant.tflite"]
    with SwapInterpreter(path) as swap:
        swap.allocate_tensors()
        _compare(model, swap, n=5)
        assert swap.stats()["flash_bytes_read"] == read_manifest(path.read_bytes()).external_bytes


def test_resident_model_keeps_no_input_copy_and_no_thread(segmented_files):
    """A resident model's inputs go straight into its interpreter (as with LiteRT) and it is loaded
    on the calling thread; inputs still read back after an invoke, and results stay bit-identical."""
    import threading

    model, path = segmented_files["vww_96_float.tflite"]
    with SwapInterpreter(path) as swap:
        swap.allocate_tensors()
        assert not any(t.name.startswith("tflm_swap-prefetch") for t in threading.enumerate())
        _compare(model, swap, n=3)
        index = swap.get_input_details()[0]["index"]
        x = random_inputs(swap.get_input_details(), np.random.default_rng(7))[0]
        swap.set_tensor(index, x)
        assert all(v is None for v in swap._inputs.values())
        swap.invoke()
        swap.invoke()  # inputs persist across invokes, as in LiteRT
        assert swap.get_tensor(index).tobytes() == x.tobytes()


def test_streamed_inputs_go_into_the_first_stage_with_litert_semantics(segmented_files):
    """Streaming: set_tensor writes into the prefetched first stage and keeps no copy (a copy would
    sit beside the first stage's arena at the memory peak). As with LiteRT, the input reads back
    after invoke and an invoke without new inputs reuses it; if the caller changed the array in
    place meanwhile, that invoke refuses with a clear error instead of using other values."""
    model, path = segmented_files["vww_96_int8.tflite"]
    stock = litert_interpreter(model.raw)
    stock.allocate_tensors()
    with SwapInterpreter(path, ram_budget=2 * _smallest_stage(model), prefetch=1) as swap:
        swap.allocate_tensors()
        assert len(swap.stages) > 2
        index, out = swap.get_input_details()[0]["index"], swap.get_output_details()[0]["index"]
        for seed in (1, 2):
            x = random_inputs(swap.get_input_details(), np.random.default_rng(seed))[0]
            stock.set_tensor(stock.get_input_details()[0]["index"], x)
            stock.invoke()
            want = stock.get_tensor(stock.get_output_details()[0]["index"])
            swap.set_tensor(index, x)
            assert swap._inputs[index] is None  # held by the first stage's interpreter only
            assert swap.get_tensor(index).tobytes() == x.tobytes()  # the value set, before any invoke
            for _ in range(2):  # the second invoke reuses the inputs
                swap.invoke()
                assert swap.get_tensor(out).tobytes() == want.tobytes()
                assert swap.get_tensor(index).tobytes() == x.tobytes()
        x += 1
        with pytest.raises(TflmSwapError, match="changed in place after set_tensor"):
            swap.invoke()
        swap.set_tensor(index, x)
        swap.invoke()
        stock.set_tensor(stock.get_input_details()[0]["index"], x)
        stock.invoke()
        assert swap.get_tensor(out).tobytes() == stock.get_tensor(stock.get_output_details()[0]["index"]).tobytes()


@pytest.mark.parametrize("prefetch", [0, 1])
def test_streaming_reads_each_stage_per_invoke(segmented_files, prefetch):
    model, path = segmented_files["pretrainedResnet_quant.tflite"]
    with SwapInterpreter(path, ram_budget=(prefetch + 1) * _smallest_stage(model), prefetch=prefetch) as swap:
        swap.allocate_tensors()
        _compare(model, swap, n=4)
        stats = swap.stats()
    per_invoke = sum(s["weight_bytes"] for s in stats["stages"] if not s["resident"])
    assert per_invoke == stats["streamed_bytes_per_invoke"] > 0
    once = stats["resident_weight_bytes"]  # stages kept resident are read once
    # with prefetch, the first streamed stage is prepared again for the next invoke while the last
    # stage runs (that read may still be in flight when stats() is taken)
    ahead = next(s["weight_bytes"] for s in stats["stages"] if not s["resident"]) if prefetch else 0
    assert once + 4 * per_invoke <= stats["flash_bytes_read"] <= once + 4 * per_invoke + ahead
    assert len(stats["stages"]) > 1


def test_invoke_frees_boundary_activations(segmented_files):
    """Only the model's inputs and outputs outlive an invoke; activations crossing stage boundaries
    are dropped after the last stage that reads them, so they do not pile up across stages."""
    model, path = segmented_files["vww_96_int8.tflite"]
    with SwapInterpreter(path, ram_budget=2 * _smallest_stage(model), prefetch=1) as swap:
        swap.allocate_tensors()
        assert len(swap.stages) > 2
        _compare(model, swap, n=2)
        kept, borrowed = set(swap._values), set(swap._borrowed)  # inputs: the caller's arrays
        crossing = {t for template in swap._templates for t in template.inputs + template.outputs}
        intermediate = sorted(crossing - set(model.inputs) - set(model.outputs))
        assert intermediate
        with pytest.raises(ValueError, match="only the model's inputs and outputs"):
            swap.get_tensor(intermediate[0])
    assert kept | borrowed == set(model.inputs) | set(model.outputs)


PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _resident_pages(address: int, n: int) -> int:
    """How many of the pages covering [address, address + n) are in RAM (mincore)."""
    import ctypes

    low = address // PAGE_BYTES * PAGE_BYTES
    count = -(-(address + n - low) // PAGE_BYTES)
    vec = (ctypes.c_ubyte * count)()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    assert libc.mincore(low, count * PAGE_BYTES, vec) == 0, os.strerror(ctypes.get_errno())
    return sum(v & 1 for v in vec)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page residency is Linux-specific")
def test_stage_buffers_hold_ram_only_for_the_bytes_written():
    from tflm_swap.runtime.process_memory import PAGE, bytes_address, writable_bytes, zero_pages

    n = 64 * PAGE
    data, view = writable_bytes(n)  # zeroed without being made resident
    address = bytes_address(data)
    assert _resident_pages(address, n) <= 2 and data.count(0) == n
    view[:] = b"\x07" * n
    assert _resident_pages(address, n) == 64 + (address % PAGE > 0)
    zero_pages(address + 100, n - 100)  # whole pages inside are given back; the rest reads as zeros
    assert _resident_pages(address, n) <= 2
    assert data[:100] == b"\x07" * 100 and data.count(0) == n - 100


def _slow_stages(monkeypatch, seconds: float) -> None:
    """Give every stage `seconds` more of work on the invoking thread before it runs."""
    import tflm_swap.runtime.interpreter as swap_module

    allocate = swap_module.SwapInterpreter._allocate

    def slow_allocate(self, loaded):
        time.sleep(seconds)
        allocate(self, loaded)
    monkeypatch.setattr(swap_module.SwapInterpreter, "_allocate", slow_allocate)


def _streamed_sizes(swap: SwapInterpreter) -> list[int]:
    return sorted({t.base + t.blob_size for i, t in enumerate(swap._templates) if i in swap._streamed})


def _pages_past(swap: SwapInterpreter, slot: int, used: int) -> int:
    from tflm_swap.runtime.process_memory import PAGE, bytes_address

    data = swap._slots[slot]
    start = -(-(bytes_address(data) + used) // PAGE) * PAGE  # the first whole page past `used`
    return _resident_pages(start, bytes_address(data) + len(data) - start)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page residency is Linux-specific")
def test_slots_give_back_pages_unless_prefetched_loads_are_waited_for(segmented_files, monkeypatch):
    """A slot that held a larger stage keeps no pages past the stage now in it, unless an invoke
    waited for a prefetched load: then faulting them in again would cost time, and slots keep them."""
    import tflm_swap.runtime.interpreter as swap_module

    model, path = segmented_files["vww_96_int8.tflite"]
    _slow_stages(monkeypatch, 0.02)  # compute far longer than any load of this model: loads hidden
    buffer, loads = swap_module.SwapInterpreter._buffer, []

    def recorded_buffer(self, slot, used):  # each load: (bytes it uses, pages of its slot past them)
        result = buffer(self, slot, used)
        loads.append((used, self._slot_used[slot], _pages_past(self, slot, used)))
        return result
    monkeypatch.setattr(swap_module.SwapInterpreter, "_buffer", recorded_buffer)
    for prefetch in (1, 0):
        loads.clear()
        with SwapInterpreter(path, ram_budget=(prefetch + 1) * _smallest_stage(model), prefetch=prefetch) as swap:
            swap.allocate_tensors()
            sizes = _streamed_sizes(swap)
            assert sizes[-1] - sizes[0] > 4 * PAGE_BYTES  # stages of different sizes share the slots
            _compare(model, swap, n=4)
            assert swap._give_back and swap.stats()["fresh_buffers"] == len(swap._slots)
        # after a larger stage too; left: the partial pages at the ends of the old extent and of the buffer
        assert all(extent == used and past <= 2 for used, extent, past in loads)
        assert any(used < sizes[-1] for used, _, _ in loads[len(swap._slots):])
    monkeypatch.undo()

    pread = os.preadv

    def slow_pread(*args):
        time.sleep(0.02)
        return pread(*args)
    monkeypatch.setattr(os, "preadv", slow_pread)  # loads far longer than compute: waited for
    zero, zeroed = swap_module.zero_pages, []
    monkeypatch.setattr(swap_module, "zero_pages", lambda address, n: (zeroed.append(n), zero(address, n)))
    with SwapInterpreter(path, ram_budget=2 * _smallest_stage(model), prefetch=1) as swap:
        swap.allocate_tensors()
        _compare(model, swap, n=1)  # the first invoke finds that loads are waited for
        assert not swap._give_back
        zeroed.clear()
        fresh = swap.stats()["fresh_buffers"]
        _compare(model, swap, n=4)
        assert not swap._give_back  # every zero_pages call since: a fresh buffer, none a give-back
        assert len(zeroed) == swap.stats()["fresh_buffers"] - fresh


def test_corrupt_segment_fails_before_any_output(segmented_files, tmp_path):
    model, path = segmented_files["vww_96_int8.tflite"]
    data = bytearray(path.read_bytes())
    manifest = read_manifest(data)
    last = manifest.segments[-1]
    data[manifest.image_offset + last.offset + last.size // 2] ^= 0x40
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(bytes(data))
    for budget in (None, 2 * _smallest_stage(model)):
        with SwapInterpreter(bad, ram_budget=budget) as swap:
            swap.allocate_tensors()
            for d, x in zip(swap.get_input_details(), random_inputs(swap.get_input_details(),
                                                                   np.random.default_rng(0))):
                swap.set_tensor(d["index"], x)
            with pytest.raises(SegmentIntegrityError, match=f"segment {last.id} .*CRC32"):
                swap.invoke()
            with pytest.raises(ValueError, match="not available"):
                swap.get_tensor(swap.get_output_details()[0]["index"])


def test_truncated_or_foreign_files_give_clear_errors(segmented_files, tmp_path, mlperf_models):
    _, path = segmented_files["kws_ref_model.tflite"]
    data = path.read_bytes()
    manifest = read_manifest(data)
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: manifest.image_offset + manifest.segments[-1].offset + 10])
    last = manifest.segments[-1]
    with pytest.raises(SegmentIntegrityError, match=f"segment {last.id} needs file bytes"):
        SwapInterpreter(cut)
    with pytest.raises(ManifestError, match="no 'tflm_swap' manifest"):
        SwapInterpreter(next(p for p in mlperf_models if p.name == "kws_ref_model.tflite"))
    model, path = segmented_files["ad01_int8.tflite"]
    minimum = min_stage_budget(plan_model(model), 1) * COPIES
    with pytest.raises(BudgetError, match=f"minimum budget is {minimum} bytes.*tiles"):
        SwapInterpreter(path, ram_budget=1000)
    with pytest.raises(BudgetError, match=f"minimum budget is {_smallest_stage(model) // COPIES} bytes.*tiles"):
        SwapInterpreter(path, ram_budget=1000, prefetch=0, default_delegates=False)


@pytest.mark.parametrize("prefetch", [0, 1])
@pytest.mark.parametrize("default_delegates", [True, False])
def test_min_ram_budget_is_the_least_budget_accepted(segmented_files, prefetch, default_delegates):
    model, path = segmented_files["ad01_int8.tflite"]
    options = {"prefetch": prefetch, "default_delegates": default_delegates}
    minimum = min_ram_budget(path, **options)
    assert minimum == min_stage_budget(plan_model(model), prefetch) * (2 if default_delegates else 1)
    with SwapInterpreter(path, ram_budget=minimum, **options) as swap:
        swap.allocate_tensors()
        _compare(model, swap, n=2, default_delegates=default_delegates)
    with pytest.raises(BudgetError, match=f"minimum budget is {minimum} bytes"):
        SwapInterpreter(path, ram_budget=minimum - 1, **options)


def test_without_xnnpack_one_copy_counts(segmented_files):
    model, path = segmented_files["vww_96_float.tflite"]
    budget = _smallest_stage(model)  # two stages' weights at one copy each
    stock = litert_interpreter(model.raw, default_delegates=False)
    with SwapInterpreter(path, ram_budget=budget, default_delegates=False) as swap:
        swap.allocate_tensors()
        assert len(swap.stages) > 1
        xs = random_inputs(stock.get_input_details(), np.random.default_rng(0))
        stock.allocate_tensors()
        from tflm_swap.interpreters import run_litert

        assert all(a.tobytes() == b.tobytes() for a, b in zip(run_litert(stock, xs), run_litert(swap, xs)))
        assert swap.stats()["weight_copies"] == 1 and swap.stats()["peak_weight_bytes"] <= budget


def test_interpreter_surface_matches_litert(segmented_files):
    model, path = segmented_files["vww_96_int8.tflite"]
    stock = litert_interpreter(model.raw)
    stock.allocate_tensors()
    with SwapInterpreter(path, ram_budget=2 * _smallest_stage(model)) as swap:
        swap.allocate_tensors()
        for ours, theirs in ((swap.get_input_details(), stock.get_input_details()),
                             (swap.get_output_details(), stock.get_output_details())):
            for a, b in zip(ours, theirs):
                assert a["name"] == b["name"] and a["dtype"] == b["dtype"]
                assert list(a["shape"]) == list(b["shape"]) and a["quantization"] == b["quantization"]
                assert np.array_equal(a["quantization_parameters"]["scales"],
                                      b["quantization_parameters"]["scales"])
        index = swap.get_input_details()[0]["index"]
        with pytest.raises(ValueError, match="expects int8"):
            swap.set_tensor(index, np.zeros((1, 96, 96, 3), np.float32))
        with pytest.raises(ValueError, match="expects shape"):
            swap.set_tensor(index, np.zeros((1, 96, 96), np.int8))
        with pytest.raises(ValueError, match="were not set"):
            swap.invoke()


def test_tflite_runtime_backend_gives_a_clear_reason_when_unusable():
    try:
        name, _ = resolve_backend("tflite_runtime")
    except BackendUnavailableError as exc:
        assert "tflite_runtime" in str(exc)
        assert "numpy" in str(exc) or "No module" in str(exc)
    else:
        assert name == "tflite_runtime"
    with pytest.raises(BackendUnavailableError, match="unknown backend"):
        resolve_backend("nope")


def test_signature_runner_matches_litert(tmp_path):
    keras = pytest.importorskip("keras", reason="needs Keras to build a model with a signature")
    import tflm_swap

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(64), keras.layers.Dense(4)])
    result = tflm_swap.convert(model)
    path = result.save(tmp_path / "m.swap.tflite")
    stock = litert_interpreter(result.original)
    with SwapInterpreter(path, ram_budget=2 * _smallest_stage(Model.from_bytes(result.original))) as swap:
        assert swap.get_signature_list() == stock.get_signature_list()
        (key,) = swap.get_signature_list()
        name = swap.get_signature_list()[key]["inputs"][0]
        x = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
        want = stock.get_signature_runner()(**{name: x})
        got = swap.get_signature_runner()(**{name: x})
        assert want.keys() == got.keys()
        assert all(want[k].tobytes() == got[k].tobytes() for k in want)
        with pytest.raises(ValueError, match="missing"):
            swap.get_signature_runner()()


def test_streams_stages_with_scalar_tensors(tmp_path):
    """Keras' Flatten with a dynamic batch converts to SHAPE -> STRIDED_SLICE (a 0-d tensor) ->
    PACK -> RESHAPE; LiteRT gives 0-d tensors as numpy scalars, which streaming must handle."""
    keras = pytest.importorskip("keras", reason="needs Keras to build the model")
    import tflm_swap

    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    result = tflm_swap.convert(model)
    original = Model.from_bytes(result.original)
    assert any(t.shape is not None and len(t.shape) == 0 for t in original.tensors)  # the scalar
    path = result.save(tmp_path / "flatten.swap.tflite")
    budget = min_stage_budget(plan_model(Model.load(path)), 0)  # below the weights: streamed stages
    with SwapInterpreter(path, ram_budget=budget, prefetch=0, default_delegates=False) as swap:
        swap.allocate_tensors()
        assert not all(s.resident for s in swap.stages)
        _compare(original, swap, n=3, default_delegates=False)


def test_runs_exported_stage_files_and_sealed_compiled_ones(segmented_files, tmp_path, capsys):
    """Stages exported by `tflm-swap stages` run from their files (as Edge TPU-compiled ones would,
    once sealed), bit-identical; a changed file is refused before any output."""
    from tflm_swap.cli import main

    model, path = segmented_files["kws_ref_model.tflite"]
    out = tmp_path / "stages"
    assert main(["stages", str(path), "--ram-budget", "9KiB", "--out", str(out)]) == 0
    with SwapInterpreter(path, stage_files=out, default_delegates=False) as swap:
        swap.allocate_tensors()
        assert len(swap.stages) > 1 and not swap.resident
        _compare(model, swap, n=3, default_delegates=False)
        assert swap.stats()["flash_bytes_read"] >= 3 * sum(f.stat().st_size for f in out.glob("stage_*.tflite"))

    # a "compiled" stage 1 (here the same model; edgetpu_compiler's output name), sealed: it is the
    # file loaded from then on, so the exported one may go
    exported = out / "stage_01.tflite"
    compiled = out / "stage_01_edgetpu.tflite"
    compiled.write_bytes(exported.read_bytes())
    assert main(["seal-stages", str(out)]) == 0
    assert "sealed 1 compiled stage file(s)" in capsys.readouterr().out
    exported.unlink()
    with SwapInterpreter(path, stage_files=out, default_delegates=False) as swap:
        swap.allocate_tensors()
        _compare(model, swap, n=2, default_delegates=False)

    data = bytearray(compiled.read_bytes())
    data[len(data) // 2] ^= 1
    compiled.write_bytes(bytes(data))
    with SwapInterpreter(path, stage_files=out, default_delegates=False) as swap:
        swap.allocate_tensors()
        swap.set_tensor(swap.get_input_details()[0]["index"],
                        random_inputs(swap.get_input_details(), np.random.default_rng(0))[0])
        with pytest.raises(SegmentIntegrityError, match="stage_01_edgetpu.tflite has CRC32 .* records"):
            swap.invoke()

    other = segmented_files["ad01_int8.tflite"][1]  # stages of one model are not another's
    with pytest.raises(ManifestError, match="exported from another model"):
        SwapInterpreter(other, stage_files=out)
    with pytest.raises(ManifestError, match="stages.json not found"):
        SwapInterpreter(path, stage_files=tmp_path)


def test_native_crc32_equals_zlib():
    """The stage loader's CRC32 (the delegate library's PCLMUL version when built) is zlib's."""
    import zlib

    from tflm_swap.runtime.crc import crc32
    from tflm_swap.runtime.process_memory import writable_bytes

    rng = np.random.default_rng(0)
    payload = rng.integers(0, 256, 3 * 2**20 + 77, dtype=np.uint8).tobytes()
    data, view = writable_bytes(len(payload))
    view[:] = payload
    for lo, hi in ((0, len(payload)), (1, 4097), (13, 13), (5, 200), (64, len(payload) - 3)):
        assert crc32(view[lo:hi]) == zlib.crc32(payload[lo:hi]), (lo, hi)
        assert crc32(payload[lo:hi]) == zlib.crc32(payload[lo:hi]), (lo, hi)
    assert crc32(payload[:1000], 0x1234) == zlib.crc32(payload[:1000], 0x1234)


@pytest.mark.parametrize("name", ["vww_96_float.tflite", "vww_96_int8.tflite"])
def test_xnnpack_paged_stages_build_once_and_stay_bit_identical(segmented_files, tmp_path, name):
    """Paged XNNPACK stages (xnnpack_cache_dir): bit-identical to the stock interpreter with
    XNNPACK; the budget counts the packed copy only; a second SwapInterpreter reuses the files as
    they are; a corrupted packed or stage model file fails its CRC record and is rebuilt, never
    used."""
    model, path = segmented_files[name]
    budget = _smallest_stage(model) // COPIES * 2  # two one-operator slots, one copy each
    assert min_ram_budget(path, 1, xnnpack_cache=True) * COPIES == min_ram_budget(path, 1)
    with SwapInterpreter(path, ram_budget=budget, xnnpack_cache_dir=tmp_path) as swap:
        swap.allocate_tensors()
        assert sum(not s.resident for s in swap.stages) > 1 and swap.weight_copies == 1
        _compare(model, swap, n=3)
        # held: XNNPACK's packed bytes, planned as the raw ones (float: within 1%; int8: up to 8% more)
        packed = {i: stage.packed_bytes for i, stage in swap._compiled.items()}
        assert 0 < swap.stats()["peak_weight_bytes"] <= budget * 1.1
        assert swap.stats()["peak_weight_bytes"] <= max(packed.values()) * 2
    files = sorted(tmp_path.glob("stage-*.xnnpack")) + sorted(tmp_path.glob("stage-*.tflite"))
    assert files and all(p.with_name(p.name + ".crc32").exists() for p in files)
    stamps = {p: p.stat().st_mtime_ns for p in files}
    with SwapInterpreter(path, ram_budget=budget, xnnpack_cache_dir=tmp_path) as swap:
        swap.allocate_tensors()
        _compare(model, swap, n=2, seed=1)
    assert {p: p.stat().st_mtime_ns for p in files} == stamps  # used as they were, not rewritten
    from tflm_swap.runtime.compiled import _file_crc

    for suffix in (".xnnpack", ".tflite"):
        victim = max(tmp_path.glob(f"stage-*{suffix}"), key=lambda p: p.stat().st_size)
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
        with SwapInterpreter(path, ram_budget=budget, xnnpack_cache_dir=tmp_path) as swap:
            swap.allocate_tensors()
            _compare(model, swap, n=2, seed=2)
        assert victim.read_bytes() != bytes(data)  # rebuilt
        assert victim.with_name(victim.name + ".crc32").read_text().strip() == f"{_file_crc(victim):08x}"
    with pytest.raises(ValueError, match="xnnpack_cache_dir applies to XNNPACK"):
        SwapInterpreter(path, ram_budget=budget, default_delegates=False, xnnpack_cache_dir=tmp_path)


def test_xnnpack_paged_stage_changed_in_use_is_refused(segmented_files, tmp_path):
    """A packed-weight file changed on disk while its stage is in use fails the CRC check of the
    next page-in: invoke raises before any output; once the file is put right, invokes work again."""
    model, path = segmented_files["vww_96_float.tflite"]
    budget = _smallest_stage(model)
    with SwapInterpreter(path, ram_budget=budget, xnnpack_cache_dir=tmp_path) as swap:
        swap.allocate_tensors()
        _compare(model, swap, n=1)
        streamed = [i for i, s in enumerate(swap.stages) if not s.resident]
        victim = swap._compiled[streamed[-1]].packed_file
        with open(victim, "r+b") as f:  # in place: the stage's mapping sees it
            f.seek(victim.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        with pytest.raises(SegmentIntegrityError, match="packed weights have CRC32"):
            swap.invoke()
        with open(victim, "r+b") as f:  # put right: the next invoke loads the stage again
            f.seek(victim.stat().st_size // 2)
            f.write(byte)
        _compare(model, swap, n=1)


def test_xnnpack_paged_close_waits_for_page_ins(segmented_files, tmp_path):
    """Closing (or dropping) a SwapInterpreter with page-ins still running waits for them before
    the stages' mappings go: many open-invoke-close rounds, each leaving prefetched stages behind."""
    model, path = segmented_files["vww_96_float.tflite"]
    budget = _smallest_stage(model)
    for _ in range(20):
        swap = SwapInterpreter(path, ram_budget=budget, xnnpack_cache_dir=tmp_path)
        swap.allocate_tensors()
        for d in swap.get_input_details():
            swap.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        swap.invoke()
        assert any(not swap.stages[i].resident for i in swap._pending)  # a page-in left running
        swap.close()


@pytest.mark.parametrize("name", ["vww_96_float.tflite", "ad01_int8.tflite"])
def test_xnnpack_paged_stages_hold_only_packed_pages(segmented_files, tmp_path, name):
    """Paging, measured with smaps: a released stage holds no page of either file; a kept stage
    holds its packed weights only (XNNPACK never reads the raw weights once packed, so the stage
    model file's pages stay out after the build)."""
    model, path = segmented_files[name]
    with SwapInterpreter(path, xnnpack_cache_dir=tmp_path) as whole:  # one resident stage
        whole.allocate_tensors()
        _compare(model, whole, n=2)
        packed, raw = whole._compiled[0].mapped_rss()
        assert packed >= whole._compiled[0].packed_bytes // 2 and raw == 0
    budget = _smallest_stage(model)
    with SwapInterpreter(path, ram_budget=budget, prefetch=0, xnnpack_cache_dir=tmp_path / "s") as swap:
        swap.allocate_tensors()
        _compare(model, swap, n=2)
        streamed = [i for i, s in enumerate(swap.stages) if not s.resident and i not in swap._pending]
        assert streamed
        assert all(swap._compiled[i].mapped_rss() == (0, 0) for i in streamed)
        # page_out checks each range is still the file's mapping before discarding its pages: a
        # range that is not is left alone, and reported
        i = streamed[0]
        stage = swap._compiled[i]
        assert all(stage._page_out.files)
        stage.start_page_in()
        stage.finish_page_in(swap._packed_crcs[i])
        stage._page_out = _Ranges(stage._page_out.ranges, ["/elsewhere"] * len(stage._page_out))
        stage.page_out()
        assert stage.mapped_rss()[0] >= stage.packed_bytes // 2  # not given back
        with pytest.raises(TflmSwapError, match="/elsewhere is no longer mapped"):
            stage.flush_pages()
        stage.flush_pages()  # reported once


def test_xnnpack_paged_failed_invoke_keeps_the_last_outputs(tmp_path):
    """Paged stages pass their output buffers on without copies; an invoke that fails part way must
    still leave every output of the last good invoke as it was, including one an earlier stage
    produced (its buffer has been written again by then)."""
    keras = pytest.importorskip("keras", reason="needs Keras to build a two-output model")
    import tflm_swap

    keras.utils.set_random_seed(5)
    x = keras.Input((64,))
    early = keras.layers.Dense(64, name="early")(x)  # an output, and the input of the rest
    deep = keras.layers.Dense(512, activation="relu")(early)
    for _ in range(4):
        deep = keras.layers.Dense(512, activation="relu")(deep)
    late = keras.layers.Dense(16, name="late")(deep)
    result = tflm_swap.convert(keras.Model(x, [early, late]))
    original = Model.from_bytes(result.original)
    path = result.save(tmp_path / "two.swap.tflite")
    budget = min_ram_budget(path, 1, xnnpack_cache=True)
    with SwapInterpreter(path, ram_budget=budget, xnnpack_cache_dir=tmp_path / "cache") as swap:
        swap.allocate_tensors()
        _compare(original, swap, n=2)
        outputs = [d["index"] for d in swap.get_output_details()]
        producer = {t: i for i, tpl in enumerate(swap._templates) for t in tpl.outputs}
        last = len(swap.stages) - 1
        assert not swap.stages[last].resident and min(producer[t] for t in outputs) < last
        before = [swap.get_tensor(t) for t in outputs]
        victim = swap._compiled[last].packed_file
        good = victim.read_bytes()
        with open(victim, "r+b") as f:  # in place: the stage's mapping sees it
            f.seek(len(good) // 2)
            f.write(bytes([good[len(good) // 2] ^ 0xFF]))
        d = swap.get_input_details()[0]
        swap.set_tensor(d["index"], np.full(d["shape"], 3.0, d["dtype"]))
        with pytest.raises(SegmentIntegrityError, match="packed weights have CRC32"):
            swap.invoke()
        assert all(a.tobytes() == swap.get_tensor(t).tobytes() for a, t in zip(before, outputs))


def test_pager_page_in_starts_after_the_page_outs_queued_before_it(tmp_path):
    """The native pager keeps the pages held within the budget by order: a page-in starts only once
    every page-out queued before it has run (page-outs run on a worker thread, page-ins on threads
    of their own). Here the page-out is made slow (one range per page: tens of milliseconds) and
    the page-in tiny: when the page-in is done, the page-out must be done too."""
    import mmap

    from tflm_swap.runtime.compiled import _PAGER

    if _PAGER.library is None:
        pytest.skip("needs the package's C library (the pager)")
    big, small = tmp_path / "big", tmp_path / "small"
    big.write_bytes(np.random.default_rng(0).bytes(32 << 20))
    small.write_bytes(b"x" * 4096)
    with open(big, "rb") as fb, open(small, "rb") as fs:
        mb, ms = mmap.mmap(fb.fileno(), 0, prot=mmap.PROT_READ), mmap.mmap(fs.fileno(), 0, prot=mmap.PROT_READ)
    a, b = np.frombuffer(mb, np.uint8), np.frombuffer(ms, np.uint8)  # the mappings go with them
    page = mmap.PAGESIZE
    out = _Ranges([(a.ctypes.data + i, page) for i in range(0, a.size, page)], [None] * (a.size // page))
    into = _Ranges([(b.ctypes.data, b.size)])
    for _ in range(3):
        assert int(a[::page].sum()) >= 0  # fault every page of `big` in
        assert _pages_present(a.ctypes.data, a.size) == a.size // page
        _PAGER.page_out(out)
        _PAGER.page_in(into).wait()
        assert _pages_present(a.ctypes.data, a.size) == 0
    _PAGER.flush()


def _pages_present(address: int, size: int) -> int:
    """Pages of [address, address + size) mapped in this process now (/proc/self/pagemap, bit 63)."""
    import mmap

    first, count = address // mmap.PAGESIZE, size // mmap.PAGESIZE
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(first * 8)
        entries = np.frombuffer(f.read(count * 8), np.uint64)
    return int(np.count_nonzero(entries >> np.uint64(63)))


def test_xnnpack_paged_stages_read_back_in_huge_pages(tmp_path, monkeypatch):
    """XNNPACK writes its packed file in small pieces, so the page cache holds it in 4 KiB pages and
    a page-in faults them in 16 at a time. A paged stage drops such a file from the cache; read back
    through its MADV_HUGEPAGE mapping, it comes in 2 MiB pages (FilePmdMapped in smaps). Where the
    system keeps small pages all the same, the cache directory says so, and later stages do not
    drop their files again."""
    keras = pytest.importorskip("keras", reason="needs Keras to build a model with 4 MiB layers")
    import tflm_swap
    from tflm_swap.runtime import compiled

    keras.utils.set_random_seed(6)
    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(4096, activation="relu"),
                              keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)])
    result = tflm_swap.convert(model)
    original = Model.from_bytes(result.original)
    path = result.save(tmp_path / "wide.swap.tflite")
    budget = min_ram_budget(path, 1, xnnpack_cache=True)
    cache = tmp_path / "cache"
    with SwapInterpreter(path, ram_budget=budget, xnnpack_cache_dir=cache) as swap:
        swap.allocate_tensors()
        _compare(original, swap, n=2)
        i, stage = max(swap._compiled.items(), key=lambda item: item[1].packed_bytes)
        assert stage.packed_bytes >= 4 << 20
        held = stage.refresh_page_cache()  # the verdict the build reached, asked again
        assert held is not None and held == (not (cache / compiled.NO_HUGE_PAGES).exists())
        assert held == _system_caches_files_in_huge_pages(tmp_path / "probe")
        if held:
            stage.start_page_in()
            stage.finish_page_in(swap._packed_crcs[i])
            chunk = next(lo + -lo % (2 << 20) for lo, hi in stage._packed if lo + -lo % (2 << 20) + (2 << 20) <= hi)
            assert compiled._mapping_field(chunk, "FilePmdMapped:") >= 2 << 20
            stage.page_out()
            stage.flush_pages()
    # a system that keeps small pages: said once, then no file is dropped from the cache again
    monkeypatch.setattr(compiled, "_mapping_field", lambda address, field: 0)
    dropped = []
    monkeypatch.setattr(os, "posix_fadvise", lambda *args: dropped.append(args))
    for expect_marker in (False, True):
        assert (cache / compiled.NO_HUGE_PAGES).exists() == (expect_marker or not held)
        with SwapInterpreter(path, ram_budget=budget, xnnpack_cache_dir=cache) as swap:
            swap.allocate_tensors()
            _compare(original, swap, n=1)
        assert (cache / compiled.NO_HUGE_PAGES).exists()
        assert len(dropped) == (1 if held else 0)  # the first stage tried, and said so


def _system_caches_files_in_huge_pages(probe) -> bool:
    """Whether a file written in one piece is mapped in 2 MiB pages here (the kernel and filesystem
    keep large folios in the page cache, and transparent huge pages are not off)."""
    import mmap

    from tflm_swap.runtime.compiled import _mapping_field

    probe.write_bytes(np.random.default_rng(0).bytes(8 << 20))
    with open(probe, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    a = np.frombuffer(m, np.uint8)
    chunk = -a.ctypes.data % (2 << 20)
    int(a[chunk :: mmap.PAGESIZE].sum())
    return _mapping_field(a.ctypes.data + chunk, "FilePmdMapped:") > 0


def test_xnnpack_paged_stages_work_in_a_forked_child(segmented_files, tmp_path):
    """fork() with page-ins and releases still running: the child has none of the pager's threads,
    so it finishes their jobs itself and starts its own; its invokes give the parent's outputs."""
    model, path = segmented_files["vww_96_float.tflite"]
    with SwapInterpreter(path, ram_budget=_smallest_stage(model), xnnpack_cache_dir=tmp_path) as swap:
        swap.allocate_tensors()
        d, o = swap.get_input_details()[0], swap.get_output_details()[0]
        x = np.random.default_rng(0).standard_normal(d["shape"]).astype(d["dtype"])
        swap.set_tensor(d["index"], x)
        swap.invoke()
        want = swap.get_tensor(o["index"]).tobytes()
        for _ in range(10):
            swap.invoke()  # leaves the next invoke's page-ins (and its releases) running
            pid = os.fork()
            if pid == 0:  # the child: a hang becomes a failure after 30 s
                import faulthandler

                faulthandler.dump_traceback_later(30, exit=True)
                swap.invoke()
                os._exit(0 if swap.get_tensor(o["index"]).tobytes() == want else 3)
            assert os.waitpid(pid, 0)[1] == 0
        swap.invoke()
        assert swap.get_tensor(o["index"]).tobytes() == want
