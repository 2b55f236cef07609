"""SwapInterpreter against the stock LiteRT interpreter: peak RSS, RSS held by weights, latency.

    python benchmarks/runtime_swap.py --quick      # MLPerf Tiny models only, 5 invokes (~1 min)
    python benchmarks/runtime_swap.py --rounds 2   # + MobileNetV2, a 72 MB MLP, ResNet50 (built once,
                                                   #   cached in out/bench_models/; ~12 min on 2 cores)
    python benchmarks/runtime_swap.py --models resnet50 --kernels builtin --cache warm --rounds 3

Every measurement runs in its own child process (this script with `--child`), one at a time:

* stock: LiteRT's `Interpreter(model_path=original.tflite)` (it mmaps the file);
* swap: `SwapInterpreter(segmented.tflite, ram_budget=B, prefetch=1)` at several budgets (whole
  model, 50 % and 25 % of the weights when above the minimum, the prefetch-1 minimum) and at the
  prefetch-0 minimum;
* twin: the stock interpreter, builtin kernels, on the *aliased-weights twin* of the model: the
  same graph, tensors and activations, but every external weight buffer points at one shared
  zero region the size of the largest buffer. It measures what is not weights.

Per model, kernels and cache state: the twin once, then `--rounds` rounds of (stock, every swap
budget), then stock once more; a row reports the median of the children's medians.

Both kinds use the same kernels: `xnnpack` (LiteRT's default; XNNPACK packs its own copy of the
weights, which SwapInterpreter counts against the budget) or `builtin` (`default_delegates=False`).
With `--xnnpack-cache`, XNNPACK swap children page their stages' packed weights
(`xnnpack_cache_dir`, in out/bench_models/xnnpack_cache/): every stage is built once and only its
packed copy counts against the budget, so budgets are those of one weight copy. The files are made
by an unmeasured child per budget before the rounds; cold runs drop their pages too.

Memory, from /proc/self/status. baseline = VmRSS after the imports, before the model is opened;
peak = VmHWM after the last invoke; growth = peak - baseline.
**RSS attributable to weights** = growth(child) - (growth(twin child) - the twin's resident pages of
its own model file, from /proc/self/smaps): the twin holds the same activations, interpreter
structures and touched library code. What is left is the weights the child held at its peak,
plus anything the child uses beyond the twin (XNNPACK workspace, SwapInterpreter's templates and
per-stage interpreters): an upper bound on weight memory, compared with the budget x 1.10.
It does not attribute a prefetched stage's activations to weights: allocate_tensors maps an arena
without touching it (measured: +0.03 MiB RSS for MobileNetV2's 6.6 MB first-stage arena), so only
the running stage's arena is resident, and it is no larger than the twin's whole-graph arena. It
does include SwapInterpreter's fixed memory, which does not scale with the budget: per-stage
interpreter structures, the stage templates and the prefetch thread (~0.2 MiB for a resident
model, ~0.5-1 MiB when streaming). On the large models that is within the 10 % slack; on MLPerf
Tiny (budgets of 4-800 KB) it is not, so the summary gives the memory target for both apart.

Latency: time to open + allocate, the first invoke, then the median of N invokes after warm-up
invokes. "loads ms/inv" is the prefetch thread's time reading, checking and building streamed
stages per invoke: where it exceeds 1.25 x the stock invoke, no overlap can meet the latency target
at that budget (marked load-bound). Cold cache: `posix_fadvise(DONTNEED)` on the model file
before opening it and before every timed invoke (the stock interpreter keeps its mapped pages;
SwapInterpreter re-reads its stages).
Outputs: sha256 of all outputs for one seeded input; stock and swap must match bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OUT = ROOT / "out"
MODELS_DIR = OUT / "bench_models"
MIB = 2**20
SLACK = 1.10
LATENCY_RATIO = 1.25
LARGE = 4 * MIB  # models with at least this many weight bytes get the latency target


# ------------------------------------------------------------------------------------------ child
def _status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def _mapped_rss(path: str) -> int:
    """Resident bytes of this process's mappings of `path` (from /proc/self/smaps)."""
    target, total, inside = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping header: "start-end perms ... path"
                inside = line.rstrip("\n").endswith(target)
            elif inside and first == "Rss:":
                total += int(line.split()[1]) * 1024
    return total


def _drop_cache(path: str) -> None:
    """Ask the kernel to drop the file's cached pages (those not mapped by a process)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _open_interpreter(spec: dict):
    """The interpreter a child measures: stock LiteRT on a file, or SwapInterpreter."""
    from tflm_swap.interpreters import litert_interpreter
    from tflm_swap.runtime import SwapInterpreter

    builtin = spec["kernels"] == "builtin"
    if spec["kind"] == "swap":
        return SwapInterpreter(spec["path"], ram_budget=spec["budget"], prefetch=spec["prefetch"],
                               default_delegates=not builtin, xnnpack_cache_dir=spec.get("xnnpack_cache"))
    return litert_interpreter(model_path=spec["path"], default_delegates=not builtin)


def _run_once(interpreter, inputs) -> list:
    for d, x in zip(interpreter.get_input_details(), inputs):
        interpreter.set_tensor(d["index"], x)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


def child(spec: dict) -> dict:
    """Measure one configuration in this process; returns the record printed as JSON."""
    import ai_edge_litert.interpreter  # noqa: F401 - imported before the baseline in every child
    import numpy as np

    from tflm_swap.interpreters import random_inputs

    baseline = _status()
    cold = spec["cache"] == "cold"
    # cold: the model file, and what paged stages give back, are read from storage again
    files = [spec["path"]] + ([str(p) for p in sorted(Path(spec["xnnpack_cache"]).glob("stage-*"))]
                              if spec.get("xnnpack_cache") else [])
    if cold:
        for path in files:
            _drop_cache(path)
    started = time.perf_counter()
    interpreter = _open_interpreter(spec)
    interpreter.allocate_tensors()
    open_s = time.perf_counter() - started
    after_open = _status()
    inputs = random_inputs(interpreter.get_input_details(), np.random.default_rng(spec["seed"]))
    started = time.perf_counter()
    outputs = _run_once(interpreter, inputs)
    first_s = time.perf_counter() - started
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(o).tobytes() for o in outputs)).hexdigest()
    for _ in range(spec["warmup"]):
        _run_once(interpreter, inputs)
    times = []
    for _ in range(spec["invokes"]):
        if cold:
            for path in files:
                _drop_cache(path)
        started = time.perf_counter()
        outputs = _run_once(interpreter, inputs)
        times.append(time.perf_counter() - started)
    again = hashlib.sha256(b"".join(np.ascontiguousarray(o).tobytes() for o in outputs)).hexdigest()
    end = _status()
    mapped = _mapped_rss(spec["path"])
    stats = interpreter.stats() if spec["kind"] == "swap" else None
    if stats is not None:
        stats = {k: v for k, v in stats.items() if k != "stages"} | {
            "n_stages": len(stats["stages"]),
            "load_s": sum(s["load_s"] for s in stats["stages"]),
            "compute_s": sum(s["compute_s"] for s in stats["stages"]),
            "n_resident": sum(s["resident"] for s in stats["stages"]),
            "load_s_per_invoke": sum(s["load_s"] for s in stats["stages"] if not s["resident"])
            / max(stats["invokes"], 1),
        }
    return {
        "baseline_rss": baseline["VmRSS"], "open_hwm": after_open["VmHWM"], "peak_hwm": end["VmHWM"],
        "end_rss": end["VmRSS"], "mapped_file_rss": mapped, "open_s": open_s, "first_s": first_s,
        "median_s": statistics.median(times) if times else first_s, "digest": digest,
        "deterministic": digest == again, "stats": stats,
    }


def run_child(spec: dict, timeout: float = 1800) -> dict:
    """Run `spec` in a fresh Python process and parse its JSON record."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith(("INFO:", "W0000", "I0000"))]
        return {"error": f"exit {proc.returncode}: " + " / ".join(tail[-3:] or ["no output"])}
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------------- the models
@dataclass
class BenchModel:
    """A model under test: the original file, its segmented form and its aliased-weights twin."""

    name: str
    original: Path
    segmented: Path
    twin: Path
    weight_bytes: int  # external (segmented) weight bytes
    min_budget_1: int  # min_stage_budget at prefetch 1, per weight copy
    min_budget_0: int  # the same at prefetch 0 (one operator's weights)
    large: bool = False
    untiled_min_1: int | None = None  # tiled models: the untiled model's min_budget_1


def _keras_models() -> dict[str, object]:
    """Builders for the large models (imported lazily: TensorFlow is slow to import)."""

    def mobilenet_v2():
        import keras

        return keras.applications.MobileNetV2(alpha=1.0, weights=None, input_shape=(224, 224, 3))

    def resnet50():
        import keras

        return keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3))

    def mlp_72mb():
        import keras

        keras.utils.set_random_seed(0)
        layers = [keras.Input((1024,))] + [keras.layers.Dense(n, activation="relu") for n in (4096, 2048, 2048)]
        return keras.Sequential(layers + [keras.layers.Dense(1024)])

    return {"mobilenet_v2": mobilenet_v2, "mlp_72mb": mlp_72mb, "resnet50": resnet50}


# Large models segmented with their fully-connected layers split (convert(tile_bytes=...)): the
# original model they come from and the tile size. Stock runs that original file; one more budget,
# the untiled model's prefetch-1 minimum, compares the two at the same memory.
TILED = {"mlp_72mb_tiled": ("mlp_72mb", 4 << 20)}


def _original_of(name: str) -> Path:
    return MODELS_DIR / f"{TILED[name][0] if name in TILED else name}.tflite"


def _build_large(name: str) -> None:
    """Build, convert (float32) and segment a large model into MODELS_DIR, if not cached."""
    original, segmented = _original_of(name), MODELS_DIR / f"{name}.swap.tflite"
    if original.exists() and segmented.exists():
        return
    from tflm_swap.converters.convert import convert

    if name in TILED:
        base, tile_bytes = TILED[name]
        _build_large(base)
        print(f"segmenting {name}: {base} with fully-connected tiles of {tile_bytes >> 20} MiB",
              file=sys.stderr, flush=True)
        convert(original, tile_bytes=tile_bytes).save(segmented)
        return
    print(f"building {name} (once; cached in {MODELS_DIR})", file=sys.stderr, flush=True)
    result = convert(_keras_models()[name](), quantization="float32")
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    original.write_bytes(result.original)
    result.save(segmented)


def _segment(original: Path) -> Path:
    from tflm_swap import Model, segment_model

    segmented = MODELS_DIR / f"{original.stem}.swap.tflite"
    if not segmented.exists() or segmented.stat().st_mtime < original.stat().st_mtime:
        MODELS_DIR.mkdir(parents=True, exist_ok=True)
        segmented.write_bytes(segment_model(Model.load(original)))
    return segmented


def write_twin(segmented: Path, twin: Path) -> None:
    """The aliased-weights twin: the whole graph, every external buffer at offset 0 of one blob."""
    from tflm_swap import Model, read_manifest
    from tflm_swap.converters.submodel import extract_template

    raw = segmented.read_bytes()
    model = Model.from_bytes(raw, read_external=False)
    buffers = {e.buffer for seg in read_manifest(raw).segments for e in seg.entries}
    graph, base = extract_template(model, 0, len(model.operators) - 1, dict.fromkeys(buffers, 0))
    blob = max((model.buffer_size(b) for b in buffers), default=0)
    twin.write_bytes(graph + bytes(base - len(graph) + blob))


def prepare(name: str, original: Path, large: bool) -> BenchModel:
    """Segment (or build) a model, write its twin, and plan its minimum budget."""
    from tflm_swap import Model, plan_model
    from tflm_swap.planner import min_stage_budget
    from tflm_swap.runtime import min_ram_budget

    segmented = MODELS_DIR / f"{name}.swap.tflite" if large else _segment(original)
    twin = MODELS_DIR / f"{name}.twin.tflite"
    if not twin.exists() or twin.stat().st_mtime < segmented.stat().st_mtime:
        write_twin(segmented, twin)
    plan = plan_model(Model.from_bytes(segmented.read_bytes(), read_external=False), prefetch_depths=())
    untiled = (min_ram_budget(MODELS_DIR / f"{TILED[name][0]}.swap.tflite", 1, default_delegates=False)
               if name in TILED else None)
    return BenchModel(name, original, segmented, twin, plan.external_bytes, min_stage_budget(plan, 1),
                      min_stage_budget(plan, 0), large, untiled)


def budgets(model: BenchModel, copies: int, prefetch: int) -> list[tuple[str, int | None, int]]:
    """(label, budget, prefetch): whole model (one resident stage), for a tiled model the untiled
    model's prefetch-1 minimum, 50 % and 25 % of the weights when
    above the minimum, the minimum for `prefetch` (with the largest operators kept resident when
    that needs less than prefetch + 1 slots of the largest), and the minimum without prefetch."""
    total = model.weight_bytes * copies
    floor = (model.min_budget_1 if prefetch == 1 else model.min_budget_0 * (prefetch + 1)) * copies
    chosen: list[tuple[str, int | None, int]] = [("whole", None, prefetch)]
    if model.untiled_min_1 and prefetch == 1:
        chosen.append(("untiled min p1", model.untiled_min_1 * copies, prefetch))
    for label, fraction in (("50%", 0.5), ("25%", 0.25)):
        if int(total * fraction) > floor:
            chosen.append((label, int(total * fraction), prefetch))
    chosen.append((f"min p{prefetch}", floor, prefetch))
    if prefetch:
        chosen.append(("min p0", model.min_budget_0 * copies, 0))
    return chosen


# ---------------------------------------------------------------------------------- the sweep
@dataclass
class Row:
    """One line of the table: a swap child next to its stock and twin children."""

    model: str
    kernels: str
    cache: str
    label: str
    budget: int | None
    weight_bytes: int
    large: bool
    stock: dict
    twin: dict
    swap: dict
    checks: dict = field(default_factory=dict)


def _growth(record: dict) -> int:
    return record["peak_hwm"] - record["baseline_rss"]


def evaluate(row: Row, copies: int) -> None:
    """Fill row.checks: weights RSS vs budget, latency ratio, bit-identity."""
    if any("error" in r for r in (row.stock, row.twin, row.swap)):
        row.checks = {"error": next(r["error"] for r in (row.stock, row.twin, row.swap) if "error" in r)}
        return
    limit = row.budget if row.budget is not None else row.weight_bytes * copies
    overhead = _growth(row.twin) - row.twin["mapped_file_rss"]  # the twin's own weight pages excluded
    swap_w = _growth(row.swap) - overhead
    ratio = row.swap["median_s"] / row.stock["median_s"]
    row.checks = {
        "overhead_rss": overhead,
        "stock_weights_rss": _growth(row.stock) - overhead,
        "swap_weights_rss": swap_w,
        "limit": limit,
        "memory_ok": swap_w <= limit * SLACK,
        "ratio": ratio,
        "latency_ok": (ratio <= LATENCY_RATIO if row.large and row.cache == "warm" and row.swap["stats"]["prefetch"]
                       else None),
        # reading and checking the streamed weights alone (on the prefetch thread) takes longer
        # than the target allows: no overlap can meet it at this budget
        "load_bound": row.swap["stats"].get("load_s_per_invoke", 0) > LATENCY_RATIO * row.stock["median_s"],
        "identical": (row.stock["digest"] == row.swap["digest"] and row.swap["deterministic"]
                      and row.stock["deterministic"]),
    }


def sweep(models: list[BenchModel], kernels: list[str], caches: list[str], args) -> list[Row]:
    """Run every child, one at a time, printing a line per child."""
    rows = []
    for m in models:
        invokes = args.invokes or (5 if args.quick else (20 if m.large else 30))
        for kern in kernels:
            for cache in caches:
                base = {"kernels": kern, "cache": cache, "seed": 0, "warmup": 2, "invokes": invokes,
                        "prefetch": args.prefetch, "budget": None}
                rows.extend(_group(m, kern, cache, base, args))
    return rows


def _group(m: BenchModel, kern: str, cache: str, base: dict, args) -> list[Row]:
    """One model, kernels and cache state: the twin once, then `rounds` rounds of stock and every
    budget, and stock once more (alternating, so that load from other processes hits both alike)."""
    paged = _xnnpack_cache(m, kern, args)
    copies = 2 if kern == "xnnpack" and paged is None else 1
    choices = budgets(m, copies, args.prefetch)
    stock_spec = base | {"kind": "stock", "path": str(m.original)}
    twin = _progress(m.name, kern, cache, "twin", base | {"kind": "stock", "path": str(m.twin), "kernels": "builtin"})
    for label, budget, prefetch in choices if paged else ():  # build the paged stages' files, unmeasured
        _progress(m.name, kern, cache, f"prepare {label}", base | {
            "kind": "swap", "path": str(m.segmented), "budget": budget, "prefetch": prefetch,
            "xnnpack_cache": paged, "warmup": 0, "invokes": 0})
    stocks: list[dict] = []
    swaps: dict[str, list[dict]] = {label: [] for label, _, _ in choices}
    for r in range(args.rounds):
        stocks.append(_progress(m.name, kern, cache, f"stock (round {r + 1})", stock_spec))
        for label, budget, prefetch in choices:
            swaps[label].append(_progress(m.name, kern, cache, f"swap {label} (round {r + 1})", base | {
                "kind": "swap", "path": str(m.segmented), "budget": budget, "prefetch": prefetch,
                "xnnpack_cache": paged}))
    stocks.append(_progress(m.name, kern, cache, "stock (again)", stock_spec))
    group = []
    for label, budget, _ in choices:
        row = Row(m.name, kern, cache, label, budget, m.weight_bytes, m.large, _merge(stocks), twin,
                  _merge(swaps[label]))
        evaluate(row, copies)
        group.append(row)
    return group


def _xnnpack_cache(m: BenchModel, kernels: str, args) -> str | None:
    """Where XNNPACK swap children keep packed stage weights (made by the first child, reused)."""
    if kernels != "xnnpack" or not args.xnnpack_cache:
        return None
    return str(MODELS_DIR / "xnnpack_cache" / m.name)


def _merge(runs: list[dict]) -> dict:
    """Several children of one configuration: the median of their medians (all kept in the record),
    the memory of the one that grew most, and whether every child produced the same outputs."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    merged = dict(runs[0])
    merged["runs"] = [{k: r[k] for k in ("baseline_rss", "peak_hwm", "median_s", "first_s")} for r in runs]
    merged["medians_s"] = [r["median_s"] for r in runs]
    merged["median_s"] = statistics.median(merged["medians_s"])
    worst = max(runs, key=_growth)  # memory: the child that grew most over its own baseline
    merged["peak_hwm"], merged["baseline_rss"] = worst["peak_hwm"], worst["baseline_rss"]
    merged["deterministic"] = all(r["deterministic"] and r["digest"] == runs[0]["digest"] for r in runs)
    return merged


def _progress(model: str, kernels: str, cache: str, what: str, spec: dict) -> dict:
    started = time.perf_counter()
    record = run_child(spec)
    detail = record.get("error") or f"median {record['median_s'] * 1e3:.2f} ms, peak {record['peak_hwm'] / MIB:.1f} MiB"
    print(f"[{time.perf_counter() - started:5.1f}s] {model} {kernels} {cache} {what}: {detail}",
          file=sys.stderr, flush=True)
    return record


# ---------------------------------------------------------------------------------- reporting
def _mib(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / MIB:.3f}" if abs(n) < MIB else f"{n / MIB:.2f}"


def _mark(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


HEADER = ["model", "kernels", "cache", "budget", "stages (resident)", "streamed MiB/inv", "stock peak", "swap peak",
          "stock W-RSS", "swap W-RSS", "swap counted", "limit x1.1", "mem", "stock ms", "swap ms", "ratio", "<=1.25",
          "loads ms/inv", "1st invoke st/sw ms", "identical"]


def _cells(r: Row) -> list[str]:
    c, stock, swap = r.checks, r.stock, r.swap
    return [
        r.model, r.kernels, r.cache, f"{r.label} ({_mib(c['limit'])})",
        f"{swap['stats']['n_stages']} ({swap['stats'].get('n_resident', 0)})",
        _mib(swap["stats"].get("streamed_bytes_per_invoke", 0)), _mib(stock["peak_hwm"]), _mib(swap["peak_hwm"]),
        _mib(c["stock_weights_rss"]), _mib(c["swap_weights_rss"]),
        _mib(swap["stats"]["peak_weight_bytes"]), _mib(int(c["limit"] * SLACK)), _mark(c["memory_ok"]),
        f"{stock['median_s'] * 1e3:.2f}", f"{swap['median_s'] * 1e3:.2f}", f"{c['ratio']:.2f}",
        _mark(c["latency_ok"]) + (" (load-bound)" if c["latency_ok"] is False and c["load_bound"] else ""),
        f"{swap['stats'].get('load_s_per_invoke', 0) * 1e3:.2f}",
        f"{stock['first_s'] * 1e3:.0f}/{swap['first_s'] * 1e3:.0f}",
        "yes" if c["identical"] else "NO",
    ]


def table(rows: list[Row]) -> str:
    """The markdown table (MiB, ms)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        if "error" in r.checks:
            lines.append(f"| {r.model} | {r.kernels} | {r.cache} | {r.label} | error: {r.checks['error'][:80]} |")
        else:
            lines.append("| " + " | ".join(_cells(r)) + " |")
    return "\n".join(lines)


def summary(rows: list[Row]) -> list[str]:
    """PASS/FAIL per target, over the large models and over the small ones (MLPerf Tiny: budgets of
    4-800 KB, where SwapInterpreter's fixed memory alone exceeds the 10 % slack)."""
    ok = [r for r in rows if "error" not in r.checks]
    latency = [r for r in ok if r.checks["latency_ok"] is not None]
    bound = [r for r in latency if not r.checks["latency_ok"] and r.checks["load_bound"]]
    out = []
    for label, large in (("large models", True), ("small models", False)):
        group = [r for r in ok if r.large == large]
        if group:
            out.append(f"memory, {label} (swap weights RSS <= budget x {SLACK}): "
                       f"{_mark(all(r.checks['memory_ok'] for r in group))} "
                       f"({sum(r.checks['memory_ok'] for r in group)}/{len(group)})")
    out += [
        f"latency (warm, large models, swap/stock <= {LATENCY_RATIO}): "
        f"{_mark(all(r.checks['latency_ok'] for r in latency)) if latency else '-'} "
        f"({sum(bool(r.checks['latency_ok']) for r in latency)}/{len(latency)}"
        f"{f'; {len(bound)} of the misses load-bound' if bound else ''})",
        f"bit-identical outputs: {_mark(all(r.checks['identical'] for r in ok))} "
        f"({sum(r.checks['identical'] for r in ok)}/{len(ok)})",
    ]
    if len(ok) < len(rows):
        out.append(f"errors: {len(rows) - len(ok)} rows")
    return out


def plot(rows: list[Row], path: Path, paged: bool = False) -> bool:
    """Weights RSS and latency against the budget, per large model, warm cache: builtin kernels,
    or XNNPACK when the run has no builtin rows (paged: with --xnnpack-cache). Whether it wrote."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kernels = "builtin" if any(r.kernels == "builtin" for r in rows) else "xnnpack"
    chosen = [r for r in rows if r.large and r.kernels == kernels and r.cache == "warm" and "error" not in r.checks]
    if not chosen:
        return False
    fig, (mem, lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r.model for r in chosen):
        own = sorted((r for r in chosen if r.model == name and r.swap["stats"]["prefetch"]),
                     key=lambda r: r.checks["limit"])
        budgets = [r.checks["limit"] / MIB for r in own]
        line, = mem.plot(budgets, [r.checks["swap_weights_rss"] / MIB for r in own], "o-", label=name)
        mem.plot(budgets, [b * SLACK for b in budgets], ":", color=line.get_color())
        lat.plot(budgets, [r.checks["ratio"] for r in own], "o-", color=line.get_color(), label=name)
    mem.set(xscale="log", yscale="log", xlabel="budget, MiB (log)", ylabel="weights RSS, MiB (log)",
            title="memory (dotted: budget x 1.1)")
    lat.axhline(LATENCY_RATIO, color="grey", ls="--", lw=1)
    lat.set(xscale="log", xlabel="budget, MiB (log)", ylabel="median invoke / stock",
            title=f"latency, prefetch 1 (dashed: {LATENCY_RATIO}x)")
    for ax in (mem, lat):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    what = "builtin kernels" if kernels == "builtin" else "XNNPACK" + (", paged stages" if paged else "")
    fig.suptitle(f"SwapInterpreter vs stock LiteRT, {what}, warm file cache")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def conditions() -> str:
    """CPU count and load, so numbers from a shared machine can be read in context."""
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, " \
           f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"


# --------------------------------------------------------------------------------------- main
def collect_models(args) -> list[BenchModel]:
    """The MLPerf Tiny models in ../shared, plus the large models unless --quick."""
    wanted = set(args.models.split(",")) if args.models else None
    models = []
    for path in sorted((Path(args.shared) / "models" / "mlperf_tiny").glob("*.tflite")):
        if wanted is None or path.stem in wanted:
            models.append(prepare(path.stem, path, large=False))
    large = [] if args.quick else ["mobilenet_v2", "mlp_72mb", *TILED] + ([] if args.no_resnet else ["resnet50"])
    for name in [*_keras_models(), *TILED]:
        if (name in large and wanted is None) or (wanted is not None and name in wanted):
            _build_large(name)
            models.append(prepare(name, _original_of(name), large=True))
    for m in models:
        m.large = m.weight_bytes >= LARGE
    return models


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="MLPerf Tiny models only, 5 invokes")
    ap.add_argument("--no-resnet", action="store_true", help="skip ResNet50 (weights=None, ~100 MB float)")
    ap.add_argument("--models", help="comma-separated model names (file stems or mobilenet_v2, mlp_72mb, resnet50)")
    ap.add_argument("--kernels", default="xnnpack,builtin", help="xnnpack, builtin or both")
    ap.add_argument("--cache", default="warm,cold", help="warm, cold or both")
    ap.add_argument("--invokes", type=int, default=0, help="timed invokes per child (default by model size)")
    ap.add_argument("--prefetch", type=int, default=1)
    ap.add_argument("--xnnpack-cache", action="store_true",
                    help="XNNPACK swap children keep packed stage weights in cache files (else: repack per load)")
    ap.add_argument("--rounds", type=int, default=1, help="alternate stock and swap children this many times")
    ap.add_argument("--shared", default=str(SHARED))
    ap.add_argument("--json", default=None, help="where to write the records (default out/runtime_swap*.json)")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    print(f"conditions: {conditions()}", file=sys.stderr)
    models = collect_models(args)
    if not models:
        print(f"no models found (MLPerf Tiny models are read from {args.shared}/models/mlperf_tiny)", file=sys.stderr)
        return 2
    rows = sweep(models, args.kernels.split(","), args.cache.split(","), args)
    print(table(rows))
    print(f"\nMiB; peak = VmHWM; W-RSS = RSS attributable to weights (growth over the child's baseline minus "
          f"the aliased-weights twin's growth); limit = budget (whole: all weights x copies); "
          f"ms = median invoke; prefetch {args.prefetch}; {conditions()}")
    for line in summary(rows):
        print(line)
    path = Path(args.json or OUT / f"runtime_swap{'_quick' if args.quick else ''}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    plotted = plot(rows, path.with_suffix(".png"), paged=args.xnnpack_cache)
    path.write_text(json.dumps({"conditions": conditions(), "args": vars(args),
                                "rows": [asdict(r) for r in rows]}, indent=1, default=str))
    print(f"records: {path}" + (f", plot: {path.with_suffix('.png')}" if plotted else ""), file=sys.stderr)
    return 0 if all(r.checks.get("identical") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
