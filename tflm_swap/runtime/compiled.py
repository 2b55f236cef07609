"""Streamed stages on XNNPACK without repacking: LiteRT's CompiledModel with XNNPACK's weight cache.

XNNPACK packs a copy of every weight when an interpreter is built; a streamed stage is built at
every load, so with LiteRT's `Interpreter` the packing is repeated per invoke (ResNet50: ~100 ms of
loads against a 35 ms invoke). LiteRT's `CompiledModel` can give XNNPACK a weight-cache file: the
first build of a stage writes its packed weights there, later builds map them from the file
(ResNet50, 14 stages: 223 ms of builds the first time, 15 ms after). The raw weights are still read
and CRC-checked into the stage's model bytes as before; the packed copy is file-backed, mapped
while the stage lives and unmapped when it is released, so a stage still costs twice its weights
against the budget. Outputs are bit-identical to `Interpreter` with XNNPACK (checked on ResNet50,
MobileNetV2 and every test model).

Cache files sit in a directory the caller chooses, one per stage, named after a CRC of the stage's
graph and of its segments' CRCs (a changed model or partition gets new files). XNNPACK checks its
own header but not the packed data, so each file's CRC32 is recorded in a sidecar once written, and
checked the first time this process uses the file; a file that fails, or has no record, is deleted
and rebuilt.
"""

from __future__ import annotations

import math
import os
import threading
import zlib
from pathlib import Path

import numpy as np

from ..fileio import write_atomic
from .crc import crc32

CHUNK = 8 << 20  # bytes read at a time when checking a cache file


class XnnpackCache:
    """The directory of packed-weight cache files, one per stage, with their CRC records."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._checked: set[Path] = set()
        self._lock = threading.Lock()
        self._environment = None

    def environment(self):
        """One LiteRT Environment for every stage. Its compiler-plugin path is this directory,
        which holds none: stages are plain CPU models, and LiteRT would otherwise look for (and
        fail to load) a vendor compiler plugin at every stage build."""
        with self._lock:
            if self._environment is None:
                from ai_edge_litert.environment import Environment

                self._environment = Environment.create(compiler_plugin_path=str(self.directory))
            return self._environment

    def path_for(self, graph: bytes, segment_crcs: list[int]) -> Path:
        key = zlib.crc32(np.asarray(segment_crcs, dtype=np.uint32).tobytes(), zlib.crc32(graph))
        return self.directory / f"stage-{key:08x}-{len(graph)}.xnnpack"

    def before_build(self, path: Path) -> None:
        """Delete a cache file that fails its CRC record (or has none), the first time it is used."""
        with self._lock:
            if path in self._checked:
                return
            record = _record(path)
            if path.exists() and (not record.exists() or record.read_text().strip() != f"{_file_crc(path):08x}"):
                path.unlink()
                record.unlink(missing_ok=True)

    def after_build(self, path: Path) -> None:
        """Record the CRC of a cache file the build just wrote."""
        with self._lock:
            if path in self._checked:
                return
            if path.exists() and not _record(path).exists():
                write_atomic(_record(path), f"{_file_crc(path):08x}\n".encode())
            self._checked.add(path)


class CompiledStage:
    """The part of LiteRT's `Interpreter` surface that SwapInterpreter uses, on a `CompiledModel`
    (XNNPACK, with a weight-cache file). Tensor indices are input and output positions."""

    def __init__(self, model: bytes, cache_file: Path, num_threads: int | None = None, environment=None):
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.cpu_options import CpuOptions
        from ai_edge_litert.options import Options

        options = Options(cpu_options=CpuOptions(num_threads=num_threads or 0,
                                                 xnnpack_weight_cache_path=str(cache_file)))
        self._model = CompiledModel.from_buffer(model, environment=environment, options=options)
        key = next(iter(self._model.get_signature_list()))
        self._in = list(self._model.get_input_tensor_details(key).values())
        self._out = list(self._model.get_output_tensor_details(key).values())
        self._inputs = self._model.create_input_buffers(0)
        self._outputs = self._model.create_output_buffers(0)

    def allocate_tensors(self) -> None:
        """Nothing to do: buffers exist once the model is compiled."""

    def get_input_details(self) -> list[dict]:
        return [{"index": i, "shape": d["shape"], "dtype": d["dtype"]} for i, d in enumerate(self._in)]

    def get_output_details(self) -> list[dict]:
        return [{"index": i, "shape": d["shape"], "dtype": d["dtype"]} for i, d in enumerate(self._out)]

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        self._inputs[index].write(np.ascontiguousarray(value))

    def invoke(self) -> None:
        self._model.run_by_index(0, self._inputs, self._outputs)

    def get_tensor(self, index: int) -> np.ndarray:
        detail = self._out[index]
        shape = [int(d) for d in detail["shape"]]
        return self._outputs[index].read(math.prod(shape), np.dtype(detail["dtype"])).reshape(shape)


def _record(path: Path) -> Path:
    return path.with_name(path.name + ".crc32")


def _file_crc(path: Path) -> int:
    value = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            value = crc32(chunk, value)
    return value
