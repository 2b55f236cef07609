"""TFLM target on every MLPerf Tiny int8 model in ../shared: stock TFLM RAM vs per-operator loading.

    python benchmarks/micro_tflm.py [--shared ../shared] [--inferences 10] [--json micro_tflm.json]

Runs the real host TFLM (xmos-ai-tools' library, RecordingMicroAllocator) on the original model and
on the rewritten graph + flash image (blocking loads, and prefetch with start/wait and a deferred
flash driver). Per model: stock arena, model bytes, stock RAM if the model must sit in RAM (arena +
model), our arena (activations + staged weights + TFLM's persistent data), the planner's per-op and
prefetch_1 lower bounds and ratios, the predicted arena, flash bytes read per inference and whether
outputs are bit-identical to the original model on the same TFLM.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from tflm_swap.fileio import write_atomic
from tflm_swap.interpreters import random_inputs
from tflm_swap.micro import predict_arena, rewrite_for_tflm, run_host_tflm
from tflm_swap.micro.host import io_specs


def _inputs(data: bytes, n: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(0)
    details = [{"shape": s, "dtype": d} for s, d in io_specs(data, "inputs")]
    return [random_inputs(details, rng) for _ in range(n)]


def _same(a, b) -> bool:
    return all(x.tobytes() == y.tobytes() for xs, ys in zip(a, b) for x, y in zip(xs, ys))


def measure(path: Path, inferences: int) -> dict:
    """All figures for one model."""
    data = path.read_bytes()
    x = _inputs(data, inferences)
    stock = run_host_tflm(data, None, x)
    row: dict = {"model": path.stem, "model_bytes": len(data), "stock_arena": stock.arena_total,
                 "stock_tail": stock.arena_tail, "stock_ram": stock.arena_total + len(data)}
    for mode, prefetch in (("per_op", False), ("prefetch", True)):
        micro = rewrite_for_tflm(data, prefetch=prefetch)
        run = run_host_tflm(micro.graph, micro.image, x, deferred=prefetch)
        pred = predict_arena(micro, data, stock_tail=stock.arena_tail)
        bound = pred.prefetch_bound if prefetch else pred.per_op_bound
        row[mode] = {
            "arena": run.arena_total, "head": run.arena_head, "tail": run.arena_tail,
            "bound": bound, "head_ratio": run.arena_head / bound,
            "total_over_bound": run.arena_total / bound,
            "total_ratio": run.arena_total / (bound + stock.arena_tail),
            "predicted_head": pred.head, "predicted_total": pred.total,
            "flash_bytes_per_inference": run.flash_bytes // inferences,
            "graph_bytes": len(micro.graph), "image_bytes": len(micro.image), "load_ops": len(micro.loads),
            "bit_exact": _same(stock.outputs, run.outputs),
        }
    row["ram_reduction"] = row["stock_ram"] / row["per_op"]["arena"]
    return row


def table(rows: list[dict]) -> str:
    head = (f"{'model':<24}{'stock arena':>12}{'+model':>9}{'stock RAM':>11}{'ours':>9}{'x less':>7}"
            f"{'head':>8}{'per-op LB':>10}{'ratio':>7}{'tot/LB':>7}{'tot/(LB+tail)':>14}"
            f"{'pf arena':>9}{'pf head':>8}{'pf LB':>8}{'ratio':>7}"
            f"{'pred ok':>8}{'flash B/inf':>12}{'exact':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        p, f = r["per_op"], r["prefetch"]
        pred_ok = p["predicted_head"] == p["head"] and f["predicted_head"] == f["head"]
        lines.append(
            f"{r['model']:<24}{r['stock_arena']:>12}{r['model_bytes']:>9}{r['stock_ram']:>11}{p['arena']:>9}"
            f"{r['ram_reduction']:>7.2f}{p['head']:>8}{p['bound']:>10}{p['head_ratio']:>7.3f}{p['total_over_bound']:>7.2f}"
            f"{p['total_ratio']:>14.3f}{f['arena']:>9}"
            f"{f['head']:>8}{f['bound']:>8}{f['head_ratio']:>7.3f}{'yes' if pred_ok else 'no':>8}"
            f"{p['flash_bytes_per_inference']:>12}{'yes' if p['bit_exact'] and f['bit_exact'] else 'NO':>7}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--inferences", type=int, default=10)
    ap.add_argument("--json", default="micro_tflm.json", help="where to write the figures")
    args = ap.parse_args()
    models = sorted(p for p in (Path(args.shared) / "models" / "mlperf_tiny").glob("*.tflite")
                    if "float" not in p.name)
    if not models:
        print(f"no MLPerf Tiny int8 models under {args.shared}/models/mlperf_tiny", file=sys.stderr)
        return 1
    rows = []
    for i, path in enumerate(models, 1):
        print(f"[{i}/{len(models)}] {path.name} ...", file=sys.stderr, flush=True)
        rows.append(measure(path, args.inferences))
    print(table(rows))
    print("\nbytes; 'ours' = TFLM arena with per-operator loading (graph stays in flash); 'head' = its "
          "non-persistent part (activations + staged weights); LB = planner lower bound (per_op / prefetch_1); "
          "ratio = head / LB; tot = whole arena; tail = stock TFLM's persistent arena;\n"
          "pred ok = planner-predicted head equals TFLM's; exact = outputs bit-identical "
          "to the original model on the same TFLM (blocking and prefetch).")
    write_atomic(args.json, json.dumps(rows, indent=1).encode())
    print(f"wrote {args.json}", file=sys.stderr)
    return 0 if all(r["per_op"]["bit_exact"] and r["prefetch"]["bit_exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
