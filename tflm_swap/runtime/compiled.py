"""Streamed stages on XNNPACK without repacking: stages built once, their packed weights paged.

XNNPACK packs a copy of every weight when an interpreter is built. SwapInterpreter's usual streamed
stage is built at every load, so with XNNPACK the packing is repeated per invoke (ResNet50: ~90 ms
of loads against a 32 ms invoke). With `xnnpack_cache_dir`, each stage is instead built once, on
LiteRT's `CompiledModel`, from a stage model file, with an XNNPACK weight-cache file: XNNPACK
writes its packed weights there and runs from a read-only shared mapping of that file. The stage
then lives as long as the SwapInterpreter, and only the *pages* of its weights come and go:

* release (`page_out`): MADV_DONTNEED on the mappings of the packed file and of the stage model
  file, so their pages leave the process (they stay in the kernel's page cache, or go back to
  storage under memory pressure, like any file page);
* load (`start_page_in`, then `finish_page_in` when the stage is taken): a CRC32 over the packed
  file's mapping, which both faults its pages back in and checks them against the CRC recorded
  when the file was written, before the stage runs.

Both run off the invoking thread, in the package's C library (delegates/runtime/tswap_pager.c): a
page-in on a thread of its own, once the releases asked for before it have run (so the pages held
stay within the budget); a release on a worker thread, or on the invoking thread when that thread
would wait for the next stage's page-in anyway. Native, because `CompiledModel.run_by_index` keeps
Python's GIL while a stage runs: a Python prefetch thread could not start until the stage had
finished (MobileNetV2, 8 stages: 1.32x stock that way, as good as no prefetch). Stages pass their
output buffers to the next stage without copying them (`StageOutput`). The packed files are mapped
with MADV_HUGEPAGE and kept in the page cache in large pages (`refresh_page_cache`): from 4 KiB
pages, faulting them in costs as much as their CRC.

Nothing is rebuilt and nothing repacked per invoke, and XNNPACK reads only the packed copy while it
runs (measured with smaps on MobileNetV2, ResNet50 and the MLPerf Tiny models: after page_out, a
run faults in the packed file only, no page of the stage model file), so a stage costs its packed
weights against the budget (within 1% of the raw weights on the benchmark models), not twice its
weights. Eviction never changes what a page holds: a page read again comes from the same file.

Files sit in a directory the caller chooses, per stage `stage-KEY-LEN.tflite` (the stage's model
with its weights) and `stage-KEY-LEN.xnnpack` (XNNPACK's packed weights), named after a CRC of the
stage's graph and of its segments' CRCs (a changed model or partition gets new files), each with a
`.crc32` record. A file that fails its record (or has none) is rebuilt, never used. Disk use: about
twice the streamed weights. Linux only (it finds the mappings in /proc/self/maps).
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
import zlib
from pathlib import Path

import numpy as np

from ..errors import SegmentIntegrityError, TflmSwapError
from ..fileio import write_atomic
from .crc import crc32, crc32_at
from .process_memory import HUGE_PAGE, MADV_DONTNEED, MADV_HUGEPAGE, madvise

NO_HUGE_PAGES = "no-huge-page-cache"  # in the cache directory: see XnnpackCache.huge_page_cache

# Run by XnnpackCache.build_packed in a child process (imports only LiteRT): builds each stage with a
# weight-cache path, which has XNNPACK pack and write its weights there, then renames the file.
_BUILD_PACKED = """
import json, os, sys
from ai_edge_litert.compiled_model import CompiledModel
from ai_edge_litert.cpu_options import CpuOptions
from ai_edge_litert.environment import Environment
from ai_edge_litert.options import Options

job = json.load(sys.stdin)
environment = Environment.create(compiler_plugin_path=job["directory"])
for model_file, packed_file, partial in job["stages"]:
    options = Options(cpu_options=CpuOptions(num_threads=job["num_threads"], xnnpack_weight_cache_path=partial))
    model = CompiledModel.from_file(model_file, environment=environment, options=options)
    del model
    fd = os.open(partial, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    os.replace(partial, packed_file)
"""


def packed_estimate(weight_bytes: int) -> int:
    """Disk bytes XNNPACK's packed copy of `weight_bytes` of weights may take: within 1% of the raw
    weights for float models, up to 8% more for int8 (bias, padding), so 1/8 more, plus 64 KiB."""
    return weight_bytes + weight_bytes // 8 + (64 << 10)


class XnnpackCache:
    """The directory of stage model files and packed-weight files, with their CRC records."""

    def __init__(self, directory: str | os.PathLike):
        if madvise is None or not Path("/proc/self/maps").exists():
            raise TflmSwapError("xnnpack_cache_dir needs Linux (madvise and /proc/self/maps) to page "
                                "stage weights in and out")
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._checked: dict[Path, int] = {}  # files checked (or written) by this process -> CRC32
        self._lock = threading.Lock()
        self._environment = None

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (a parent thread may have held this one at the fork)."""
        self._lock = threading.Lock()

    @property
    def huge_page_cache(self) -> bool:
        """False once a stage found that this system keeps the packed files in the page cache in
        small pages even when read back with MADV_HUGEPAGE (CompiledStage.refresh_page_cache):
        then no stage drops its file from the cache again to try."""
        return not (self.directory / NO_HUGE_PAGES).exists()

    def record_no_huge_page_cache(self) -> None:
        write_atomic(self.directory / NO_HUGE_PAGES,
                     b"Packed weights read back with MADV_HUGEPAGE stayed in 4 KiB pages in the page cache "
                     b"here: SwapInterpreter no longer drops them from the cache to try. Delete this file "
                     b"to try again (after a kernel or filesystem change).\n")

    def environment(self):
        """One LiteRT Environment for every stage. Its compiler-plugin path is this directory,
        which holds none: stages are plain CPU models, and LiteRT would otherwise look for (and
        fail to load) a vendor compiler plugin at every stage build."""
        with self._lock:
            if self._environment is None:
                from ai_edge_litert.environment import Environment

                self._environment = Environment.create(compiler_plugin_path=str(self.directory))
            return self._environment

    def paths_for(self, graph: bytes, segment_crcs: list[int]) -> tuple[Path, Path]:
        """(stage model file, packed-weight file) of a stage with this graph and these segments."""
        key = zlib.crc32(np.asarray(segment_crcs, dtype=np.uint32).tobytes(), zlib.crc32(graph))
        stem = self.directory / f"stage-{key:08x}-{len(graph)}"
        return stem.with_suffix(".tflite"), stem.with_suffix(".xnnpack")

    def valid(self, path: Path) -> bool:
        """Whether `path` exists and matches its CRC record (checked once per process); a file
        that does not is deleted, with its record, so that it is rebuilt."""
        with self._lock:
            if path in self._checked:
                return True
            record = _record(path)
            if path.exists() and record.exists():
                crc = _file_crc(path)
                if record.read_text().strip() == f"{crc:08x}":
                    self._checked[path] = crc
                    return True
            path.unlink(missing_ok=True)
            record.unlink(missing_ok=True)
            return False

    def write(self, path: Path, data: bytes) -> None:
        """Write a stage model file (atomically) and its record."""
        with self._lock:
            try:
                write_atomic(path, data)
                self._checked[path] = crc32(data)
                _write_record(path, self._checked[path])
            except OSError as exc:
                raise TflmSwapError(f"cannot write the stage model file {path}: {exc.strerror} "
                                    f"({self.free_bytes()} bytes free in {self.directory})") from exc

    def free_bytes(self) -> int:
        """Bytes an unprivileged process may still write in the directory."""
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize

    def check_space(self, need: int) -> None:
        """Raise TflmSwapError unless the directory has `need` bytes free (what the missing stage
        files will take, see packed_estimate): XNNPACK aborts the process that builds a stage when
        its packed weights do not fit, so this is checked before anything is written."""
        free = self.free_bytes() if need else need
        if free < need:
            raise TflmSwapError(
                f"xnnpack_cache_dir {self.directory} has {free} bytes free; building the paged stages missing "
                f"there needs about {need} (stage model files and XNNPACK's packed weights): free some space "
                "or choose another directory")

    def build_packed(self, stages: list[tuple[Path, Path]], num_threads: int | None) -> None:
        """Have XNNPACK write the packed-weight file of each (stage model file, packed file), in a
        child process, each into a temporary file renamed into place once whole.

        XNNPACK aborts the process (SIGABRT) when it cannot write its cache file (a full disk) and
        leaves it truncated; in a child, that is an error here instead, and the partial file goes.
        Files a child completed before it failed stay, but have no CRC record yet, so the next
        build makes them again. Costs one Python start and LiteRT import per SwapInterpreter that
        builds any stage (0.26 s of CPU, 0.8 s wall on the loaded 2-core build machine)."""
        if not stages:
            return
        partial = [p.with_name(f".{p.name}.{os.getpid()}.partial") for _, p in stages]
        job = {"directory": str(self.directory), "num_threads": num_threads or 0,
               "stages": [[str(m), str(p), str(t)] for (m, p), t in zip(stages, partial)]}
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        try:
            done = subprocess.run([sys.executable, "-c", _BUILD_PACKED], input=json.dumps(job).encode(),
                                  capture_output=True, env=env, check=False)
        finally:
            for t in partial:
                t.unlink(missing_ok=True)
        if done.returncode != 0:
            self._build_failed(stages, done)

    def _build_failed(self, stages: list[tuple[Path, Path]], done: subprocess.CompletedProcess) -> None:
        failed = next((p for _, p in stages if not p.exists()), stages[-1][1])
        code = done.returncode
        how = f"ended by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() \
            else f"exited with status {code}"
        said = [line for line in done.stderr.decode(errors="replace").splitlines()
                if "ERROR" in line or "Error" in line][-2:]
        raise TflmSwapError(
            f"XNNPACK could not write its packed weights {failed}: the process writing them {how}"
            + (f" ({'; '.join(said)})" if said else "") + f"; {self.free_bytes()} bytes free in "
            f"{self.directory}: free some space or choose another xnnpack_cache_dir")

    def record_packed(self, path: Path) -> int:
        """The CRC32 of a packed-weight file: recorded now if XNNPACK just wrote it."""
        with self._lock:
            if path not in self._checked:
                self._checked[path] = _file_crc(path)
                _write_record(path, self._checked[path])
            return self._checked[path]


class CompiledStage:
    """The part of LiteRT's `Interpreter` surface that SwapInterpreter uses, on a `CompiledModel`
    (XNNPACK, with a weight-cache file), plus paging of its weights (`start_page_in`,
    `finish_page_in`, `page_out`). Tensor indices are input and output positions."""

    def __init__(self, model_file: Path, packed_file: Path, num_threads: int | None, environment):
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.cpu_options import CpuOptions
        from ai_edge_litert.options import Options

        options = Options(cpu_options=CpuOptions(num_threads=num_threads or 0,
                                                 xnnpack_weight_cache_path=str(packed_file)))
        before = set(_mappings())
        self._model = CompiledModel.from_file(str(model_file), environment=environment, options=options)
        new = [m for m in _mappings() if m not in before]
        self.packed_file = packed_file
        self.packed_bytes = packed_file.stat().st_size
        # the files it maps, held open to check before every page-in that neither shrank (a read of
        # a mapping past its file's end is SIGBUS): see _FileSizes
        self._sizes = _FileSizes([packed_file, model_file])
        packed = [m for m in new if m[3] == str(packed_file.resolve())]
        self._raw = [(lo, hi) for lo, hi, _, path in new if path == str(model_file.resolve())]
        self._packed = [(lo, hi) for lo, hi, _, _ in packed]
        self._files = {**{r: str(model_file.resolve()) for r in self._raw},
                       **{r: str(packed_file.resolve()) for r in self._packed}}
        pieces = _file_pieces(packed, self.packed_bytes)
        if pieces is None:
            raise TflmSwapError(f"XNNPACK's mappings of its weight cache {packed_file} do not cover the "
                                f"file ({[m[:3] for m in packed]}): cannot page this stage's weights")
        self._pieces = _Ranges(pieces)
        # each range is checked to be still its file's mapping before its pages go (where the
        # system lets us read /proc/self/map_files): see page_out
        guarded = bool(packed) and _map_file(*self._packed[0]) == self._files[self._packed[0]]
        self._page_out = _Ranges([(lo, hi - lo) for lo, hi in self._files],
                                 list(self._files.values()) if guarded else [None] * len(self._files))
        for lo, hi in self._packed:  # read from storage in 2 MiB pages (see refresh_page_cache)
            madvise(lo, hi - lo, MADV_HUGEPAGE)
        key = next(iter(self._model.get_signature_list()))
        self._in = list(self._model.get_input_tensor_details(key).values())
        self._out = list(self._model.get_output_tensor_details(key).values())
        self._own_inputs = self._model.create_input_buffers(0)
        self._inputs = list(self._own_inputs)  # what the next run reads: own buffers, or bound outputs
        self._outputs = self._model.create_output_buffers(0)
        # per output: (element count, dtype, shape), for reads; index lists for SwapInterpreter
        self._reads = [(math.prod(int(n) for n in d["shape"]), np.dtype(d["dtype"]), [int(n) for n in d["shape"]])
                       for d in self._out]
        self.input_index, self.output_index = list(range(len(self._in))), list(range(len(self._out)))

    def start_page_in(self) -> None:
        """Queue the faulting in (and CRC32) of the packed weights on the native pager, which
        first checks that the stage's files are whole (see _FileSizes)."""
        self._job = _PAGER.page_in(self._pieces, self._sizes)

    def page_in_done(self) -> bool:
        return self._job.done()

    def finish_page_in(self, crc: int) -> float:
        """Wait for the page-in and check the packed weights against `crc`; the seconds it took.
        Also raises a failed check of an earlier page-out (see page_out)."""
        found, seconds = self._job.wait()
        _PAGER.check()
        self._sizes.check()  # again, now: the stage runs next, and reads what the page-in read
        if found != crc:
            raise SegmentIntegrityError(
                f"{self.packed_file}: packed weights have CRC32 {found:08x}, recorded {crc:08x} (the "
                "file changed while in use); delete it to have it rebuilt")
        return seconds

    def page_out(self, here: bool = False) -> None:
        """Give back the pages of the packed weights and of the stage model (contents unchanged):
        MADV_DONTNEED, queued on the native pager (so done before any page-in queued later), or,
        `here`, at once on this thread, beside a page-in the pager is running (for a caller that
        would otherwise wait for that page-in: the two then use two cores).

        Each range is first checked to be still this file's mapping (/proc/self/map_files, ~4 us):
        MADV_DONTNEED on memory mapped there since would discard its contents. A range that fails
        is left alone, and the next `finish_page_in` (or `flush_pages`) raises."""
        _PAGER.page_out(self._page_out, here)

    @staticmethod
    def flush_pages() -> None:
        """Wait until every page-out asked for has run (page-ins are waited for one by one, by
        finish_page_in); raise if one found a range no longer its file's mapping."""
        _PAGER.flush()

    def refresh_page_cache(self) -> bool | None:
        """Have the page cache hold the packed file in 2 MiB pages: whether it does (None: the
        mappings hold no aligned 2 MiB piece, so it would not matter). Call with the stage paged out.

        A file written in small pieces (as XNNPACK writes its cache), or read back after eviction
        without a hint, sits in the page cache in 4 KiB pages, and a page-in then faults 16 of them
        in at a time: ~65 us per MiB, as much as the CRC. Read back through a mapping with
        MADV_HUGEPAGE (set in __init__), it comes in 2 MiB pages, mapped one fault each: ~2.5 us
        per MiB (measured on ext4, Linux 6.18; ResNet50 at its minimum budget: 40 -> 34 ms an
        invoke, against 31.5 stock). Which kind the file has is seen by mapping one 2 MiB-aligned
        piece and reading FilePmdMapped in smaps. If it is small pages, the file is dropped from the
        cache (pages another process maps stay) and that piece read back from storage: False if it
        still comes in small pages (the filesystem or kernel cannot: say so once, see XnnpackCache),
        and the rest of the file is read from storage at its next page-in either way."""
        chunk = next((lo + -lo % HUGE_PAGE for lo, hi in self._packed if lo + -lo % HUGE_PAGE + HUGE_PAGE <= hi),
                     None)
        if chunk is None or madvise is None:
            return None
        _PAGER.flush(check=False)
        if _held_in_huge_pages(chunk):
            return True
        self.drop_page_cache()
        return _held_in_huge_pages(chunk)

    def drop_page_cache(self) -> None:
        """Drop the packed file from the page cache (call with the stage paged out), so that its
        next page-in reads it back through the MADV_HUGEPAGE mapping, in large pages: for a file
        XNNPACK has just written in small pieces, or one found in small pages (refresh_page_cache).
        Also for files below 2 MiB, which map in 4 KiB pages either way: from large pages in the
        cache a page-in faults them in faster (1.25 MiB: 68 -> 43 us per MiB) and a release gives
        them back faster (44 -> 16 us per MiB)."""
        _PAGER.flush(check=False)
        fd = os.open(self.packed_file, os.O_RDONLY)
        try:
            os.fsync(fd)  # pages XNNPACK has just written must be on storage to be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    def mapped_rss(self) -> tuple[int, int]:
        """Bytes of (packed weights, stage model file) resident in this process (from smaps), once
        the page-ins and page-outs queued so far have run (a failed page-out check stays pending)."""
        _PAGER.flush(check=False)
        rss = {lo: n for lo, (_, n) in _smaps("Rss:").items()}
        return (sum(rss.get(lo, 0) for lo, _ in self._packed), sum(rss.get(lo, 0) for lo, _ in self._raw))

    def allocate_tensors(self) -> None:
        """Nothing to do: buffers exist once the model is compiled."""

    def get_input_details(self) -> list[dict]:
        return [{"index": i, "shape": d["shape"], "dtype": d["dtype"]} for i, d in enumerate(self._in)]

    def get_output_details(self) -> list[dict]:
        return [{"index": i, "shape": d["shape"], "dtype": d["dtype"]} for i, d in enumerate(self._out)]

    def set_tensor(self, index: int, value: np.ndarray | StageOutput) -> None:
        """Set input `index`: an array is copied into the stage's own buffer; another stage's output
        is bound as it is, without a copy (chained stages: MobileNetV2, 8 stages, -0.3 ms an invoke)."""
        if isinstance(value, StageOutput):
            self._inputs[index] = value.buffer
        else:
            self._inputs[index] = self._own_inputs[index]
            self._own_inputs[index].write(np.ascontiguousarray(value))

    def invoke(self) -> None:
        self._model.run_by_index(0, self._inputs, self._outputs)

    def output(self, index: int) -> StageOutput:
        """Output `index` as it stands in the stage's buffer (valid until the stage runs again)."""
        return StageOutput(self._outputs[index], *self._reads[index])

    def get_tensor(self, index: int) -> np.ndarray:
        return self.output(index).copy()


class StageOutput:
    """A CompiledStage's output buffer, to bind as a later stage's input without copying it."""

    __slots__ = ("buffer", "_count", "_dtype", "_shape")

    def __init__(self, buffer, count: int, dtype: np.dtype, shape: list[int]):
        self.buffer, self._count, self._dtype, self._shape = buffer, count, dtype, shape

    def copy(self) -> np.ndarray:
        """The value now in the buffer, as a new array."""
        return self.buffer.read(self._count, self._dtype).reshape(self._shape)


class _Job:
    """A page-in running on the native pager (or done at once, without the C library)."""

    def __init__(self, library, pieces: _Ranges, files: _FileSizes):
        self._library, self._files = library, files
        if library is None:
            started, crc = time.perf_counter(), 0
            files.check()
            for address, size in pieces.ranges:
                crc = crc32_at(address, size, crc)
            self._result = (crc, time.perf_counter() - started)
        else:
            self._handle = library.tflm_swap_page_in_start(pieces.addresses, pieces.sizes, len(pieces),
                                                           files.fds, files.sizes, len(files))
            if not self._handle:
                raise MemoryError("cannot start a page-in job")
            self._result = None

    def done(self) -> bool:
        return self._result is not None or bool(self._library.tflm_swap_page_in_done(self._handle))

    def wait(self) -> tuple[int, float]:
        """(CRC32, seconds); raises SegmentIntegrityError if a file was found short (nothing read)
        or shrank during the read (the SIGBUS was caught)."""
        if self._result is None:
            crc, elapsed, found = ctypes.c_uint32(), ctypes.c_uint64(), ctypes.c_int64()
            status = self._library.tflm_swap_page_in_wait(self._handle, ctypes.byref(crc), ctypes.byref(elapsed),
                                                          ctypes.byref(found))
            self._handle = None
            if status == _PAGE_IN_BUS:
                raise SegmentIntegrityError(
                    f"{' or '.join(map(str, self._files.paths)) or 'a mapped file'}: a page-in read past the "
                    "end of the file: it was truncated while in use; create the SwapInterpreter again to rebuild it")
            if status != _PAGE_IN_OK:
                self._files.raise_short(status, found.value)
            self._result = (crc.value, elapsed.value * 1e-9)
        return self._result


_PAGE_IN_OK, _PAGE_IN_BUS = -1, -2  # tflm_swap_page_in_wait's codes (else: the index of a short file)


class _FileSizes:
    """Files a stage maps, held open (closed with this object), with their sizes when it was
    built: a page-in reads nothing from a file that has shrunk since (truncated while in use),
    which would be SIGBUS, and raises instead. As ctypes arrays for the native pager."""

    def __init__(self, paths: list[Path]):
        self.paths = list(paths)
        fds = []
        try:
            for path in self.paths:
                fds.append(os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        self._sizes = [os.fstat(fd).st_size for fd in fds]
        self.fds = (ctypes.c_int * len(fds))(*fds)
        self.sizes = (ctypes.c_uint64 * len(fds))(*self._sizes)
        self._close = weakref.finalize(self, _close_all, list(fds))

    def __len__(self) -> int:
        return len(self.paths)

    def check(self) -> None:
        """Raise SegmentIntegrityError if a file is shorter now than when its stage was built
        (nothing to check once the files are closed: the stage is going)."""
        if not self._close.alive:
            return
        for i, fd in enumerate(self.fds):
            try:
                found = os.fstat(fd).st_size
            except OSError as exc:
                found = -exc.errno
            if found < self._sizes[i]:
                self.raise_short(i, found)

    def raise_short(self, i: int, found: int) -> None:
        what = f"cannot be checked ({os.strerror(-found)})" if found < 0 else f"is {found} bytes"
        raise SegmentIntegrityError(
            f"{self.paths[i]} {what}; it was {self._sizes[i]} when its stage was built: it was truncated "
            "while in use, so its pages are not read (that would be SIGBUS); create the SwapInterpreter "
            "again to rebuild it")


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


class _Ranges:
    """Address ranges as ctypes arrays, built once per stage (a page-in or page-out then costs one
    native call), with the file each must still map (page-out), or None."""

    def __init__(self, ranges: list[tuple[int, int]], paths: list[str] | None = None):
        n = len(ranges)
        self.addresses = (ctypes.c_void_p * n)(*[a for a, _ in ranges])
        self.sizes = (ctypes.c_size_t * n)(*[s for _, s in ranges])
        self.paths = None if paths is None else (ctypes.c_char_p * n)(*[p and os.fsencode(p) for p in paths])
        self.ranges, self.files = ranges, paths

    def __len__(self) -> int:
        return len(self.ranges)


class _Pager:
    """The package's native pager (delegates/runtime/tswap_pager.c): page-ins on threads of their
    own, each started once the page-outs asked for before it have run; page-outs on a worker thread
    (or at once, when asked). Without the C library, both are done at once on the calling thread."""

    def __init__(self):
        from ..native import native_library

        library = native_library()
        if library is not None and hasattr(library, "tflm_swap_page_out"):
            vp, sp, n = ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_int
            library.tflm_swap_page_in_start.restype = vp
            library.tflm_swap_page_in_start.argtypes = [ctypes.POINTER(vp), sp, n, ctypes.POINTER(ctypes.c_int),
                                                        ctypes.POINTER(ctypes.c_uint64), n]
            library.tflm_swap_page_in_done.argtypes = [vp]
            library.tflm_swap_page_in_wait.restype = ctypes.c_int
            library.tflm_swap_page_in_wait.argtypes = [vp, ctypes.POINTER(ctypes.c_uint32),
                                                       ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_int64)]
            library.tflm_swap_page_out.argtypes = [ctypes.POINTER(vp), sp, ctypes.POINTER(ctypes.c_char_p), n, n]
            library.tflm_swap_pager_error.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        else:  # no library (package installed without its C extension): page at once
            library = None
        self.library = library

    def page_in(self, pieces: _Ranges, files: _FileSizes | None = None) -> _Job:
        """Fault `pieces` in with one CRC32, once each of `files` is checked to be whole."""
        return _Job(self.library, pieces, files if files is not None else _NO_FILES)

    def page_out(self, ranges: _Ranges, here: bool = False) -> None:
        """Give the ranges' pages back: once every job queued before has run, or, `here`, now on
        the calling thread."""
        if self.library is None:
            for (lo, size), path in zip(ranges.ranges, ranges.files):
                if path is not None and _map_file(lo, lo + size) != path:
                    raise TflmSwapError(f"{path} is no longer mapped at {lo:#x}-{lo + size:#x} (LiteRT "
                                        "remapped it): not giving its pages back")
                madvise(lo, size, MADV_DONTNEED)
        elif self.library.tflm_swap_page_out(ranges.addresses, ranges.sizes, ranges.paths, len(ranges), here) != 0:
            raise MemoryError("cannot queue a page-out")

    def flush(self, check: bool = True) -> None:
        """Wait for every queued job; then `check`."""
        if self.library is not None:
            self.library.tflm_swap_pager_flush()
        if check:
            self.check()

    def check(self) -> None:
        """Raise if a page-out since the last check found a range no longer its file's mapping."""
        if self.library is not None:
            message = ctypes.create_string_buffer(512)
            if self.library.tflm_swap_pager_error(message, len(message)):
                raise TflmSwapError(message.value.decode(errors="replace"))


_PAGER = _Pager()
_NO_FILES = _FileSizes([])


def _mappings() -> list[tuple[int, int, int, str]]:
    """(start, end, file offset, path) of this process's file mappings."""
    found = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/"):
                lo, hi = fields[0].split("-")
                found.append((int(lo, 16), int(hi, 16), int(fields[2], 16), fields[5].rstrip("\n")))
    return found


def _file_pieces(mappings: list[tuple[int, int, int, str]], size: int) -> list[tuple[int, int]] | None:
    """(address, length) pieces of the mappings that read file bytes 0..size once each, in order
    (XNNPACK may map its file in several, overlapping, pieces); None if they leave a gap."""
    pieces, position = [], 0
    while position < size:
        covering = [(lo + position - offset, min(hi - lo + offset, size)) for lo, hi, offset, _ in mappings
                    if offset <= position < offset + hi - lo]
        if not covering:
            return None
        address, end = max(covering, key=lambda c: c[1])
        pieces.append((address, end - position))
        position = end
    return pieces


def _map_file(lo: int, hi: int) -> str | None:
    """The file mapped exactly at [lo, hi), or None (no such mapping, or no access to map_files)."""
    try:
        return os.readlink(f"/proc/self/map_files/{lo:x}-{hi:x}")
    except OSError:
        return None


def _smaps(field: str) -> dict[int, tuple[int, int]]:
    """Mapping start -> (end, bytes in `field`, an smaps line such as "Rss:"), from /proc/self/smaps."""
    found, span = {}, None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                span = tuple(int(x, 16) for x in head.split("-"))
            elif head == field:
                found[span[0]] = (span[1], int(line.split()[1]) * 1024)
    return found


def _held_in_huge_pages(chunk: int) -> bool:
    """Whether the file page at `chunk` (2 MiB-aligned, in a file mapping) is mapped as a 2 MiB page
    once faulted in; it is given back after."""
    crc32_at(chunk, 1)
    huge = _mapping_field(chunk, "FilePmdMapped:") > 0
    madvise(chunk, HUGE_PAGE, MADV_DONTNEED)
    return huge


def _mapping_field(address: int, field: str) -> int:
    """Bytes in `field` (an smaps line such as "FilePmdMapped:") of the mapping holding `address`."""
    return next((n for lo, (hi, n) in _smaps(field).items() if lo <= address < hi), 0)


def _record(path: Path) -> Path:
    return path.with_name(path.name + ".crc32")


def _write_record(path: Path, crc: int) -> None:
    write_atomic(_record(path), f"{crc:08x}\n".encode())


def _file_crc(path: Path) -> int:
    """The CRC32 of a file, read through a MADV_HUGEPAGE mapping: a file not in the page cache is
    read into it in large pages (as a page-in wants it, see CompiledStage.refresh_page_cache), not
    in the 4 KiB pages that read() would leave there."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return 0
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
            view = np.frombuffer(mapped, np.uint8)
            address = view.ctypes.data
            if madvise is not None:
                madvise(address, view.size, MADV_HUGEPAGE)
            crc = crc32_at(address, view.size)
            del view
    return crc
