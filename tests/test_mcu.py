"""Generated TFLM projects on an emulated Cortex-M4 (mps2-an386 under QEMU, 32-bit).

Every MLPerf Tiny int8 model's project (blocking and prefetch) and the stock model run on TFLM
built from the pinned archives in ../shared/vendor; their outputs must be bit-identical to the host
TFLM running the original model, and the header's arena must be the smallest that runs on 32-bit.
The C core's unit tests (with the file flash driver) run there too: `long` is 32 bits.

Needs gcc-arm-none-eabi, libnewlib-arm-none-eabi, libstdc++-arm-none-eabi-newlib and qemu-system-arm
(skipped without them, failed under CI) and ../shared/vendor (`missing_shared`). TFLM is compiled
once and cached in the build directory (TFLM_SWAP_MCU_BUILD, else build/mcu in the checkout).
"""

from __future__ import annotations

import json
from contextlib import redirect_stdout
from io import StringIO

import numpy as np
import pytest
from conftest import require_model

from tflm_swap.errors import TflmSwapError
from tflm_swap.micro import export_project, run_host_tflm
from tflm_swap.micro.host import io_specs

pytestmark = pytest.mark.native

INT8_MODELS = ("ad01_int8", "kws_ref_model", "pretrainedResnet_quant", "vww_96_int8")
N_INPUTS = 5
NO_LOADS = 1 << 30  # min_segment_bytes that keeps every weight in the graph: the stock model


def _inputs(graph: bytes, seed: int) -> list[np.ndarray]:
    (shape, dtype), = io_specs(graph, "inputs")
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    if info is None:
        return [rng.standard_normal(shape).astype(dtype) for _ in range(N_INPUTS)]
    return [rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype) for _ in range(N_INPUTS)]


@pytest.fixture(scope="session")
def model_runs(mcu, tmp_path_factory):
    """Per model: the stock, blocking and prefetch projects (header arena measured on the board),
    their runs on N_INPUTS inputs under QEMU, and the host TFLM's outputs for the original model."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            path = require_model(name)
            data = path.read_bytes()
            inputs = _inputs(data, seed=len(name))
            host = run_host_tflm(data, None, [[x] for x in inputs])
            out = tmp_path_factory.mktemp(name)
            projects = {
                # stock: the host figure (runs); its smallest 32-bit arena takes a search (benchmarks/micro_qemu.py)
                "stock": export_project(path, out / "stock", min_segment_bytes=NO_LOADS, arena_board=None),
                "blocking": export_project(path, out / "blocking"),
                "prefetch": export_project(path, out / "prefetch", prefetch=True),
            }
            runs = {k: mcu.run_project(p, inputs) for k, p in projects.items()}
            cache[name] = {"inputs": inputs, "host": host, "projects": projects, "runs": runs}
        return cache[name]

    return get


def test_c_unit_tests_pass_on_cortex_m4(mcu):
    """The C core and the file flash driver where `long` is 32 bits (the driver refused every image
    there while it compared the size with (long)UINT32_MAX)."""
    status, output = mcu.run_unit_tests()
    assert status == 0, output
    assert "ok: 0 failure(s)" in output


@pytest.mark.parametrize("name", INT8_MODELS)
@pytest.mark.parametrize("variant", ["stock", "blocking", "prefetch"])
def test_outputs_match_host_tflm_bit_for_bit(model_runs, name, variant):
    got = model_runs(name)
    run, project = got["runs"][variant], got["projects"][variant]
    assert len(run.outputs) == N_INPUTS
    for n, (ours, host) in enumerate(zip(run.outputs, got["host"].outputs)):
        for k, (a, b) in enumerate(zip(ours, host)):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.array_equal(a, b), f"{name} {variant}: inference {n} output {k} differs from the host TFLM"
    assert run.flash_bytes_read == N_INPUTS * project.flash_bytes_per_inference
    assert len(run.invoke_ticks) == N_INPUTS and min(run.invoke_ticks) > 0
    if variant == "stock":
        assert project.load_ops == 0 and run.flash_bytes_read == 0


@pytest.mark.parametrize("name", INT8_MODELS)
@pytest.mark.parametrize("variant", ["blocking", "prefetch"])
def test_header_arena_is_the_smallest_that_runs_on_32_bit(mcu, model_runs, name, variant):
    got = model_runs(name)
    project, run = got["projects"][variant], got["runs"][variant]
    header = project.header_path.read_text()
    upper = project.prefix.upper()
    assert f"#define {upper}_ARENA_SIZE {project.mcu_arena_size}u /* 32-bit: measured on mps2-an386" in header
    assert f"#define {upper}_ARENA_SIZE {project.arena_size}u /* 64-bit host" in header
    assert project.arena_board == "mps2-an386"
    # sufficient (the run above used the header's figure: the firmware is 32-bit) and at most 64
    # bytes above the smallest that runs
    assert run.arena_used_bytes <= project.mcu_arena_size <= run.smallest_arena + 64
    assert project.mcu_arena_size % mcu.ARENA_ALIGNMENT == 0
    # 16 bytes less does not run: the figure is the smallest arena
    with pytest.raises(TflmSwapError, match="arena too small"):
        mcu.run_project(project, None, arena_size=project.mcu_arena_size - mcu.ARENA_ALIGNMENT)
    # and it is below the 64-bit host figure, which the header carried alone before
    assert project.mcu_arena_size < project.arena_size


def test_cli_mcu_run_prints_the_run(mcu, model_runs, tmp_path):
    from tflm_swap.cli import main

    got = model_runs("kws_ref_model")
    project = got["projects"]["prefetch"]
    np.save(tmp_path / "inputs.npy", np.stack(got["inputs"][:2]))
    out = StringIO()
    with redirect_stdout(out):
        status = main(["mcu", "run", str(project.out_dir), "--board", "mps2-an386", "--inputs",
                       str(tmp_path / "inputs.npy"), "--json"])
    assert status == 0
    report = json.loads(out.getvalue())
    expected = got["runs"]["prefetch"]
    assert report["outputs"] == [[o.tolist() for o in outs] for outs in expected.outputs[:2]]
    assert report["arena_used_bytes"] == expected.arena_used_bytes
    assert report["invoke_instructions"] == expected.invoke_instructions[:2]


def test_bad_project_and_board_are_named(mcu, tmp_path):
    (tmp_path / "main.cc").write_text("int main() { return 0; }\n")
    with pytest.raises(TflmSwapError, match=str(tmp_path)):
        mcu.run_project(tmp_path)
    with pytest.raises(TflmSwapError, match="unknown board 'nrf52'"):
        mcu.board("nrf52")


def test_print_32_bit_figures_next_to_stock(model_runs, capsys):
    """The CI log's table: 32-bit arenas and instructions per inference, stock TFLM vs ours."""
    lines = ["", "| model | host arena (64-bit) | ours 32-bit | prefetch 32-bit | stock used 32-bit | "
             "instr stock | instr blocking | instr prefetch |", "|---|---|---|---|---|---|---|---|"]
    for name in INT8_MODELS:
        got = model_runs(name)
        p, r = got["projects"], got["runs"]
        instr = {k: int(np.median(r[k].invoke_instructions)) for k in r}
        assert all(v > 0 for v in instr.values())
        assert p["blocking"].mcu_arena_size < p["blocking"].arena_size
        lines.append(f"| {name} | {p['blocking'].arena_size:,} | {p['blocking'].mcu_arena_size:,} | "
                     f"{p['prefetch'].mcu_arena_size:,} | {r['stock'].arena_used_bytes:,} | {instr['stock']:,} | "
                     f"{instr['blocking']:,} | {instr['prefetch']:,} |")
    with capsys.disabled():
        print("\n".join(lines))


def test_auto_board_falls_back_to_the_host_figure_when_the_board_fails(monkeypatch, tmp_path):
    """arena_board='auto' must not make an export fail when the board build does (say, an operator
    without a reference kernel): the host figure stays, with the reason; a named board raises."""
    from tflm_swap.micro import mcu as module

    def broken(*args, **kwargs):
        raise TflmSwapError("no reference kernel defines Register_FOO")

    monkeypatch.setattr(module, "available", lambda name="": "")
    monkeypatch.setattr(module, "measure_arena", broken)
    kws = require_model("kws_ref_model")
    project = export_project(kws, tmp_path / "auto")
    assert project.mcu_arena_size is None and "Register_FOO" in project.board_note
    assert "UINTPTR_MAX" not in project.header_path.read_text()
    assert f"_ARENA_SIZE {project.arena_size}u" in project.header_path.read_text()
    with pytest.raises(TflmSwapError, match="Register_FOO"):
        export_project(kws, tmp_path / "named", arena_board="mps2-an386")


def test_cortex_m7_runs_bit_exact_with_its_own_arena(mcu, model_runs, tmp_path):
    """mps2-an500 (Cortex-M7, fpv5-d16): TFLM and the project built for it, the header's 32-bit arena
    measured there, the outputs those of the host TFLM."""
    got = model_runs("kws_ref_model")
    project = export_project(require_model("kws_ref_model"), tmp_path / "m7", prefetch=True, arena_board="mps2-an500")
    assert project.arena_board == "mps2-an500" and project.mcu_arena_size < project.arena_size
    run = mcu.run_project(project, got["inputs"], board_name="mps2-an500")
    for ours, host in zip(run.outputs, got["host"].outputs):
        assert np.array_equal(ours[0], host[0])
    assert run.arena_used_bytes <= project.mcu_arena_size <= run.smallest_arena + 64
    print(f"\nkws prefetch on mps2-an500: arena {project.mcu_arena_size:,} B, "
          f"{int(np.median(run.invoke_instructions)):,} instructions per inference")


def test_cmsis_nn_kernels_are_bit_exact_stock_and_ours(mcu, model_runs, tmp_path):
    """TFLM's CMSIS-NN kernels (the CMSIS-NN library built from its pinned archive): the blocking
    project and the stock model give the host's reference-kernel outputs, in far fewer instructions;
    the arena is measured with them (scratch buffers), not read from the header."""
    got = model_runs("kws_ref_model")
    runs = {}
    for variant in ("stock", "blocking"):
        project = got["projects"][variant]
        arena = mcu.measure_arena(project, kernels="cmsis-nn")
        runs[variant] = mcu.run_project(project, got["inputs"], kernels="cmsis-nn", arena_size=arena)
        for ours, host in zip(runs[variant].outputs, got["host"].outputs):
            assert np.array_equal(ours[0], host[0])
    instr = {k: int(np.median(r.invoke_instructions)) for k, r in runs.items()}
    reference = int(np.median(got["runs"]["blocking"].invoke_instructions))
    assert instr["blocking"] < reference / 2
    print(f"\nkws with CMSIS-NN on mps2-an386: {instr['stock']:,} instructions stock, {instr['blocking']:,} ours "
          f"(reference kernels: {reference:,})")


def test_compressed_project_decodes_bit_exact_on_cortex_m4(mcu, tmp_path):
    """A 4-bit per-channel KWS on the Cortex-M4: encoded loads prefetched and decoded in place by
    their WAIT and, for its widest operator, encoded tiles decoded in place tile by tile with the
    prefetch path, CRCs checked; outputs those of the host TFLM running the compressed model, fewer
    flash bytes than raw tiles."""
    import tflm_swap
    from tflm_swap.converters.tflm_tiles import TileChoice
    from tflm_swap.format.model import Model
    from tflm_swap.micro import rewrite_for_tflm
    from tflm_swap.micro.tiles import tileable_operators

    result = tflm_swap.convert(str(require_model("kws_ref_model")), compress_bits=4)
    inputs = _inputs(result.original, seed=18)[:2]
    host = run_host_tflm(result.original, None, [[x] for x in inputs])
    tileable = tileable_operators(Model.from_bytes(result.original))
    tiles = {max(tileable, key=lambda k: tileable[k].channels): TileChoice(2, True)}
    project = export_project(result, tmp_path / "kws4", tiles=tiles, prefetch=True, verify_crc=True, arena_board=None)
    run = mcu.run_project(project, inputs)
    for n, (ours, ref) in enumerate(zip(run.outputs, host.outputs)):
        assert np.array_equal(ours[0], ref[0]), f"inference {n}: the decoded model differs on the Cortex-M4"
    assert run.flash_bytes_read == len(inputs) * project.flash_bytes_per_inference
    raw = rewrite_for_tflm(result.model, tiles=tiles, prefetch=True, encode=False)
    assert project.flash_bytes_per_inference < raw.flash_bytes_per_inference
