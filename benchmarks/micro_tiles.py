"""TFLM below the whole-operator floor: weight tiles and the offline arena plan on every MLPerf Tiny
int8 model in ../shared, side by side with stock TFLM, per-operator loading and XMOS' flash arena.

    python benchmarks/micro_tiles.py [--shared ../shared] [--inferences 20] [--json micro_tiles.json]

Per model, all on the same 64-bit host TFLM (xmos-ai-tools' library, whole arena as its
RecordingMicroAllocator reports it): stock TFLM arena + model bytes (the model in RAM); ours today
(per-operator load operators, no tiles, TFLM's greedy layout); ours at the smallest budget the tool
reaches (`smallest_tiling`: every tileable operator at its finest tiles, offline arena plan), with
the planner's predicted head and its lower bound for that tiling next to the measured head; XMOS'
flash arena as measured for issue 17; the planner's per-operator bound and activation peak; what
`--ram-budget TARGET` picks (arena, reads); flash bytes and reads per inference; the flash
time per inference at 40 and 80 MB/s (bytes / bandwidth, the planner's serial read cost: what
blocking reads add to an inference); whether outputs are bit-identical to the original model on the
same TFLM over `--inferences` random inputs. Exit status 1 when a target is missed or a run differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from tflm_swap.fileio import write_atomic
from tflm_swap.format.model import Model
from tflm_swap.interpreters import random_inputs
from tflm_swap.micro import rewrite_for_tflm, run_host_tflm
from tflm_swap.micro.host import io_specs
from tflm_swap.micro.tiles import choose_tiles, smallest_tiling
from tflm_swap.planner import plan_model

# XMOS ai_tools flash-weights arena on the same host TFLM, and the targets (bytes).
XMOS_ARENA = {"vww_96_int8": 93_752, "ad01_int8": 89_904, "kws_ref_model": 31_816, "pretrainedResnet_quant": 64_592}
TARGETS = {"vww_96_int8": 90_000, "ad01_int8": 16_000, "kws_ref_model": 27_000, "pretrainedResnet_quant": 59_000}
BANDWIDTHS = (40e6, 80e6)


def _inputs(data: bytes, n: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(0)
    details = [{"shape": s, "dtype": d} for s, d in io_specs(data, "inputs")]
    return [random_inputs(details, rng) for _ in range(n)]


def _same(a, b) -> bool:
    return all(x.tobytes() == y.tobytes() for xs, ys in zip(a, b) for x, y in zip(xs, ys))


def measure(path: Path, inferences: int) -> dict:
    """All figures for one model."""
    data = path.read_bytes()
    model = Model.from_bytes(data)
    x = _inputs(data, inferences)
    stock = run_host_tflm(data, None, x)
    today = rewrite_for_tflm(model)
    today_run = run_host_tflm(today.graph, today.image, x)
    tiled = smallest_tiling(model, stock.arena_tail, offline_plan=True)
    tiled_run = run_host_tflm(tiled.micro.graph, tiled.micro.image, x)
    plan = plan_model(model, prefetch_depths=())
    flash = tiled.micro.flash_bytes_per_inference
    at_target = {}
    if path.stem in TARGETS:  # what --ram-budget TARGET picks: the fewest splits that fit
        fit = choose_tiles(model, TARGETS[path.stem], stock.arena_tail, offline_plan=True)
        run = run_host_tflm(fit.micro.graph, fit.micro.image, x)
        at_target = {"arena": run.arena_total, "reads": fit.micro.reads_per_inference,
                     "tiled_ops": len(fit.micro.tiled), "exact": _same(stock.outputs, run.outputs)}
    return {
        "model": path.stem, "stock_ram": stock.arena_total + len(data), "today": today_run.arena_total,
        "today_exact": _same(stock.outputs, today_run.outputs), "tiled": tiled_run.arena_total,
        "tiled_head": tiled_run.arena_head, "predicted_head": tiled.head, "tiled_bound": tiled.bound,
        "predicted_arena": tiled.arena,
        "tiled_exact": _same(stock.outputs, tiled_run.outputs), "xmos": XMOS_ARENA.get(path.stem),
        "target": TARGETS.get(path.stem), "per_op_bound": plan.strategies["per_op"].lower_bound,
        "activation_peak": plan.activation_peak, "flash_bytes": flash,
        "measured_flash_bytes": tiled_run.flash_bytes // inferences, "reads": tiled.micro.reads_per_inference,
        "today_reads": today.reads_per_inference, "tiled_ops": len(tiled.micro.tiled),
        "flash_ms": [1000 * flash / bw for bw in BANDWIDTHS], "at_target": at_target,
    }


def _fmt(v) -> str:
    return "-" if v is None else f"{v:,}"


def table(rows: list[dict]) -> str:
    lines = ["| model | stock TFLM arena + model | ours today (per-op loads) | ours tiled, smallest budget "
             "| target | XMOS flash arena | per-op bound | activation peak | head measured = predicted (tiled LB) "
             "| flash B/inference | reads (today) | flash ms @40 / 80 MB/s | at the target budget: arena, reads "
             "| bit-exact |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["at_target"]
        exact = "yes" if r["today_exact"] and r["tiled_exact"] and t.get("exact", True) else "NO"
        fit = f"{t['arena']:,}, {t['reads']}" if t else "-"
        pred = (f"{r['tiled_head']:,} {'=' if r['tiled_head'] == r['predicted_head'] else '!='} "
                f"{r['predicted_head']:,} ({r['tiled_bound']:,})")
        lines.append(
            f"| {r['model']} | {_fmt(r['stock_ram'])} | {_fmt(r['today'])} | {_fmt(r['tiled'])} | {_fmt(r['target'])} "
            f"| {_fmt(r['xmos'])} | {_fmt(r['per_op_bound'])} | {_fmt(r['activation_peak'])} | {pred} "
            f"| {_fmt(r['flash_bytes'])} | {r['reads']} ({r['today_reads']}) "
            f"| {r['flash_ms'][0]:.2f} / {r['flash_ms'][1]:.2f} | {fit} | {exact} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--inferences", type=int, default=20)
    ap.add_argument("--json", default="micro_tiles.json", help="where to write the figures")
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
    write_atomic(args.json, json.dumps(rows, indent=1).encode())
    print(f"wrote {args.json}", file=sys.stderr)
    ok = all(r["today_exact"] and r["tiled_exact"] and r["tiled_head"] == r["predicted_head"]
             and (r["target"] is None or r["tiled"] <= r["target"]) and r["at_target"].get("exact", True)
             and r["at_target"].get("arena", 0) <= (r["target"] or 0) for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
