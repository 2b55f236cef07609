"""Helpers shared by the tests: run models on the real LiteRT interpreter."""

from __future__ import annotations

import numpy as np

from tflm_swap.interpreters import litert_interpreter, random_inputs, run_litert


def outputs_on_random_inputs(data: bytes, n: int = 20, seed: int = 0, reference_kernels: bool = False,
                             default_delegates: bool = True):
    """Outputs of `n` inferences on seeded random inputs (same inputs for the same seed and model)."""
    interpreter = litert_interpreter(data, reference_kernels=reference_kernels, default_delegates=default_delegates)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(seed)
    details = interpreter.get_input_details()
    return [run_litert(interpreter, random_inputs(details, rng)) for _ in range(n)]


def assert_bit_identical(a: bytes, b: bytes, n: int = 20, reference_kernels: bool = False,
                         default_delegates: bool = True) -> None:
    """Both models give exactly the same outputs (bytes, not tolerance) on `n` random inputs."""
    kernels = {"reference_kernels": reference_kernels, "default_delegates": default_delegates}
    ref = outputs_on_random_inputs(a, n, **kernels)
    got = outputs_on_random_inputs(b, n, **kernels)
    for i, (xs, ys) in enumerate(zip(ref, got)):
        for x, y in zip(xs, ys):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert x.tobytes() == y.tobytes(), f"inference {i} with {kernels}: outputs differ"


def reads_only(monkeypatch) -> None:
    """Make the stage planner cost partitions by bytes read alone, so that MLPerf Tiny's small layers
    are kept resident when the budget allows (by default a stage switch costs more than reading
    them, and no stage is kept resident)."""
    from tflm_swap.planner import stages as planner

    monkeypatch.setattr(planner, "MIN_RESIDENT_BYTES", 1024)
    reads = planner.CostModel(per_mac=0.0, per_weight_byte=0.0, per_read_byte=1e-9, per_copy_byte=0.0,
                              per_stage=0.0, per_stage_build=0.0)
    monkeypatch.setattr(planner, "BUILTIN_COSTS", reads)
    monkeypatch.setattr(planner, "XNNPACK_COSTS", reads)
