"""Measured per-operator compute times on the host.

LiteRT's Python API exposes no op profiler, so each operator is cut out as a one-operator
sub-model (see `submodel`) and timed on the real interpreter: median of `repeats` invokes.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from tqdm.auto import tqdm

from .converters.submodel import extract
from .format.model import Model
from .interpreters import litert_interpreter, random_inputs


def measure_op_times(
    model: Model,
    repeats: int = 20,
    backend: str = "auto",
    num_threads: int | None = 1,
    progress: bool = True,
) -> list[float]:
    """Median seconds per invoke of each operator, run alone on LiteRT with random inputs."""
    rng = np.random.default_rng(0)
    times = []
    for op in tqdm(range(len(model.operators)), desc="timing operators", unit="op", disable=not progress):
        interpreter = litert_interpreter(extract(model, op, op), backend=backend, num_threads=num_threads)
        interpreter.allocate_tensors()
        details = interpreter.get_input_details()
        for d, x in zip(details, random_inputs(details, rng)):
            interpreter.set_tensor(d["index"], x)
        interpreter.invoke()  # warm-up
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            interpreter.invoke()
            samples.append(time.perf_counter() - start)
        times.append(statistics.median(samples))
    return times
