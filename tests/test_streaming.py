"""A streaming, stateful model (resource variables, CALL_ONCE, two subgraphs) on TFLite Micro.

The model (tests/streaming_model.py) keeps a ring buffer of past frames in a resource variable, so
each output depends on every earlier invocation. Stock and rewritten (blocking, prefetch) must give
the same outputs invocation after invocation, on the host TFLM and on an emulated Cortex-M4.
xmos-ai-tools' host TFLM crashes on resource variables, so the host runs use TFLM built from the
pinned sources in ../shared/vendor (and tflite-micro's Python interpreter checks the stock run).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import SHARED_DIR, missing_shared
from streaming_model import frames, streaming_tflite

from tflm_swap.format.model import Model
from tflm_swap.micro import export_project, rewrite_for_tflm, run_host_tflm

pytestmark = pytest.mark.native

INVOCATIONS = 20
NO_LOADS = 1 << 30  # min_segment_bytes that keeps every weight in the graph: the stock model


@pytest.fixture(scope="module")
def source_tflm() -> None:
    """The pinned archives TFLM is built from for the host (resource variables need it)."""
    from tflm_swap.micro import mcu
    from tflm_swap.micro.toolchain import NativeToolError

    os.environ.setdefault("TFLM_SWAP_VENDOR", str(SHARED_DIR / "vendor"))
    try:
        mcu.vendor_dir()
    except NativeToolError as exc:
        missing_shared(str(exc))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> bytes:
    return streaming_tflite(seed=0)


@pytest.fixture(scope="module")
def stock_run(model, source_tflm):
    inputs = frames(INVOCATIONS, seed=1)
    return inputs, run_host_tflm(model, None, [[x] for x in inputs])


def _assert_same(got, expected, what: str) -> None:
    assert len(got) == len(expected) == INVOCATIONS
    for n, (a, b) in enumerate(zip(got, expected)):
        assert np.array_equal(a[0], b[0]), f"{what}: invocation {n} differs"


def test_the_model_is_stateful(model):
    parsed = Model.from_bytes(model)
    assert parsed.resource_variable_count() == 1
    ops = {name for _, name in parsed.all_operator_names()}
    assert {"CALL_ONCE", "VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE"} <= ops
    assert {g for g, _ in parsed.all_operator_names()} == {0, 1}


def test_stock_run_carries_state_and_matches_tflite_micro(model, stock_run, source_tflm):
    inputs, run = stock_run
    # the same frame over and over: the outputs change while the ring buffer fills, so state is carried
    same = run_host_tflm(model, None, [[inputs[0]]] * 6)
    assert len({o[0].tobytes() for o in same.outputs}) > 1
    from tflite_micro.python.tflite_micro import runtime

    reference = runtime.Interpreter.from_bytes(model)
    expected = []
    for x in inputs:
        reference.set_input(x, 0)
        reference.invoke()
        expected.append([reference.get_output(0).copy()])
    _assert_same(run.outputs, expected, "host runner vs tflite-micro's interpreter")


@pytest.mark.parametrize("prefetch", [False, True], ids=["blocking", "prefetch"])
def test_rewritten_is_bit_exact_invocation_after_invocation_on_host(model, stock_run, prefetch):
    inputs, stock = stock_run
    micro = rewrite_for_tflm(model, prefetch=prefetch)
    assert micro.loads
    ours = run_host_tflm(micro.graph, micro.image, [[x] for x in inputs], deferred=prefetch)
    _assert_same(ours.outputs, stock.outputs, "rewritten vs stock")
    assert ours.flash_bytes == INVOCATIONS * micro.flash_bytes_per_inference


def test_stock_and_rewritten_are_bit_exact_under_qemu(mcu, model, stock_run, tmp_path):
    inputs, stock = stock_run
    path = tmp_path / "stream.tflite"
    path.write_bytes(model)
    # the blocking project's header arena is measured on the board (32-bit, with the variables); the
    # others keep the host figure, which is larger and saves the search
    projects = {"stock": export_project(path, tmp_path / "stock", min_segment_bytes=NO_LOADS, arena_board=None),
                "blocking": export_project(path, tmp_path / "blocking", arena_board="mps2-an386"),
                "prefetch": export_project(path, tmp_path / "prefetch", prefetch=True, arena_board=None)}
    assert projects["blocking"].mcu_arena_size < projects["blocking"].arena_size
    for variant, project in projects.items():
        assert "MicroResourceVariables::Create" in (project.out_dir / "main.cc").read_text()
        run = mcu.run_project(project, inputs)
        _assert_same(run.outputs, stock.outputs, f"{variant} on mps2-an386 vs stock on the host")
        assert run.flash_bytes_read == INVOCATIONS * project.flash_bytes_per_inference
