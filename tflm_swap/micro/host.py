"""Run a model on a real TFLite Micro on the host (xmos-ai-tools' TFLM, or TFLM built from the pinned
sources for a model with resource variables) with our load operators.

`run_host_tflm` feeds inputs to the compiled host runner (delegates/micro/host/tswap_host_runner.cc)
and returns the outputs with the arena figures TFLM's RecordingMicroAllocator reports.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TflmSwapError
from ..format.model import Model, numpy_dtype
from .codegen import UPSTREAM_CUSTOM_OPS, builtin_ops, resolver_lines, resolver_method
from .toolchain import NativeToolError, build_host_runner


@dataclass
class HostRun:
    """Outputs of every inference and the arena use TFLM recorded."""

    outputs: list[list[np.ndarray]]
    arena_total: int
    arena_head: int  # non-persistent: activations + staged weights (TFLM's greedy planner)
    arena_tail: int  # persistent: tensor structs, node data, kernel data
    flash_bytes: int  # image bytes read by the load operators over all inferences


def io_specs(graph: bytes | Model, which: str) -> list[tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of the graph's inputs or outputs (`graph`: bytes, or the `Model` parsed from them)."""
    model = graph if isinstance(graph, Model) else Model.from_bytes(graph, read_external=False)
    indices = model.inputs if which == "inputs" else model.outputs
    return [(tuple(int(d) for d in model.tensors[t].shape), np.dtype(numpy_dtype(model.tensors[t].type)))
            for t in indices]


def run_host_tflm(graph: bytes, image: bytes | None, inputs: list[list[np.ndarray]],
                  deferred: bool = False, graph_model: Model | None = None, pinned: bool = False) -> HostRun:
    """Run `len(inputs)` inferences of `graph` (with `image` behind its load operators, or None for a
    model without them). `deferred` makes the file flash driver complete reads only when polled.
    `graph_model`: `graph` already parsed (its inputs and outputs are read from it). `pinned`: on TFLM
    built from the pinned sources even where xmos-ai-tools' would do (to compare with a model that needs it)."""
    if not inputs:
        raise TflmSwapError("run_host_tflm needs at least one inference's inputs")
    parsed = graph_model if graph_model is not None else Model.from_bytes(graph, read_external=False)
    in_specs, out_specs = io_specs(parsed, "inputs"), io_specs(parsed, "outputs")
    blob = bytearray()
    for n, arrays in enumerate(inputs):
        if len(arrays) != len(in_specs):
            raise TflmSwapError(f"inference {n}: {len(arrays)} inputs given, the model has {len(in_specs)}")
        for (shape, dtype), x in zip(in_specs, arrays):
            blob += np.ascontiguousarray(x, dtype=dtype).reshape(shape).tobytes()
    runner = host_runner(parsed, pinned)
    with tempfile.TemporaryDirectory(prefix="tswap_host_") as tmp:
        d = Path(tmp)
        (d / "model.tflite").write_bytes(graph)
        (d / "inputs.bin").write_bytes(bytes(blob))
        image_arg = "-"
        if image is not None:
            (d / "image.bin").write_bytes(image)
            image_arg = str(d / "image.bin")
        argv = [str(runner), str(d / "model.tflite"), image_arg, str(d / "inputs.bin"), str(d / "outputs.bin"),
                str(len(inputs))] + (["deferred"] if deferred else [])
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=600)
        if proc.returncode != 0:
            log = (proc.stdout + "\n" + proc.stderr).strip()  # TFLM's MicroPrintf writes to stdout
            raise TflmSwapError(f"host TFLM run failed: {log[-2000:]}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        raw = (d / "outputs.bin").read_bytes()
    return HostRun(_split_outputs(raw, out_specs, len(inputs)), report["arena_total"], report["arena_head"],
                   report["arena_tail"], report["flash_bytes"])


def host_runner(model: Model, pinned: bool = False) -> Path:
    """The host runner for `model`'s operators. Against xmos-ai-tools' TFLM, except for a model with
    resource variables (that library crashes in MicroResourceVariables::Allocate) or with upstream's
    TFLM_DECODE (that library lacks it): such a model runs on TFLM built for this machine from the
    pinned sources (`mcu.source_host_tflm`)."""
    ops, variables = builtin_ops(model), model.resource_variable_count()
    if pinned:  # upstream's custom operators too, so that a model and its DECODE layout share one runner
        ops = sorted(set(ops) | UPSTREAM_CUSTOM_OPS.keys())
    tflm = None
    needs = ("resource variables, which need TFLM built from the pinned sources (xmos-ai-tools' host TFLM "
             "crashes on them)" if variables else
             "TFLM_DECODE, which needs TFLM built from the pinned sources (xmos-ai-tools' host TFLM lacks it)"
             if UPSTREAM_CUSTOM_OPS.keys() & set(ops) else None)
    if needs:
        from . import mcu

        try:
            tflm = mcu.source_host_tflm([resolver_method(o) for o in ops])
        except NativeToolError as exc:
            raise NativeToolError(f"the model has {needs}: {exc}") from exc
    return build_host_runner(host_ops_source(ops, variables), tflm)


def host_ops_source(ops: list[str], resource_variables: int = 0) -> str:
    """C++ defining tswap_host_ops.h for a model: its builtin operators `ops` (every subgraph's; see
    `codegen.builtin_ops`) and its resource variables, so that the host runner registers what the
    model uses and nothing else."""
    lines = resolver_lines(ops, "return kTfLiteError;")
    return ("// Generated by tflm_swap for one model's operators (tflm_swap/micro/host.py).\n"
            '#include "tswap_host_ops.h"\n\nnamespace tswap_host {\n\n'
            f"const int kResourceVariables = {resource_variables};\n\n"
            f"TfLiteStatus AddModelOps(Resolver& resolver) {{\n{lines}\n  return kTfLiteOk;\n}}\n\n"
            "}  // namespace tswap_host\n")


def _split_outputs(raw: bytes, specs, count: int) -> list[list[np.ndarray]]:
    sizes = [int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for shape, dtype in specs]
    if len(raw) != sum(sizes) * count:
        raise TflmSwapError(f"host TFLM wrote {len(raw)} output bytes, expected {sum(sizes) * count}")
    result, pos = [], 0
    for _ in range(count):
        arrays = []
        for (shape, dtype), size in zip(specs, sizes):
            arrays.append(np.frombuffer(raw[pos : pos + size], dtype=dtype).reshape(shape).copy())
            pos += size
        result.append(arrays)
    return result
