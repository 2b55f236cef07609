"""A TFLM project in one call, and its example built and run on the host.

`export_project` is what `tflm-swap convert MODEL --target tflm -o DIR` does: rewrite the model for
TFLM (`rewrite_for_tflm`), size the arena (measured on the host TFLM, else predicted by the planner)
and write the sources (`generate_project`). `run_example` compiles the generated `main.cc` against
the host TFLM with a file-backed flash driver, runs it on one input and parses what it prints.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..converters.convert import SegmentedModel
from ..converters.keras import to_tflite
from ..converters.tflm import MicroModel, rewrite_for_tflm
from ..converters.tflm_tiles import TileChoice
from ..errors import BudgetError, TflmSwapError
from ..format.flash_image import DEFAULT_ALIGNMENT
from ..format.model import Model
from ..format.segments import DEFAULT_MIN_SEGMENT_BYTES
from ..units import parse_size
from .codegen import check_options, generate_project
from .predict import predict_arena
from .tiles import choose_tiles, normalize_tiles, stock_tail
from .toolchain import NativeToolError, build_example

PREDICTION_MARGIN = 1024  # bytes: TFLM builds differ by a few hundred bytes of persistent data


@dataclass(frozen=True)
class TflmProject:
    """A generated TFLM project (see `export_project`)."""

    out_dir: Path
    prefix: str  # C identifier prefix of the generated names ({prefix}_model_data, {prefix}_image.bin, ...)
    files: list[Path]  # every file written
    micro: MicroModel  # the rewritten graph and flash image
    arena_size: int  # bytes, as in {PREFIX}_ARENA_SIZE of {prefix}_tswap.h
    arena_measured: bool  # True: measured on the host TFLM; False: predicted by the planner, or given
    arena_note: str = ""  # why the arena was predicted (the host TFLM's error); "" otherwise
    mcu_arena_size: int | None = None  # 32-bit targets' arena in the header: the smallest that runs on arena_board
    arena_board: str = ""  # the board (32-bit, under QEMU) mcu_arena_size was measured on; "": none
    board_note: str = ""  # why the arena was not measured on a board ("" when it was, or was given)

    @property
    def graph_bytes(self) -> int:
        """Size of the rewritten graph ({prefix}_model_data.cc; internal flash)."""
        return len(self.micro.graph)

    @property
    def image_bytes(self) -> int:
        """Size of the flash image ({prefix}_image.bin; external flash)."""
        return len(self.micro.image)

    @property
    def load_ops(self) -> int:
        """Number of load operators inserted in the graph."""
        return len(self.micro.loads)

    @property
    def flash_bytes_per_inference(self) -> int:
        """Image bytes the load operators read per inference."""
        return self.micro.flash_bytes_per_inference

    @property
    def image_path(self) -> Path:
        return self.out_dir / f"{self.prefix}_image.bin"

    @property
    def header_path(self) -> Path:
        """{prefix}_tswap.h: segment table, image size and CRC32, arena size."""
        return self.out_dir / f"{self.prefix}_tswap.h"


class ArenaSize(NamedTuple):
    """The arena `measured_arena` found: its size, and how (`note`: why it was not measured)."""

    size: int
    measured: bool
    note: str = ""


def export_project(
    model: bytes | str | os.PathLike[str] | SegmentedModel,
    out_dir: str | os.PathLike[str],
    *,
    prefix: str | None = None,
    prefetch: bool = False,
    verify_crc: bool = False,
    alignment: int = DEFAULT_ALIGNMENT,
    arena_size: int | None = None,
    min_segment_bytes: int = DEFAULT_MIN_SEGMENT_BYTES,
    source: str | os.PathLike[str] | None = None,
    ram_budget: int | str | None = None,
    tiles: Mapping[int, int | TileChoice] | None = None,
    offline_plan: bool | None = None,
    arena_board: str | None = "auto",
) -> TflmProject:
    """Write a TFLite Micro project for `model` into `out_dir`, with its weights in a flash image.

    `model`: `.tflite` bytes (plain or segmented), a path to a `.tflite` file, or the
    `SegmentedModel` that `tflm_swap.convert` returns (its segmented `.data` is rewritten, as
    `tflm-swap convert --target tflm` does). The options are those of that command:
    `prefix` (C identifier; default: from the model file's name, else "model"), `prefetch`
    (asynchronous reads one operator early), `verify_crc` (check each segment's CRC32 at every load),
    `alignment` of the segments in the image, `arena_size` (default: measured on the host TFLM, or
    predicted by the planner plus `PREDICTION_MARGIN` when the host TFLM is missing) and
    `min_segment_bytes` (smaller weights stay inline in the graph).
    `tiles` ({source operator: tile count or TileChoice}) computes those operators in weight tiles
    (counts take `prefetch`); `ram_budget` (bytes, or "48KiB") instead picks the tiles with
    `tiles.choose_tiles` and raises `BudgetError` naming the smallest reachable arena when even the
    finest tiles do not fit, or when the arena measured on the host TFLM exceeds the budget.
    `offline_plan` (default: on with `ram_budget`, else off) writes the planner's packed arena
    layout into the graph as TFLM's `OfflineMemoryAllocation` plan.

    `arena_board`: where the header's arena for 32-bit targets is measured when `arena_size` is not
    given: "auto" (default) builds the project for the emulated Cortex-M4 `mps2-an386` and measures
    the smallest arena that runs there (`mcu_arena_size`; `tflm_swap.micro.mcu`) when the
    arm-none-eabi toolchain, QEMU and the pinned TFLM archives are available, else keeps the 64-bit
    host figure for every target and says why in `board_note`; a board name requires that board;
    None keeps the host figure. `arena_size` stays the host figure (64-bit builds of the example).

    `source`: the file the model came from, when `model` is not a path: names the default prefix
    and error messages. No output is written over `model`'s or `source`'s file: every destination
    is checked before the first file is written. Raises `TflmSwapError` (or a subclass) on a bad
    model, option or output.
    """
    origin = os.fspath(source) if source is not None else None
    if isinstance(model, (str, os.PathLike)):
        origin = origin or os.fspath(model)
    prefix = prefix if prefix is not None else _identifier(Path(origin).stem) if origin else "model"
    check_options(prefix, arena_size)  # before the rewrite and the arena measurement, which take time
    budget = _budget(ram_budget, tiles)
    chosen = normalize_tiles(tiles, prefetch)
    parsed = _source_model(model, origin or "<bytes>")  # parsed once, handed on
    options = dict(min_segment_bytes=min_segment_bytes, prefetch=prefetch, verify_crc=verify_crc, alignment=alignment,
                   offline_plan=budget is not None if offline_plan is None else offline_plan)
    if budget is not None:
        micro = choose_tiles(parsed, budget, stock_tail(parsed), **options).micro
    else:
        micro = rewrite_for_tflm(parsed, tiles=chosen, **options)
    arena = ArenaSize(arena_size, False) if arena_size is not None else measured_arena(micro, parsed)
    if budget is not None and arena.measured and arena.size > budget:
        raise BudgetError(f"the arena measured on the host TFLM, {arena.size} bytes, exceeds the RAM budget "
                          f"{budget} bytes that the planner's prediction fitted")
    inputs = (origin,) if origin else ()
    files = generate_project(micro, out_dir, prefix, arena.size, inputs=inputs)
    project = TflmProject(Path(out_dir), prefix, files, micro, arena.size, arena.measured, arena.note)
    return project if arena_size is not None or arena_board is None else _board_arena(project, arena_board, inputs)


def _board_arena(project: TflmProject, arena_board: str, inputs: tuple[str, ...]) -> TflmProject:
    """`project` with the arena measured on the board (header rewritten), or unchanged with a
    `board_note` when `arena_board` is "auto" and the board cannot be used here."""
    from . import mcu

    name = mcu.DEFAULT_BOARD if arena_board == "auto" else arena_board
    why = mcu.available(name)
    if why:
        if arena_board != "auto":
            raise NativeToolError(f"cannot measure the arena on {name}: {why}")
        return replace(project, board_note=why)
    try:
        size = mcu.measure_arena(project, name, start=project.arena_size)
    except TflmSwapError as exc:  # e.g. an operator without a reference kernel in the pinned TFLM
        if arena_board != "auto":
            raise
        return replace(project, board_note=f"building or running it on {name} failed: {str(exc)[:500]}")
    origin = f"measured on {name} under QEMU, the smallest arena that runs there"
    files = generate_project(project.micro, project.out_dir, project.prefix, project.arena_size, inputs=inputs,
                             mcu_arena=(size, origin))
    return replace(project, files=files, mcu_arena_size=size, arena_board=name)


def _budget(ram_budget: int | str | None, tiles) -> int | None:
    """The RAM budget in bytes (None: none given); refuses a budget with explicit tiles."""
    if ram_budget is None:
        return None
    if tiles:
        raise TflmSwapError("give either tiles or a RAM budget (which picks the tiles), not both")
    budget = parse_size(ram_budget) if isinstance(ram_budget, str) else ram_budget
    if not isinstance(budget, int) or budget <= 0:
        raise TflmSwapError(f"RAM budget {ram_budget!r} must be a positive number of bytes")
    return budget


def measured_arena(micro: MicroModel, source: bytes | Model) -> ArenaSize:
    """The arena the host TFLM allocates for the rewritten graph (one inference on zero inputs).

    Without the host TFLM (xmos-ai-tools, compilers), the planner's prediction is used instead,
    with the stock model's persistent arena taken from the official tflite-micro interpreter and a
    `PREDICTION_MARGIN` for the difference between TFLM builds; then `measured` is False and `note`
    says why the host TFLM was unavailable."""
    from .host import io_specs, run_host_tflm

    try:
        zeros = [np.zeros(shape, dtype) for shape, dtype in io_specs(_graph(micro), "inputs")]
        run = run_host_tflm(micro.graph, micro.image, [zeros], graph_model=micro.graph_model)
        return ArenaSize(run.arena_total, True)
    except NativeToolError as exc:
        try:
            from ..interpreters import tflm_arena

            source = source if isinstance(source, Model) else Model.from_bytes(source)
            plain = bytes(source.without_external())  # TFLM cannot read Buffer.offset
            predicted = predict_arena(micro, source, stock_tail=tflm_arena(plain).tail).total
        except Exception as inner:  # tflite-micro missing or failing: nothing left to estimate with
            raise TflmSwapError(f"cannot measure the arena on the host TFLM ({exc}) nor predict it "
                                f"({inner}); give the arena size (--arena-size, arena_size=)") from exc
        return ArenaSize(predicted + PREDICTION_MARGIN, False, f"host TFLM unavailable ({exc})")


@dataclass(frozen=True)
class ExampleRun:
    """What the generated example printed for one inference, parsed."""

    outputs: list[np.ndarray]  # one per model output, with the graph's shape and dtype
    arena_used_bytes: int  # MicroInterpreter::arena_used_bytes()
    flash_bytes_read: int  # image bytes the load operators read (main.cc's whole-image CRC check not counted)
    stdout: str
    executable: Path


def run_example(project: TflmProject, x: np.ndarray | None = None, *, timeout: float = 120) -> ExampleRun:
    """Build the project's `main.cc` on the host (cached by content; `native.build_example`) and run
    it once with `project.image_path` as the flash and `x` as input 0 (None: zeros; the example
    feeds no other input). Raises `NativeToolError` when the host toolchain (gcc/g++, xmos-ai-tools'
    TFLM, gemmlowp headers) is missing and `TflmSwapError` when the example fails."""
    from .host import io_specs

    blob = None
    if x is not None:
        shape, dtype = io_specs(_graph(project.micro), "inputs")[0]
        try:
            blob = np.ascontiguousarray(x, dtype=dtype).reshape(shape).tobytes()
        except ValueError as exc:
            raise TflmSwapError(f"input 0 has shape {shape}, got an array of shape {np.shape(x)}") from exc
    exe = build_example(project.out_dir, project.prefix)
    with tempfile.TemporaryDirectory(prefix="tswap_example_") as tmp:
        argv = [str(exe), str(project.image_path)]
        if blob is not None:
            (Path(tmp) / "input.bin").write_bytes(blob)
            argv.append(str(Path(tmp) / "input.bin"))
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout)
    if proc.returncode != 0:
        raise TflmSwapError(f"the generated example failed: {(proc.stdout + proc.stderr).strip()[-2000:]}")
    return _parse_example(proc.stdout, io_specs(_graph(project.micro), "outputs"), exe)


def _graph(micro: MicroModel) -> Model | bytes:
    """The rewritten graph, parsed when the rewrite kept its parse."""
    return micro.graph_model if micro.graph_model is not None else micro.graph


def _parse_example(stdout: str, specs, exe: Path) -> ExampleRun:
    """main.cc prints `output N: v v ...` (int8 and float32 as numbers, other types byte by byte),
    then `arena_used_bytes: N` and `flash_bytes_read: N`."""
    outputs = []
    for n, (shape, dtype) in enumerate(specs):
        found = re.search(rf"^output {n}:(.*)$", stdout, re.MULTILINE)
        if found is None:
            raise TflmSwapError(f"the generated example printed no output {n}: {stdout[-2000:]}")
        words = found.group(1).split()
        if dtype in (np.int8, np.float32):
            values = np.array([float(w) if dtype == np.float32 else int(w) for w in words], dtype)
        else:
            values = np.frombuffer(bytes(int(w) for w in words), dtype)
        outputs.append(values.reshape(shape))
    figures = {}
    for key in ("arena_used_bytes", "flash_bytes_read"):
        found = re.search(rf"^{key}: (\d+)$", stdout, re.MULTILINE)
        if found is None:
            raise TflmSwapError(f"the generated example printed no {key}: {stdout[-2000:]}")
        figures[key] = int(found.group(1))
    return ExampleRun(outputs, figures["arena_used_bytes"], figures["flash_bytes_read"], stdout, exe)


def _source_model(model, origin: str) -> Model:
    """The model to rewrite, parsed (a SegmentedModel's parse is reused; `origin` names it)."""
    if isinstance(model, SegmentedModel):
        parsed = copy.copy(model.model)
        parsed.source = origin
        return parsed
    if isinstance(model, (bytes, bytearray, memoryview)):
        return Model.from_bytes(bytes(model), source=origin)
    if isinstance(model, (str, os.PathLike)):
        return Model.from_bytes(to_tflite(Path(os.fspath(model))), source=origin)
    raise TflmSwapError(f"cannot export a {type(model).__name__}: pass .tflite bytes, a .tflite path or "
                        "the SegmentedModel of tflm_swap.convert")


def _identifier(stem: str) -> str:
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in stem) or "model"
    return name if not name[0].isdigit() else f"m_{name}"
