"""Plan every MLPerf Tiny model in ../shared and print the figures side by side.

    python benchmarks/plan_mlperf.py [--shared ../shared] [--page-size 4096] [--min-segment-bytes 1024]

Per model: total and external weights, the largest operator's weights, the activation peak (lower
bound) and the greedy arena, TFLM's measured non-persistent arena, the per-operator and prefetch
lower bounds and arenas, and a check that the segmented file is bit-identical on LiteRT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tflm_swap import Model, plan_model, segment_model, verify
from tflm_swap.interpreters import litert_interpreter, random_inputs, run_litert, tflm_arena


def bit_identical(a: bytes, b: bytes, n: int = 20) -> bool:
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    ia, ib = litert_interpreter(a), litert_interpreter(b)
    ia.allocate_tensors()
    ib.allocate_tensors()
    for _ in range(n):
        xa = random_inputs(ia.get_input_details(), rng_a)
        xb = random_inputs(ib.get_input_details(), rng_b)
        if any(x.tobytes() != y.tobytes() for x, y in zip(run_litert(ia, xa), run_litert(ib, xb))):
            return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--page-size", type=int, default=4096)
    ap.add_argument("--min-segment-bytes", type=int, default=1024)
    args = ap.parse_args()
    models = sorted((Path(args.shared) / "models" / "mlperf_tiny").glob("*.tflite"))
    if not models:
        print(f"no models under {args.shared}/models/mlperf_tiny", file=sys.stderr)
        return 1
    header = ["model", "ops", "weights", "external", "largest op", "act peak", "act arena", "TFLM head",
              "per-op LB", "per-op arena", "prefetch1 LB", "prefetch1 arena", "resident", "segs", "bit-exact"]
    rows = []
    for path in models:
        model = Model.load(path)
        data = segment_model(model, args.page_size, args.min_segment_bytes)
        manifest = verify(data)
        plan = plan_model(Model.from_bytes(data))
        s = plan.strategies
        total = sum(len(model.buffers[b]) for t in range(len(model.tensors))
                    if (b := model.constant_buffer(t)) is not None)
        rows.append([
            path.stem, plan.n_ops, total, plan.external_bytes, plan.largest_op_weights, plan.activation_peak,
            plan.activation_arena, tflm_arena(model.raw).head, s["per_op"].lower_bound, s["per_op"].arena,
            s["prefetch_1"].lower_bound, s["prefetch_1"].arena, s["resident"].arena, len(manifest.segments),
            "yes" if bit_identical(model.raw, data) else "NO",
        ])
        print(f"planned {path.name}", file=sys.stderr)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    for r in [header, ["-" * w for w in widths]] + rows:
        print("| " + " | ".join(str(c).rjust(w) for c, w in zip(r, widths)) + " |")
    print("\nbytes; LB = lower bound (max over operators of live activations + the weights that must be "
          "resident), arena = TFLM-style greedy layout of activations + weight staging; total weights "
          "include small inline constants, external = moved to flash segments.")
    return 0 if all(r[-1] == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
