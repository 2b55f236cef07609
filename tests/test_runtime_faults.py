"""The stage runtime under faults (issue 16): forks, dropped interpreters, use after close,
forged manifests and foreign stage files, truncated and disk-full cache files. Each test failed on
the commit before its fix."""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tflm_swap import Model
from tflm_swap.converters.segment import segment_model
from tflm_swap.errors import TflmSwapError
from tflm_swap.interpreters import litert_interpreter, random_inputs
from tflm_swap.runtime import SwapInterpreter, min_ram_budget

CHILD_TIMEOUT_S = 30  # a child that hangs fails after this long instead of hanging the suite


@pytest.fixture(scope="module")
def segmented(mlperf_models, tmp_path_factory):
    """name -> (model, its segmented file), made once per module."""
    folder, made = tmp_path_factory.mktemp("faults"), {}

    def get(name: str) -> tuple[Model, Path]:
        if name not in made:
            model = Model.load(next(p for p in mlperf_models if p.name == f"{name}.tflite"))
            path = folder / f"{name}.swap.tflite"
            path.write_bytes(segment_model(model))
            made[name] = model, path
        return made[name]
    return get


@pytest.fixture(scope="module")
def kws(segmented) -> tuple[Model, Path]:
    """The KWS model and its segmented file: five streamed stages at the prefetch-1 minimum."""
    return segmented("kws_ref_model")


def _inputs(swap: SwapInterpreter, seed: int = 0) -> list[np.ndarray]:
    return random_inputs(swap.get_input_details(), np.random.default_rng(seed))


def _run(swap: SwapInterpreter, xs: list[np.ndarray]) -> bytes:
    for d, x in zip(swap.get_input_details(), xs):
        swap.set_tensor(d["index"], x)
    swap.invoke()
    return b"".join(swap.get_tensor(d["index"]).tobytes() for d in swap.get_output_details())


def _stock(model: Model, xs: list[np.ndarray]) -> bytes:
    stock = litert_interpreter(model.raw)
    stock.allocate_tensors()
    return _run(stock, xs)


def _slow_loads(monkeypatch, seconds: float) -> None:
    """Every stage load (on the prefetch thread) takes `seconds` longer, so loads are in flight."""
    import tflm_swap.runtime.interpreter as swap_module

    load = swap_module.SwapInterpreter._load

    def slow_load(self, i, slot):
        time.sleep(seconds)
        return load(self, i, slot)
    monkeypatch.setattr(swap_module.SwapInterpreter, "_load", slow_load)


def _in_child(body) -> int:
    """Run `body()` in a forked child (a hang fails after CHILD_TIMEOUT_S); its exit status:
    0 when it returned True, 3 when False, 4 on an exception, 1 on a timeout."""
    pid = os.fork()
    if pid == 0:
        import faulthandler

        faulthandler.dump_traceback_later(CHILD_TIMEOUT_S, exit=True)
        try:
            code = 0 if body() else 3
        except BaseException as exc:  # noqa: BLE001 - reported through the exit status
            print(f"child: {exc!r}", flush=True)
            code = 4
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


# ------------------------------------------------------------------------------------------ fork
@pytest.mark.parametrize("delay", [0.0, 0.02])
def test_forked_child_runs_streamed_stages_with_prefetch(kws, monkeypatch, delay):
    """A child forked after allocate_tensors(), with streamed stages and loads on the prefetch
    thread (in flight at the fork, or done), runs set_tensor and invoke like its parent: the
    parent's prefetch thread is not in the child, so its pending loads are run again there."""
    model, path = kws
    if delay:
        _slow_loads(monkeypatch, delay)
    with SwapInterpreter(path, ram_budget=min_ram_budget(path, 1), prefetch=1) as swap:
        assert sum(not s.resident for s in swap.stages) > 2
        xs = _inputs(swap)
        want = _stock(model, xs)
        swap.allocate_tensors()
        assert _in_child(lambda: _run(swap, xs) == want and _run(swap, xs) == want) == 0
        assert _run(swap, xs) == want  # the parent is unaffected
        for _ in range(3):  # forked again with the next invoke's loads under way
            assert _in_child(lambda: _run(swap, xs) == want) == 0
            assert _run(swap, xs) == want


def test_forked_child_keeps_resident_stages(segmented):
    """Resident stages loaded once in the parent (their templates then dropped) stay usable in a
    forked child, beside streamed ones; the weights counted held there are those it holds."""
    from tflm_swap.planner import min_stage_budget, plan_model

    model, path = segmented("pretrainedResnet_quant")
    plan = plan_model(model)
    low = min_stage_budget(plan, 1)
    budget = low + (plan.external_bytes - low) // 3
    options = {"ram_budget": budget, "prefetch": 1, "default_delegates": False}
    with SwapInterpreter(path, **options) as swap:
        assert {s.resident for s in swap.stages} == {True, False}
        xs = _inputs(swap, 1)
        stock = litert_interpreter(model.raw, default_delegates=False)
        stock.allocate_tensors()
        want = _run(stock, xs)
        swap.allocate_tensors()
        assert _run(swap, xs) == want

        def child() -> bool:
            ok = _run(swap, xs) == want and _run(swap, xs) == want
            return ok and swap.stats()["peak_weight_bytes"] <= budget
        assert _in_child(child) == 0
        assert _run(swap, xs) == want


# ----------------------------------------------------------------------------- leaks and close
def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _prefetch_threads() -> int:
    return sum(t.name.startswith("tflm_swap-prefetch") for t in threading.enumerate())


def test_dropped_interpreters_leak_no_file_descriptor(kws, monkeypatch):
    """SwapInterpreters dropped without close() while their prefetch thread still runs a load:
    the last reference then goes away on that thread, which must neither fail to close the model
    file (it cannot join itself) nor stay alive."""
    _, path = kws
    _slow_loads(monkeypatch, 0.01)
    budget = min_ram_budget(path, 1)
    gc.collect()
    fds, threads = _fds(), _prefetch_threads()
    for i in range(30):
        swap = SwapInterpreter(path, ram_budget=budget, prefetch=1)
        swap.allocate_tensors()
        _run(swap, _inputs(swap, i))
        del swap  # the next invoke's first loads are still running
    deadline = time.monotonic() + 10
    while (_fds() > fds or _prefetch_threads() > threads) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert _fds() == fds
    assert _prefetch_threads() == threads


@pytest.mark.parametrize("budget_factor", [None, 1])
def test_use_after_close_is_a_clear_error(kws, budget_factor):
    """invoke(), set_tensor() and allocate_tensors() after close() raise TflmSwapError saying so
    (not AttributeError); outputs read before stay; close() twice is fine."""
    model, path = kws
    budget = None if budget_factor is None else min_ram_budget(path, 1) * budget_factor
    swap = SwapInterpreter(path, ram_budget=budget)
    swap.allocate_tensors()
    xs = _inputs(swap)
    out = _run(swap, xs)
    assert out == _stock(model, xs)
    swap.close()
    swap.close()
    d = swap.get_input_details()[0]
    with pytest.raises(TflmSwapError, match="is closed"):
        swap.invoke()
    with pytest.raises(TflmSwapError, match="is closed"):
        swap.set_tensor(d["index"], xs[0])
    with pytest.raises(TflmSwapError, match="is closed"):
        swap.allocate_tensors()
    outputs = b"".join(swap.get_tensor(d["index"]).tobytes() for d in swap.get_output_details())
    assert outputs == out
