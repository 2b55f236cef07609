"""The stage runtime under faults (issue 16): forks, dropped interpreters, use after close,
truncated and disk-full cache files (forged manifests and foreign stage files: test_graph_trust).
Each test failed on ffde8e4, except test_dropped_paged_interpreters_leak_no_file_descriptor, which
guards a change made with the fixes (paged stages hold their files open)."""

from __future__ import annotations

import gc
import os
import threading
import time
import zlib
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
        # inputs set in the parent (straight into its prefetched first stage, which the child
        # loads again): the child only invokes
        for d, x in zip(swap.get_input_details(), xs):
            swap.set_tensor(d["index"], x)

        def invoke_only() -> bool:
            swap.invoke()
            return b"".join(swap.get_tensor(d["index"]).tobytes() for d in swap.get_output_details()) == want
        assert _in_child(invoke_only) == 0


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


def test_dropped_paged_interpreters_leak_no_file_descriptor(paged_vww, tmp_path):
    """Paged stages hold their files open (checked before each page-in): dropped with page-ins
    still running, without close(), they give every descriptor back once collected."""
    model, path, cache, budget, _ = paged_vww
    cache = _cache_copy(cache, tmp_path)
    xs = [np.zeros(d["shape"], d["dtype"]) for d in litert_interpreter(model.raw).get_input_details()]
    gc.collect()
    fds = _fds()
    for _ in range(10):
        swap = SwapInterpreter(path, ram_budget=budget, xnnpack_cache_dir=cache)
        swap.allocate_tensors()
        _run(swap, xs)
        del swap
    gc.collect()
    assert _fds() == fds


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


# ------------------------------------------------------------------ paged stages: files that fail
@pytest.fixture(scope="module")
def paged_vww(segmented, tmp_path_factory) -> tuple[Model, Path, Path, int, list[Path]]:
    """VWW float, its paged-stage cache built once (model, file, cache directory, budget, and the
    first stage's model and packed files)."""
    model, path = segmented("vww_96_float")
    cache = tmp_path_factory.mktemp("vww_cache")
    budget = min_ram_budget(path, 1, xnnpack_cache=True)
    with SwapInterpreter(path, ram_budget=budget, xnnpack_cache_dir=cache) as swap:
        swap.allocate_tensors()
        assert sum(not s.resident for s in swap.stages) > 2
        packed = swap._compiled[0].packed_file
        first = [packed.with_suffix(".tflite"), packed]
    return model, path, cache, budget, first


def _cache_copy(cache: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(cache, tmp_path / "cache"))


@pytest.mark.parametrize("victim", ["next-to-load", "already-paged-in", "stage-model-file"])
def test_paged_stage_file_truncated_in_use_is_a_clear_error(paged_vww, tmp_path, victim):
    """A paged stage's packed-weight file (or stage model file) truncated while the stage is in
    use: the next invoke raises SegmentIntegrityError naming the file, whether the stage's page-in
    has yet to run or already ran (prefetched), instead of dying of SIGBUS (run in a child)."""
    from tflm_swap import SegmentIntegrityError

    model, path, cache, budget, _ = paged_vww
    cache = _cache_copy(cache, tmp_path)
    xs = [np.zeros(d["shape"], d["dtype"]) for d in litert_interpreter(model.raw).get_input_details()]

    def child() -> bool:
        swap = SwapInterpreter(path, ram_budget=budget, xnnpack_cache_dir=cache)
        swap.allocate_tensors()
        _run(swap, xs)
        streamed = [i for i, s in enumerate(swap.stages) if not s.resident]
        stage = swap._compiled[streamed[0] if victim == "already-paged-in" else streamed[-1]]
        while victim == "already-paged-in" and not stage.page_in_done():  # prefetched for the next invoke
            time.sleep(0.01)
        file = stage.packed_file.with_suffix(".tflite") if victim == "stage-model-file" else stage.packed_file
        os.truncate(file, file.stat().st_size // 2)
        try:
            _run(swap, xs)
        except SegmentIntegrityError as exc:
            print(exc, flush=True)
            return str(file) in str(exc) and "truncated" in str(exc)
        return False
    assert _in_child(child) == 0


def test_pager_read_racing_a_truncation_is_caught(tmp_path):
    """A file truncated after the pager's size check, during its read (here: a mapping read past
    its end with no size check): the SIGBUS is caught in the read and becomes an error; a SIGBUS
    outside a page-in still kills as before."""
    import mmap
    import signal

    from tflm_swap import SegmentIntegrityError
    from tflm_swap.runtime.compiled import _PAGER, _Ranges

    if _PAGER.library is None:
        pytest.skip("needs the package's C library (the pager)")
    big = tmp_path / "big"
    big.write_bytes(np.random.default_rng(0).bytes(1 << 20))

    def child(read_outside: bool) -> bool:
        with open(big, "rb") as f:
            a = np.frombuffer(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ), np.uint8)
        os.truncate(big, 4096)
        try:
            _PAGER.page_in(_Ranges([(a.ctypes.data, a.size)])).wait()
            return False
        except SegmentIntegrityError as exc:
            ok = "read past the end" in str(exc)
        crc, _ = _PAGER.page_in(_Ranges([(a.ctypes.data, 4096)])).wait()  # the pager still works
        if read_outside:
            int(a.sum())  # not in a page-in: SIGBUS, as without the pager
        return ok and crc == zlib.crc32(big.read_bytes())
    assert _in_child(lambda: child(False)) == 0
    big.write_bytes(np.random.default_rng(0).bytes(1 << 20))
    assert _in_child(lambda: child(True)) == -signal.SIGBUS


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 4 MiB tmpfs (mounted for the test, root only)."""
    import subprocess

    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path, leave: int) -> None:
    """Fill the disk but `leave` bytes."""
    st = os.statvfs(disk)
    (disk / "filler").write_bytes(bytes(max(st.f_bavail * st.f_frsize - leave, 0)))


@pytest.mark.parametrize("room, precheck", [("first-stage", True), ("half-the-packed", True),
                                             ("half-the-packed", False)])
def test_disk_full_while_building_paged_stages_is_a_clear_error(paged_vww, small_disk, room, precheck):
    """A cache directory without room for the stages' files (room for the first stage's model and
    half its packed weights, or for every model file and half the packed weights): SwapInterpreter
    refuses before writing anything (precheck). When the disk fills all the same while XNNPACK
    writes its packed weights (precheck off), which aborts the process writing them, that process
    is a child: a clear error, and no partial packed file is left. Either way the process lives
    (run in a child: before, XNNPACK's abort killed it), and once there is room the stages build
    and run."""
    model, path, reference, budget, first = paged_vww
    sizes = {p.name: p.stat().st_size for p in reference.iterdir()}
    if room == "first-stage":
        leave = sizes[first[0].name] + sizes[first[1].name] // 2
    else:
        leave = sum(n for name, n in sizes.items() if name.endswith(".tflite"))
        leave += sum(n for name, n in sizes.items() if name.endswith(".xnnpack")) // 2
    _fill(small_disk, leave)
    cache = small_disk / "cache"

    def child() -> bool:
        from tflm_swap.runtime import compiled

        if not precheck:
            compiled.XnnpackCache.check_space = lambda self, need: None
        try:
            SwapInterpreter(path, ram_budget=budget, xnnpack_cache_dir=cache).allocate_tensors()
            return False
        except TflmSwapError as exc:
            print(exc, flush=True)
            said = "bytes free" in str(exc) and str(cache) in str(exc)
            if not precheck:
                said &= "could not write its packed weights" in str(exc) and "SIGABRT" in str(exc)
        left = {p.name: p.stat().st_size for p in cache.iterdir()}
        whole = all(sizes.get(name) == n for name, n in left.items() if not name.endswith(".crc32"))
        return said and whole and (precheck == (not any(name.endswith(".tflite") for name in left)))
    assert _in_child(child) == 0
    (small_disk / "filler").unlink()
    xs = [np.zeros(d["shape"], d["dtype"]) for d in litert_interpreter(model.raw).get_input_details()]
    with SwapInterpreter(path, ram_budget=budget, xnnpack_cache_dir=cache) as swap:
        swap.allocate_tensors()
        assert _run(swap, xs) == _stock(model, xs)
