"""SwapInterpreter: run a segmented model on LiteRT while holding only a budget of its weights.

The graph is cut into stages (planner.partition_stages). Each stage is a standalone sub-model whose
flatbuffer template is built once. A *streamed* stage is loaded before each run: positioned reads
of its segments, straight into the bytes object the interpreter will use (one of prefetch + 1
reused slots), a CRC32 check of each segment, and building the stage's interpreter. A background
thread prepares the next `prefetch` streamed stages while the current one runs (reads and CRCs
release the GIL, and so does LiteRT's invoke); a finished stage is released. When the budget has
room beside the slots, the planner keeps some stages *resident*: read and checked once, kept with
their interpreter. When the whole model fits, it is one resident stage.

With `xnnpack_cache_dir`, stages are instead built once and only the pages of XNNPACK's packed
weights are loaded and released (runtime.compiled); the scheduling below is the same.

What the budget covers: weights (resident stages and slots; with XNNPACK, its packed copy too,
which is the only copy held when stages are paged).
Not covered: activations, and SwapInterpreter's own fixed memory. Activations: one streamed
stage's arena is live at a time -- with the builtin kernels a stage's tensors are allocated when it
is taken (the first stage's when its inputs are set); with XNNPACK a prefetched stage is allocated
on the prefetch thread (that is where it packs), its arena untouched until it runs. Fixed memory:
the stage templates, the prefetch thread, and per stage an interpreter's structures. Inputs set
for a streamed first stage go straight into its interpreter, as with LiteRT; the caller's array
is remembered (not copied) with its CRC32, to feed a later invoke that reuses it.
Speed: each streamed stage's arena is fresh memory, faulted in as the stage runs; a huge-page hint
makes that one fault per 2 MiB (MobileNetV2 at the prefetch-1 minimum: 2,090 -> 660 faults and
-1.5 ms per invoke).
"""

from __future__ import annotations

import copy
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tflm_swap.converters.submodel import TEMPLATE_ALIGNMENT, extract_template, stage_io

from ..errors import BudgetError, SegmentIntegrityError, TflmSwapError
from ..format.manifest import Manifest, Segment, read_model_head
from ..format.model import Model
from ..format.schema import text
from ..format.segments import check_against_graph, check_graph_digest, check_segment, decode_segment
from ..interpreters import litert_interpreter
from ..planner import (
    Plan,
    Stage,
    min_stage_budget,
    partition_stages,
    plan_model,
    streamed_bytes,
)
from ..planner import stages as stage_policy  # cost models read at call time (tests patch them)
from .compiled import CompiledStage, StageOutput, XnnpackCache, packed_estimate
from .crc import crc32
from .details import SwapSignatureRunner, signatures, tensor_details
from .paging import InlineExecutor, PageIn
from .process_memory import (
    advise_huge_pages,
    arena_tensors,
    bytes_address,
    bytes_view,
    pin_mmap_threshold,
    tensor_span,
    trim_heap,
    writable_bytes,
    zero_pages,
)
from .stage_files import StageFile, model_identity, read_stage_index


@dataclass
class _Template:
    stage: Stage
    graph: bytes
    base: int
    placement: dict[int, int]  # segment id -> offset in the weights blob
    blob_size: int
    inputs: list[int]  # parent tensor indices, in the sub-model's input order
    outputs: list[int]


@dataclass
class _Loaded:
    interpreter: object
    data: bytes  # keeps the model bytes (and so the weights) alive while the interpreter runs
    input_index: list[int]
    output_index: list[int]
    weight_bytes: int  # of `data`, the part that is the weights blob
    allocated: bool = True
    stage: int = 0
    fed: set[int] = field(default_factory=set)  # model inputs set_tensor wrote into this interpreter


@dataclass
class _Borrowed:
    """An input set_tensor wrote straight into a streamed first stage: the caller's array (not a
    copy: a copy would sit beside the first stage's arena at the peak) and its CRC32 then, to
    feed a later invoke that reuses it, and get_tensor."""

    array: np.ndarray
    crc: int

    def value(self, tensor_index: int) -> np.ndarray:
        if crc32(np.ascontiguousarray(self.array)) != self.crc:
            raise TflmSwapError(
                f"input {tensor_index} was changed in place after set_tensor; the streamed first stage "
                "holds the value set, not a copy: call set_tensor again before invoke")
        return self.array


@dataclass
class _StageStats:
    loads: int = 0
    load_s: float = 0.0
    compute_s: float = 0.0


@dataclass
class _Counters:
    flash_bytes_read: int = 0
    resident_bytes: int = 0
    peak_weight_bytes: int = 0
    invokes: int = 0
    fresh_buffers: int = 0
    stages: list[_StageStats] = field(default_factory=list)


class SwapInterpreter:
    """Drop-in for LiteRT's `Interpreter` on a segmented model, within a RAM budget for weights.

    Args:
        model_path: a segmented `.tflite` (see `tflm_swap.convert`).
        ram_budget: bytes of weights that may be held at once; None holds the whole model.
        prefetch: stages prepared ahead of the running one (0: load, then run, one at a time).
        backend: 'auto', 'ai_edge_litert', 'tflite_runtime' or 'tensorflow'.
        num_threads: passed to each stage's interpreter.
        delegates: LiteRT delegates (e.g. from `load_delegate`) applied to every stage.
        reference_kernels: use TFLite's reference kernels (bit-exact with TFLite Micro for int8).
        default_delegates: False runs without XNNPACK. XNNPACK packs its own copy of a stage's
            weights, so with it each stage costs twice its weights against the budget.
        xnnpack_cache_dir: with XNNPACK, build every stage once, on LiteRT's CompiledModel, with
            its packed weights in a file in this directory, and page those weights in (CRC-checked)
            and out instead of rebuilding and repacking the stage at every load (see
            runtime.compiled). A stage then costs its packed weights only against the budget, not
            twice its weights. Needs the ai_edge_litert backend on Linux.
        stage_files: a directory `tflm-swap stages` wrote for this model: its stages (cut for the
            budget given there) then run from their files, or from their Edge TPU-compiled files
            once sealed (see runtime.stage_files), each load checked against the recorded size and
            CRC32; `ram_budget` is then only reported.

    Compare outputs with a stock interpreter using the same kernels (same `reference_kernels` and
    `default_delegates`): then they are bit-identical.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        ram_budget: int | None = None,
        prefetch: int = 1,
        backend: str = "auto",
        num_threads: int | None = None,
        delegates: list | None = None,
        reference_kernels: bool = False,
        default_delegates: bool = True,
        xnnpack_cache_dir: str | os.PathLike | None = None,
        stage_files: str | os.PathLike | None = None,
    ):
        self._path = Path(model_path)
        self._options = {"backend": backend, "num_threads": num_threads, "delegates": delegates,
                         "reference_kernels": reference_kernels, "default_delegates": default_delegates}
        self.ram_budget, self.prefetch = ram_budget, prefetch
        copies = _weight_copies(default_delegates, reference_kernels)
        self._xnnpack_cache = self._cache(xnnpack_cache_dir, backend, delegates, stage_files, copies)
        self.weight_copies = 1 if self._xnnpack_cache is not None else copies  # paged: the packed copy only
        # XNNPACK packs its copy of the weights in allocate_tensors: do that on the prefetch thread.
        # The builtin kernels only plan the activation arena there (well under a millisecond), so a
        # streamed stage is allocated when it is taken, after the previous stage was released.
        self._allocate_early = self.weight_copies > 1
        self._fd = os.open(self._path, os.O_RDONLY)
        # closed when this object goes, whichever thread drops it last (a prefetch thread can: see close)
        self._close_fd = weakref.finalize(self, os.close, self._fd)
        try:
            self.manifest, self._model, self.plan = _graph_and_plan(self._fd, self._path)
            self._stage_files: list[StageFile] | None = None
            if stage_files is None:
                self.stages = self._partition()
            else:  # the stages were cut when the files were exported, from this model (its graph, checked)
                self.stages, self._stage_files = read_stage_index(stage_files, self.plan,
                                                                  model_identity(self._model.raw))
        except BaseException:
            self._close_fd()
            raise
        self._model_inputs, self._model_outputs = list(self._model.inputs), list(self._model.outputs)
        self._detail_cache = {t: tensor_details(self._model, t) for t in self._model_inputs + self._model_outputs}
        self._signature_cache = signatures(self._model)
        self.resident = all(s.resident for s in self.stages)  # the whole model, loaded once
        self._streamed = [i for i, s in enumerate(self.stages) if not s.resident]
        self._templates: list[_Template] = []
        self._last_use: list[list[int]] = []  # per stage: crossing tensors read for the last time there
        self._executor: ThreadPoolExecutor | InlineExecutor | None = None
        self._worker_threads: set[int] = set()  # idents of this interpreter's prefetch threads
        self._closed = False
        self._resident_loaded: dict[int, _Loaded] = {}  # resident stages loaded (kept across a fork)
        self._pending: dict[int, Future | PageIn] = {}
        self._slots: list[bytes | None] = []  # model bytes reused across loads (see _buffer)
        self._slot_used: list[int] = []
        self._slot_size = 0  # bytes of each slot: the largest streamed stage's model
        self._waited = False  # this invoke waited for a prefetched stage's load
        self._give_back = True  # slots give back pages a larger stage used (see _buffer)
        self._loads = 0
        self._lock = threading.Lock()
        self._counters = _Counters(stages=[_StageStats() for _ in self.stages])
        self._inputs: dict[int, np.ndarray | None] = {}  # None: held by the first stage's interpreter
        self._borrowed: dict[int, _Borrowed] = {}
        self._later_inputs: set[int] = set()
        self._values: dict[int, np.ndarray] = {}
        self._arena_ends: dict[int, tuple[int, int]] = {}  # stage -> (tensor at arena start, at end)
        self._compiled: dict[int, CompiledStage] = {}  # with xnnpack_cache_dir: every stage, built once
        self._packed_crcs: dict[int, int] = {}  # stage -> CRC32 of its packed-weight file
        _LIVE.add(self)  # made fork-safe in a forked child (see _after_fork)

    # ------------------------------------------------------------------------ Interpreter surface
    def allocate_tensors(self) -> None:
        """Build the stage templates and start preparing the first stages."""
        self._check_open()
        if self._templates:
            return
        templates = [self._template(s) for s in self.stages]
        if self._xnnpack_cache is not None:
            self._build_compiled(templates)
        self._templates = templates  # allocated (a failed build leaves allocate_tensors to be called again)
        self._last_use = _last_uses(self._templates, set(self._model_inputs) | set(self._model_outputs))
        # model inputs that a stage after the first reads too (e.g. every tile of a split first layer)
        self._later_inputs = {t for template in self._templates[1:] for t in template.inputs} & set(self._model_inputs)
        self._model = self.plan = None  # ~0.5 MiB of parsed graph (MobileNetV2): templates replace it
        if not self.resident:
            pin_mmap_threshold()
        self._slots = [None] * (min(self.prefetch, max(len(self._streamed) - 1, 0)) + 1)
        self._slot_used = [0] * len(self._slots)  # per slot: how far loads wrote since it last gave pages back
        self._slot_size = max((self._templates[i].base + self._templates[i].blob_size for i in self._streamed),
                              default=0)
        # a resident model is loaded once, here, on this thread, and without prefetch nothing overlaps:
        # then a prefetch thread (and its malloc arena, ~0.25 MiB) would serve no purpose
        self._executor = self._new_executor()
        self._schedule(0)
        for i, stage in enumerate(self.stages):  # resident stages: read once, now
            if stage.resident and i not in self._pending:
                self._pending[i] = self._start_load(i, -1)

    def get_input_details(self) -> list[dict]:
        return [self._details(t) for t in self._model_inputs]

    def get_output_details(self) -> list[dict]:
        return [self._details(t) for t in self._model_outputs]

    def get_tensor_details(self) -> list[dict]:
        return [self._details(t) for t in self._model_inputs + self._model_outputs]

    def set_tensor(self, tensor_index: int, value: np.ndarray) -> None:
        self._check_open()
        if tensor_index not in self._model_inputs:
            raise ValueError(f"tensor {tensor_index} is not an input of {self._path.name}")
        want = self._details(tensor_index)
        value = np.asarray(value)
        if value.dtype != want["dtype"]:
            raise ValueError(f"input {tensor_index} expects {np.dtype(want['dtype']).name}, got {value.dtype}")
        if tuple(value.shape) != tuple(want["shape"]):
            raise ValueError(f"input {tensor_index} expects shape {tuple(want['shape'])}, got {value.shape}")
        loaded = self._first_stage()
        stage_inputs = self._templates[0].inputs if self._templates else []
        self._borrowed.pop(tensor_index, None)
        if loaded is not None and tensor_index in stage_inputs:  # as LiteRT does: no copy kept
            self._allocate(loaded)
            loaded.interpreter.set_tensor(loaded.input_index[stage_inputs.index(tensor_index)], value)
            loaded.fed.add(tensor_index)
            self._inputs[tensor_index] = None
            # remember the value (a CompiledStage cannot give its inputs back)
            if not self.stages[0].resident or tensor_index in self._later_inputs or self._compiled:
                self._borrowed[tensor_index] = _Borrowed(value, crc32(np.ascontiguousarray(value)))
        else:
            self._inputs[tensor_index] = value.copy()

    def invoke(self) -> None:
        """Run every stage in order; outputs appear only when all stages succeeded."""
        self._check_open()
        if not self._templates:
            raise TflmSwapError("call allocate_tensors() before invoke()")
        missing = [t for t in self._model_inputs if t not in self._inputs]
        if missing:
            raise ValueError(f"inputs {missing} were not set")
        values = {t: v for t, v in self._inputs.items() if v is not None}
        self._waited, paged = False, bool(self._compiled)
        for i, template in enumerate(self._templates):
            self._schedule(i)
            loaded = self._take(i)
            started = time.perf_counter()
            self._allocate(loaded)
            for index, t in zip(loaded.input_index, template.inputs):
                if t in values:
                    loaded.interpreter.set_tensor(index, values[t])
                elif t not in loaded.fed:  # a first stage loaded again: inputs set for an earlier one
                    loaded.interpreter.set_tensor(index, self._borrowed[t].value(t))
            loaded.interpreter.invoke()
            # a copy made by LiteRT; a paged stage's output buffer itself, bound by the next stage
            for index, t in zip(loaded.output_index, template.outputs):
                values[t] = loaded.interpreter.output(index) if paged else loaded.interpreter.get_tensor(index)
            for t in self._last_use[i]:  # activations no later stage reads: free them now
                values.pop(t, None)
            self._counters.stages[i].compute_s += time.perf_counter() - started
            if not template.stage.resident:
                self._release(loaded, next_stage=(i + 1) % len(self._templates))
        # outputs read out of paged stages' buffers now: a later invoke that fails part way must
        # leave this one's outputs as they were
        self._values = {t: v.copy() if isinstance(v, StageOutput) else v for t, v in values.items()}
        if self._streamed:
            # once per invoke, what the released stages freed goes back to the system: on the
            # prefetch thread, after every load this invoke queued (the next invoke's first stages
            # must not wait for it: on the 72 MiB MLP in tiles, +0.3 ms per invoke when it did).
            # Within an invoke, a stage reuses the heap memory the stage before it freed (trimming
            # after every stage: +3 ms per invoke, in page faults, for MobileNetV2 in 8 stages,
            # and no lower peak)
            self._executor.submit(trim_heap)
        self._counters.invokes += 1
        self._give_back = not self._waited  # (without prefetch, loads are never waited for)

    def get_tensor(self, tensor_index: int) -> np.ndarray:
        """A copy of a model input (the value last set) or output (of the last invoke)."""
        if tensor_index in self._inputs:
            held = self._inputs[tensor_index]
            if held is not None:
                return held.copy()
            if tensor_index in self._borrowed:
                return self._borrowed[tensor_index].value(tensor_index).copy()
            if self.stages[0].resident:  # set straight into the kept first stage
                loaded = self._first_stage()
                if loaded is not None:
                    return loaded.interpreter.get_tensor(
                        loaded.input_index[self._templates[0].inputs.index(tensor_index)]).copy()
        if tensor_index in self._values:
            return self._values[tensor_index].copy()
        raise ValueError(
            f"tensor {tensor_index} is not available: only the model's inputs and outputs are kept "
            "(set the inputs, or run invoke() first)"
        )

    def get_signature_list(self) -> dict[str, dict[str, list[str]]]:
        """Signatures of the model's main subgraph, as LiteRT lists them."""
        return {key: {"inputs": list(ins), "outputs": list(outs)}
                for key, (ins, outs) in self._signatures().items()}

    def get_signature_runner(self, signature_key: str | None = None) -> SwapSignatureRunner:
        """A callable taking inputs by signature name and returning outputs by name."""
        signatures = self._signatures()
        if not signatures:
            raise ValueError(f"{self._path.name} has no signatures")
        if signature_key is None:
            if len(signatures) > 1:
                raise ValueError(f"several signatures {sorted(signatures)}: pass signature_key")
            signature_key = next(iter(signatures))
        if signature_key not in signatures:
            raise ValueError(f"no signature {signature_key!r}; the model has {sorted(signatures)}")
        return SwapSignatureRunner(self, *signatures[signature_key])

    def _signatures(self) -> dict[str, tuple[dict[str, int], dict[str, int]]]:
        return self._signature_cache

    def stats(self) -> dict:
        """Bytes read from flash, peak weight bytes held, per-stage load and compute times."""
        c = self._counters
        return {
            "flash_bytes_read": c.flash_bytes_read,
            "peak_weight_bytes": c.peak_weight_bytes,
            "ram_budget": self.ram_budget,
            "prefetch": self.prefetch,
            "weight_copies": self.weight_copies,
            "paged": bool(self._compiled),  # xnnpack_cache_dir: stages built once, packed weights paged
            "resident": self.resident,
            "resident_weight_bytes": sum(s.weight_bytes for s in self.stages if s.resident),
            "streamed_bytes_per_invoke": streamed_bytes(self.stages),
            "invokes": c.invokes,
            "fresh_buffers": c.fresh_buffers,
            "stages": [
                {"ops": [s.first, s.last], "segments": list(s.segments), "weight_bytes": s.weight_bytes,
                 "resident": s.resident,
                 "loads": st.loads, "load_s": st.load_s, "compute_s": st.compute_s}
                for s, st in zip(self.stages, c.stages)
            ],
        }

    def close(self) -> None:
        """Stop the prefetch thread, drop loaded stages and close the model file. Later calls of
        allocate_tensors, set_tensor and invoke raise TflmSwapError; outputs already read stay.

        Also run when the object is dropped, possibly on its own prefetch thread (which held the
        last reference, in a load it ran): that thread is then not waited for (it cannot join
        itself), and the model file is closed all the same (a weakref.finalize owns the fd)."""
        self._closed = True
        if self._executor is not None:
            here = threading.get_ident() in self._worker_threads
            self._executor.shutdown(wait=not here, cancel_futures=True)
            self._executor = None
        for pending in self._pending.values():
            if isinstance(pending, PageIn):  # its native thread reads the stage's mapping: wait
                pending.exception()
        self._pending.clear()
        if self._compiled:
            try:  # queued page-outs name the stages' mappings: they run before the mappings go
                CompiledStage.flush_pages()
            except TflmSwapError:  # a range left alone (remapped by LiteRT): it is unmapped now anyway
                pass
        self._compiled.clear()  # unmaps the stages' files
        self._resident_loaded.clear()
        self._close_fd()
        self._fd = -1

    def _check_open(self) -> None:
        if self._closed:
            raise TflmSwapError(f"this SwapInterpreter of {self._path.name} is closed: create a new one to run "
                                "the model again")

    def _new_executor(self) -> ThreadPoolExecutor | InlineExecutor:
        """Where loads run: a prefetch thread; or, for a resident model or without prefetch, at
        once on the calling thread (a thread, and its malloc arena, ~0.25 MiB, would serve no
        purpose: a resident model is loaded once, and without prefetch nothing overlaps)."""
        if self.resident or not self.prefetch:
            return InlineExecutor()
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="tflm_swap-prefetch",
                                  initializer=_note_thread, initargs=(self._worker_threads,))

    def _after_fork(self) -> None:
        """In a forked child: the parent's prefetch thread is not here, so its loads in flight
        would never finish and its lock may be held for good. Fresh lock and executor; loads the
        thread ran are dropped (done or not: a Future's own lock may be held too) and run again
        when needed, except resident stages loaded whole, kept as they are; the weights counted
        held are those the kept stages hold."""
        self._lock = threading.Lock()
        if self._xnnpack_cache is not None:
            self._xnnpack_cache.after_fork()
        if not isinstance(self._executor, ThreadPoolExecutor):
            return  # loads ran on the forking thread (or paged: the native pager sees to its own)
        self._worker_threads = set()
        self._executor = self._new_executor()
        if self._compiled:  # loads are page-ins on the native pager, which finishes them in a child itself
            return
        self._pending = {i: _done(loaded) for i, loaded in self._resident_loaded.items()}
        self._counters.resident_bytes = sum(loaded.weight_bytes for loaded in self._resident_loaded.values()
                                            ) * self.weight_copies

    def __enter__(self) -> SwapInterpreter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to release
            pass

    # --------------------------------------------------------------------------------- stages
    def _partition(self) -> list[Stage]:
        budget = None if self.ram_budget is None else self.ram_budget // self.weight_copies
        try:
            costs = stage_policy.XNNPACK_PAGED_COSTS if self._xnnpack_cache is not None else (
                stage_policy.BUILTIN_COSTS if self.weight_copies == 1 else stage_policy.XNNPACK_COSTS)
            return partition_stages(self.plan, budget, self.prefetch, costs)
        except BudgetError as exc:
            if self.weight_copies == 1:
                raise
            need = min_stage_budget(self.plan, self.prefetch) * self.weight_copies
            raise BudgetError(
                f"RAM budget {self.ram_budget} bytes is too small: XNNPACK keeps a packed copy of each "
                f"stage's weights, so the minimum budget is {need} bytes with prefetch {self.prefetch} "
                f"(default_delegates=False halves it). {exc}"
            ) from exc

    def _template(self, stage: Stage) -> _Template:
        inputs, outputs = stage_io(self._model, stage.first, stage.last)
        if self._stage_files is not None:  # the stage's flatbuffer comes from its file
            return _Template(stage, b"", 0, {}, 0, inputs, outputs)
        placement, buffer_offsets, end = {}, {}, 0
        for sid in stage.segments:
            seg = self.manifest.segments[sid]
            placement[sid] = end = -(-end // TEMPLATE_ALIGNMENT) * TEMPLATE_ALIGNMENT
            offsets, size = seg.decoded_offsets()  # palette-encoded entries are decoded into place
            for e, offset in zip(seg.entries, offsets):
                buffer_offsets[e.buffer] = end + offset
            end += size
        graph, base = extract_template(self._model, stage.first, stage.last, buffer_offsets)
        return _Template(stage, graph, base, placement, end, inputs, outputs)

    def _schedule(self, position: int) -> None:
        """Make sure the stage at `position` and the streamed stages after it (wrapping round to the
        next invoke's) are being prepared: `prefetch` of them, or one more while a resident stage
        runs, since it leaves its slot free; a resident stage stays loaded."""
        ahead = [i for i in self._streamed if i > position] + [i for i in self._streamed if i <= position]
        depth = self.prefetch + (self.prefetch > 0 and self.stages[position].resident)
        for i in [position] + [i for i in ahead if i != position][:depth]:
            if i not in self._pending:
                slot = -1 if self.stages[i].resident else self._loads % len(self._slots)
                self._pending[i] = self._start_load(i, slot)
                self._loads += not self.stages[i].resident

    def _start_load(self, i: int, slot: int) -> Future | PageIn:
        """Start loading stage `i` (into `slot`; -1: resident): paged, or read on the prefetch thread."""
        return self._page_in(i) if self._compiled else self._executor.submit(self._load, i, slot)

    def _first_stage(self) -> _Loaded | None:
        """The first stage, loaded intact, for set_tensor to write into (None: keep a copy instead).

        Resident: its kept interpreter. Streamed: the next invoke's first stage, prefetched at the
        end of the last invoke (waited for here, as invoke would), or loaded now without prefetch;
        allocating it now is within the budget, since no streamed stage is live between invokes.
        """
        if not self._templates:
            return None
        self._schedule(0)
        future = self._pending.get(0)
        if future is None or future.exception() is not None:  # the invoke re-raises it
            return None
        return future.result()

    def _allocate(self, loaded: _Loaded) -> None:
        """Plan a stage's tensors (builtin kernels do it when the stage is taken, see __init__)."""
        if not loaded.allocated:
            loaded.interpreter.allocate_tensors()
            loaded.allocated = True
            if not self.stages[loaded.stage].resident:
                self._advise_huge_arena(loaded)

    def _advise_huge_arena(self, loaded: _Loaded) -> None:
        """Ask for transparent huge pages on a streamed stage's activation arena.

        Each stage load builds a new interpreter whose arena is fresh memory, faulted in page by page
        as the stage runs (MobileNetV2's first stage: ~1,600 faults, +2.3 ms on a 13 ms stage). With
        MADV_HUGEPAGE one fault maps 2 MiB. The arena is found from its first and last tensors
        (found once per stage: the layout of a stage's arena does not change between loads).
        """
        interpreter = loaded.interpreter
        ends = self._arena_ends.get(loaded.stage)
        if ends is None:
            ends = self._arena_ends[loaded.stage] = arena_tensors(interpreter, loaded.data)
        if ends[0] < 0:
            return
        start, _ = tensor_span(interpreter, ends[0])
        end = sum(tensor_span(interpreter, ends[1]))
        advise_huge_pages(start, end)

    def _take(self, i: int) -> _Loaded:
        future = self._pending[i]
        if not self.stages[i].resident:
            del self._pending[i]
            self._waited |= not future.done()
        try:
            return future.result()  # re-raises a failed read or CRC check, before any output
        except BaseException:
            self._pending.pop(i, None)  # the next invoke reads the stage again
            raise

    def _load(self, i: int, slot: int) -> _Loaded:
        started = time.perf_counter()
        if self._stage_files is not None:
            return self._load_file(i, started)
        resident = self.stages[i].resident
        t = self._templates[i]
        data, view = writable_bytes(t.base + t.blob_size) if resident else self._buffer(slot, t.base + t.blob_size)
        self._read_stage(t, view)
        del view
        interpreter = litert_interpreter(data, **self._options)
        loaded = self._loaded(i, interpreter, data, _indices(interpreter.get_input_details()),
                              _indices(interpreter.get_output_details()), t.blob_size)
        self._count_load(i, sum(self.manifest.segments[s].size for s in t.placement), t.blob_size, started)
        if resident:
            self._resident_loaded[i] = loaded  # before the template goes: a fork keeps it (see _after_fork)
            t.graph = b""  # loaded for good: its flatbuffer lives on in `data` only
        return loaded

    def _read_stage(self, t: _Template, view: memoryview) -> None:
        """Write a stage's model into `view`: its graph, and its segments read and CRC-checked."""
        view[: len(t.graph)] = t.graph
        blob = view[t.base :]
        for sid, offset in t.placement.items():
            seg = self.manifest.segments[sid]
            if seg.encoded:
                decode_segment(seg, self._read_segment(seg, bytearray(seg.size)), blob[offset:],
                               f"{self._path}: segment {seg.id}")
            else:
                self._read_segment(seg, blob[offset : offset + seg.size])

    def _read_segment(self, seg: Segment, part: memoryview | bytearray) -> memoryview | bytearray:
        """Read a segment's stored bytes into `part` and check its CRC32."""
        got = os.preadv(self._fd, [part], self.manifest.image_offset + seg.offset)
        if got != seg.size:
            raise SegmentIntegrityError(
                f"{self._path}: segment {seg.id} at file offset {self.manifest.image_offset + seg.offset}: "
                f"read {got} of {seg.size} bytes (file truncated?)"
            )
        if crc32(part) != seg.crc32:
            check_segment(seg, part)  # raises SegmentIntegrityError with the segment's details
        return part

    def _build_compiled(self, templates: list[_Template]) -> None:
        """Build every stage once on CompiledModel (xnnpack_cache_dir, see runtime.compiled): write
        its model file unless a valid one exists, have XNNPACK write its packed weights unless valid
        ones exist (in a child process, see XnnpackCache.build_packed), after checking the disk has
        room for what is missing; then build it from those files, and give its pages back until it
        is loaded."""
        cache = self._xnnpack_cache
        files = [cache.paths_for(t.graph, [self.manifest.segments[s].crc32 for s in t.placement]) for t in templates]
        models = {m: t for t, (m, _) in zip(templates, files) if not cache.valid(m)}
        # a file that fails its record (a truncated one too) is deleted, so rebuilt
        packed = {p: t for t, (_, p) in zip(templates, files) if not cache.valid(p)}
        cache.check_space(sum(t.base + t.blob_size for t in models.values())
                          + sum(packed_estimate(t.blob_size) for t in packed.values()))
        for model_file, t in models.items():
            data, view = writable_bytes(t.base + t.blob_size)
            self._read_stage(t, view)
            del view
            cache.write(model_file, data)
            del data
        cache.build_packed([f for f in dict.fromkeys(files) if f[1] in packed], self._options["num_threads"])
        for i, (t, (model_file, packed_file)) in enumerate(zip(templates, files)):
            stage = CompiledStage(model_file, packed_file, self._options["num_threads"], cache.environment())
            self._packed_crcs[i] = cache.record_packed(packed_file)
            stage.page_out()
            # the page cache should hold the packed file in large pages (see refresh_page_cache):
            # XNNPACK has just written it in small pieces, or it is checked
            if packed_file in packed:
                stage.drop_page_cache()
            elif cache.huge_page_cache and stage.refresh_page_cache() is False:
                cache.record_no_huge_page_cache()
            self._compiled[i] = stage
            t.graph = b""  # the stage lives on in its files

    def _page_in(self, i: int) -> PageIn:
        """Start loading a built stage: its packed weights are faulted in on a native thread."""
        stage = self._compiled[i]
        stage.start_page_in()
        # held from now on (its pages are coming in); the time is added when the stage is taken
        self._count_load(i, stage.packed_bytes, stage.packed_bytes, time.perf_counter())
        loaded = _Loaded(stage, b"", stage.input_index, stage.output_index, stage.packed_bytes, True, i)
        # weak: a PageIn held in self._pending must not keep self alive (a cycle would leave a dropped
        # SwapInterpreter to the garbage collector, which may close its stages' files before close runs)
        return PageIn(stage, self._packed_crcs[i], loaded, _weak_call(self, "_release", loaded),
                      _weak_call(self, "_add_load_time", i))

    def _add_load_time(self, i: int, seconds: float) -> None:
        with self._lock:
            self._counters.stages[i].load_s += seconds

    def _load_file(self, i: int, started: float) -> _Loaded:
        """Load stage `i` from its stage file (see stage_files): one positioned read of the whole
        file, checked against the size and CRC32 stages.json records, before LiteRT sees it."""
        sf = self._stage_files[i]
        data, view = writable_bytes(sf.size)
        try:
            fd = os.open(sf.path, os.O_RDONLY)
        except OSError as exc:
            raise SegmentIntegrityError(f"stage {i}: cannot open {sf.path}: {exc.strerror}") from exc
        try:
            size, got = os.fstat(fd).st_size, os.preadv(fd, [view], 0)
        finally:
            os.close(fd)
        if size != sf.size or got != sf.size:
            raise SegmentIntegrityError(f"stage {i}: {sf.path} has {size} bytes; stages.json records {sf.size}")
        found = crc32(view)
        del view
        if found != sf.crc32:
            raise SegmentIntegrityError(
                f"stage {i}: {sf.path} has CRC32 {found:08x}; stages.json records {sf.crc32:08x} (the file "
                "changed after it was exported or sealed: export, or seal, again)")
        interpreter = litert_interpreter(data, **self._options)
        ins = {text(d["name"]): d["index"] for d in interpreter.get_input_details()}
        outs = {text(d["name"]): d["index"] for d in interpreter.get_output_details()}
        missing = [n for n in sf.inputs if n not in ins] + [n for n in sf.outputs if n not in outs]
        if missing:
            raise TflmSwapError(f"stage {i}: {sf.path} has no tensors named {missing} among its inputs "
                                f"{sorted(ins)} and outputs {sorted(outs)}; stages chain by these names")
        loaded = self._loaded(i, interpreter, data, [ins[n] for n in sf.inputs], [outs[n] for n in sf.outputs],
                              sf.size)
        self._count_load(i, sf.size, sf.size, started)
        if self.stages[i].resident:
            self._resident_loaded[i] = loaded
        return loaded

    def _loaded(self, i: int, interpreter, data: bytes, inputs: list[int], outputs: list[int],
                held: int) -> _Loaded:
        """A loaded stage; resident stages (and XNNPACK's, which packs there) allocated now."""
        early = self.stages[i].resident or self._allocate_early
        if early:
            interpreter.allocate_tensors()
        return _Loaded(interpreter, data, inputs, outputs, held, early, i)

    def _count_load(self, i: int, read: int, held: int, started: float) -> None:
        with self._lock:
            c = self._counters
            c.flash_bytes_read += read
            c.resident_bytes += held * self.weight_copies
            c.peak_weight_bytes = max(c.peak_weight_bytes, c.resident_bytes)
            c.stages[i].loads += 1
            c.stages[i].load_s += time.perf_counter() - started

    def _cache(self, directory, backend: str, delegates, stage_files, copies: int) -> XnnpackCache | None:
        if directory is None:
            return None
        if copies == 1 or delegates or backend not in ("auto", "ai_edge_litert") or stage_files:
            raise ValueError("xnnpack_cache_dir applies to XNNPACK on the ai_edge_litert backend: not with "
                             "default_delegates=False, reference_kernels, other delegates, another backend "
                             "or stage_files")
        return XnnpackCache(directory)

    def _buffer(self, slot: int, used: int) -> tuple[bytes, memoryview]:
        """Model bytes for a stage load: the slot's earlier buffer when nothing else holds it.

        Loads rotate over prefetch + 1 slots; by the time a slot comes round again, the stage that
        used it has been released, so its pages (already faulted in) are reused instead of fresh
        memory (faulting in fresh pages costs several times the read itself). Every slot is sized for
        the largest stage (a stage's model may have trailing bytes); the planner caps each stage at
        budget / (prefetch + 1), so the slots together stay within the budget. A slot also gives back
        the pages a larger stage used past this one's `used` bytes, so that it holds RAM for the
        stage in it only (MobileNetV2 at the prefetch-1 minimum: -0.5 MiB at the peak, at no cost in
        time while loads are hidden behind compute). A larger stage faults those pages in again,
        which costs time where prefetched loads are the bottleneck (the 72 MiB MLP: 7.5 -> 11 ms of
        loads per invoke): once an invoke has waited for a prefetched load, slots keep their pages.
        Without prefetch they always give them back: that setting asks for the least memory.
        """
        data = self._slots[slot]
        # 3 references: the slot list, `data`, getrefcount's argument; more means a live interpreter
        if data is None or sys.getrefcount(data) > 3:
            self._slots[slot] = data = None  # an old buffer still in use is freed with its interpreter
            data, _ = writable_bytes(self._slot_size)
            self._slots[slot], self._slot_used[slot] = data, 0
            self._counters.fresh_buffers += 1
        written = self._slot_used[slot]
        if written > used and self._give_back:  # give back the pages a larger stage used
            zero_pages(bytes_address(data) + used, written - used)
            written = used
        self._slot_used[slot] = max(written, used)
        return data, bytes_view(data)

    def _release(self, loaded: _Loaded, next_stage: int | None = None) -> None:
        with self._lock:
            self._counters.resident_bytes -= loaded.weight_bytes * self.weight_copies
        if isinstance(loaded.interpreter, CompiledStage):  # built for good: its pages go, it stays
            # on the pager, unless the next stage is still paging in: this thread would wait for
            # it anyway, so it gives the pages back itself meanwhile
            coming = self._pending.get(next_stage)
            loaded.interpreter.page_out(here=coming is not None and not coming.done())
        loaded.interpreter = None
        loaded.data = b""

    # -------------------------------------------------------------------------------- details
    def _details(self, t: int) -> dict:
        return copy.deepcopy(self._detail_cache[t])


def min_ram_budget(model_path: str | os.PathLike, prefetch: int = 1, default_delegates: bool = True,
                   reference_kernels: bool = False, xnnpack_cache: bool = False) -> int:
    """The smallest `ram_budget` SwapInterpreter accepts for this segmented model with these
    options (reads only the graph). With XNNPACK (the default kernels) it counts its packed copy:
    twice the weights-only minimum that `default_delegates=False` needs, unless `xnnpack_cache`
    (an `xnnpack_cache_dir` is given): then only the packed copy is held."""
    path = Path(model_path)
    fd = os.open(path, os.O_RDONLY)
    try:
        _, _, plan = _graph_and_plan(fd, path)
    finally:
        os.close(fd)
    copies = 1 if xnnpack_cache else _weight_copies(default_delegates, reference_kernels)
    return min_stage_budget(plan, prefetch) * copies


_LIVE: weakref.WeakSet[SwapInterpreter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """os.register_at_fork hook: every live SwapInterpreter made usable in the child."""
    for interpreter in list(_LIVE):
        interpreter._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _weak_call(owner: object, method: str, *args) -> Callable[..., None]:
    """A callback running `owner.method(*args, *more)` while `owner` lives, without holding it."""
    ref = weakref.ref(owner)

    def call(*more) -> None:
        target = ref()
        if target is not None:
            getattr(target, method)(*args, *more)
    return call


def _note_thread(idents: set[int]) -> None:
    """Prefetch thread initializer: record its ident (close must not wait for the thread it runs on)."""
    idents.add(threading.get_ident())


def _done(result: object) -> Future:
    """A Future already holding `result`."""
    future: Future = Future()
    future.set_result(result)
    return future


def _weight_copies(default_delegates: bool, reference_kernels: bool) -> int:
    """Copies of a stage's weights in RAM: XNNPACK (the default kernels) packs a second one."""
    return 2 if default_delegates and not reference_kernels else 1


def _graph_and_plan(fd: int, path: Path) -> tuple[Manifest, Model, Plan]:
    """The manifest, the graph (weights not read) and its plan. Checks the graph against its
    SHA-256 and the manifest against the graph (so a forged manifest cannot place weights), and
    that the weights region is whole."""
    head, manifest = read_model_head(fd, path)
    check_graph_digest(head, manifest, str(path))
    _check_weights_region(manifest, os.fstat(fd).st_size, path)
    model = Model.from_bytes(head[: manifest.graph_size], source=str(path), read_external=False)
    check_against_graph(manifest, model, str(path))
    return manifest, model, plan_model(model, prefetch_depths=())


def _last_uses(templates: list[_Template], keep: set[int]) -> list[list[int]]:
    """For each stage, the tensors crossing stage boundaries that no later stage reads (minus `keep`),
    so that an invoke holds only the activations still needed, not every boundary it passed."""
    last: dict[int, int] = {}
    for i, t in enumerate(templates):
        for tensor in t.inputs + t.outputs:
            last[tensor] = i
    drops: list[list[int]] = [[] for _ in templates]
    for tensor, i in last.items():
        if tensor not in keep:
            drops[i].append(tensor)
    return drops


def _indices(details: list[dict]) -> list[int]:
    return [d["index"] for d in details]


# ------------------------------------------------------------------------------------ file access
def _check_weights_region(manifest: Manifest, size: int, path: Path) -> None:
    for seg in manifest.segments:
        start = manifest.image_offset + seg.offset
        if start + seg.size > size:
            raise SegmentIntegrityError(
                f"{path}: weights region is truncated: segment {seg.id} needs file bytes "
                f"{start}..{start + seg.size}, the file has {size}"
            )


