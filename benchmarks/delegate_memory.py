"""Peak memory and latency of stock LiteRT vs LiteRT with the tflm_swap weight-streaming delegate.

Builds (and caches) two dense-heavy models, a float32 one with > 256 MB of weights and an int8 one with
> 64 MB, segments them, and runs each configuration in a fresh child process that reports its peak RSS
(VmHWM) above the RSS it had before creating the interpreter, the median latency, and its outputs:

  interpreter-only stock reference interpreter, tensors allocated, never invoked: the interpreter's own
                  memory, subtracted from the others to get the RSS attributable to weights
  stock-default   LiteRT as shipped (XNNPACK; packs its own copy of the weights)
  stock-ref       LiteRT reference kernels (BUILTIN_REF): reads the mmapped weights in place
  delegate-ref    reference kernels + the delegate (the bit-exact target: same arithmetic)
  delegate-ref-np the same without prefetch (one tile buffer, reads not overlapped)
  delegate-default XNNPACK for the unclaimed operators + the delegate

Usage: python benchmarks/delegate_memory.py [--tile-bytes 1048576 [262144 4194304 ...]] [--runs 11] [--out DIR]
       [--json FILE]   (extra tile sizes: delegate-ref only, to show peak memory following the tile size)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MIB = 1 << 20
CONFIGS = ("interpreter-only", "stock-default", "stock-ref", "delegate-ref", "delegate-ref-np", "delegate-default")
MODELS = {  # name: (input shape, layers, dtype)
    "dense_f32": ([1, 4096], [("fc", 8192, "RELU"), ("fc", 4096, "RELU"), ("fc", 1000, "NONE")], "float32"),
    "dense_i8": ([1, 4096], [("fc", 8192, "RELU"), ("fc", 4096, "RELU"), ("fc", 1000, "NONE")], "int8"),
}


# ------------------------------------------------------------------------------------ child
def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024
    return out


def child(spec: dict) -> dict:
    """Measure one configuration in this process."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType, load_delegate

    baseline = _status()["VmRSS"]
    config = spec["config"]
    delegates = []
    if config.startswith("delegate"):
        options = dict(spec["options"])
        if config == "delegate-ref-np":
            options["prefetch"] = "false"
        delegates = [load_delegate(spec["library"], options)]
    resolver = OpResolverType.AUTO if config.endswith("default") else OpResolverType.BUILTIN_REF
    t0 = time.perf_counter()
    interpreter = Interpreter(model_path=spec["model"], experimental_delegates=delegates,
                              experimental_op_resolver_type=resolver, num_threads=1)
    interpreter.allocate_tensors()
    setup = time.perf_counter() - t0
    detail = interpreter.get_input_details()[0]
    rng = np.random.default_rng(0)
    if detail["dtype"] == np.int8:
        x = rng.integers(-128, 128, size=detail["shape"]).astype(np.int8)
    else:
        x = rng.standard_normal(detail["shape"]).astype(np.float32)
    interpreter.set_tensor(detail["index"], x)
    times = []
    for _ in range(0 if config == "interpreter-only" else spec["runs"] + 1):  # the first run is a warm-up
        t = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - t)
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.save(spec["output"], out)
    status = _status()
    return {"config": config, "baseline_rss": baseline, "hwm": status["VmHWM"], "rss": status["VmRSS"],
            "peak_above_baseline": status["VmHWM"] - baseline, "setup_s": setup,
            "median_s": statistics.median(times[1:]) if times else None, "first_s": times[0] if times else None}


# ----------------------------------------------------------------------------------- parent
def build_models(out: Path) -> dict[str, Path]:
    """Segmented benchmark models, built once and cached in `out`."""
    paths = {}
    for name, (shape, layers, dtype) in MODELS.items():
        path = out / f"{name}.tflite"
        paths[name] = path
        if path.is_file():
            print(f"[models] {name}: cached {path} ({path.stat().st_size / MIB:.0f} MiB)", flush=True)
            continue
        from tflm_swap import Model, segment_model
        from tflm_swap.converters import synthetic as m

        print(f"[models] building {name} ...", flush=True)
        t = time.perf_counter()
        built = [m.fc(units, act) for _, units, act in layers]
        raw = m.build_model(shape, built, dtype, per_channel=True, seed=0)
        data = segment_model(Model.from_bytes(raw))
        del raw
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        print(f"[models] {name}: {len(data) / MIB:.0f} MiB in {time.perf_counter() - t:.0f} s", flush=True)
    return paths


def weight_bytes(path: Path) -> int:
    from tflm_swap.delegate.tile_table import _read_graph

    return _read_graph(path)[1].external_bytes


def read_bandwidth(path: Path, cold: bool) -> float:
    """Sequential read bandwidth (bytes/s) of `path` with 1 MiB preads; cold = after evicting its pages."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if cold:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        else:
            while os.read(fd, 8 * MIB):  # warm the page cache
                pass
        size, pos = os.fstat(fd).st_size, 0
        t = time.perf_counter()
        while pos < size:
            pos += len(os.pread(fd, MIB, pos)) or size
        return size / (time.perf_counter() - t)
    finally:
        os.close(fd)


def run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['config']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(name: str, path: Path, args, out: Path) -> dict:
    import numpy as np

    from tflm_swap.delegate import delegate_library, delegate_options, detect_rounding

    tile_bytes = args.tile_bytes[0]
    print(f"[{name}] tile table ({tile_bytes} B tiles) ...", flush=True)
    options = delegate_options(path, tile_bytes=tile_bytes, rounding=detect_rounding())
    weights = weight_bytes(path)
    hot, cold = read_bandwidth(path, cold=False), read_bandwidth(path, cold=True)
    results = {}
    for config in CONFIGS:
        print(f"[{name}] {config} ...", flush=True)
        spec = {"config": config, "model": str(path), "options": options, "library": delegate_library(),
                "runs": args.runs, "output": str(out / f"{name}.{config}.npy")}
        results[config] = run_child(spec)
    measured = [c for c in CONFIGS if c != "interpreter-only"]
    outs = {c: np.load(out / f"{name}.{c}.npy") for c in measured}
    overhead = results["interpreter-only"]["peak_above_baseline"]
    for config in measured:
        results[config]["weights_attributable"] = results[config]["peak_above_baseline"] - overhead
        results[config]["ratio_vs_stock_ref"] = results[config]["median_s"] / results["stock-ref"]["median_s"]
        diff = np.abs(outs[config].astype(np.float64) - outs["stock-ref"].astype(np.float64))
        results[config]["identical_to_stock_ref"] = outs[config].tobytes() == outs["stock-ref"].tobytes()
        results[config]["max_abs_diff_vs_stock_ref"] = float(diff.max())
    sweep = []
    for extra in args.tile_bytes[1:]:
        print(f"[{name}] delegate-ref with {extra} B tiles ...", flush=True)
        spec = {"config": "delegate-ref", "model": str(path), "library": delegate_library(), "runs": args.runs,
                "options": delegate_options(path, tile_bytes=extra, rounding=options["rounding"],
                                            table_path=out / f"{name}.{extra}.tiles"),
                "output": str(out / f"{name}.sweep.npy")}
        r = run_child(spec)
        same = np.load(out / f"{name}.sweep.npy").tobytes() == outs["stock-ref"].tobytes()
        sweep.append({"tile_bytes": extra, "target_bytes": 2 * extra + MIB, "median_s": r["median_s"],
                      "weights_attributable": r["peak_above_baseline"] - overhead, "identical_to_stock_ref": same})
    stock = results["stock-ref"]["median_s"]
    return {"model": name, "file_bytes": path.stat().st_size, "weight_bytes": weights, "tile_bytes": tile_bytes,
            "target_bytes": 2 * tile_bytes + MIB, "tile_sweep": sweep, "read_bw_hot": hot, "read_bw_cold": cold,
            "read_once_hot_s": weights / hot, "read_once_cold_s": weights / cold,
            "bound_ratio_serial_hot": (stock + weights / hot) / stock,
            "bound_ratio_serial_cold": (stock + weights / cold) / stock,
            "bound_ratio_overlap_cold": max(stock, weights / cold) / stock, "interpreter_overhead": overhead,
            "configs": results}


def report(rows: list[dict]) -> None:
    print()
    for r in rows:
        print(f"{r['model']}: {r['weight_bytes'] / MIB:.1f} MiB weights, tile {r['tile_bytes'] / MIB:.2f} MiB, "
              f"target peak <= 2 x tile + 1 MiB = {r['target_bytes'] / MIB:.2f} MiB; read bandwidth "
              f"{r['read_bw_hot'] / 1e9:.2f} GB/s hot, {r['read_bw_cold'] / 1e9:.2f} GB/s cold")
        stock = r["configs"]["stock-ref"]["median_s"]
        print(f"  interpreter alone (allocated, not invoked): {r['interpreter_overhead'] / MIB:.2f} MiB above base")
        print(f"  {'config':17} {'peak above base':>16} {'weights-attrib.':>16} {'<= target':>9} {'median ms':>10} "
              f"{'vs stock-ref':>13} {'identical':>10}")
        for name, c in r["configs"].items():
            if name == "interpreter-only":
                continue
            ok = "yes" if c["weights_attributable"] <= r["target_bytes"] else "no"
            print(f"  {name:17} {c['peak_above_baseline'] / MIB:12.2f} MiB {c['weights_attributable'] / MIB:12.2f} MiB "
                  f"{ok:>9} {c['median_s'] * 1e3:10.1f} {c['ratio_vs_stock_ref']:12.2f}x "
                  f"{str(c['identical_to_stock_ref']):>10}")
        for t in r["tile_sweep"]:
            ok = "yes" if t["weights_attributable"] <= t["target_bytes"] else "no"
            print(f"  delegate-ref, {t['tile_bytes'] / MIB:5.2f} MiB tiles: weights-attrib. "
                  f"{t['weights_attributable'] / MIB:.2f} MiB (target {t['target_bytes'] / MIB:.2f} MiB: {ok}), "
                  f"{t['median_s'] * 1e3:.1f} ms ({t['median_s'] / stock:.2f}x), "
                  f"identical {t['identical_to_stock_ref']}")
        print(f"  reading the weights once: {r['read_once_hot_s'] * 1e3:.1f} ms hot / "
              f"{r['read_once_cold_s'] * 1e3:.1f} ms cold -> latency-ratio bound "
              f"{r['bound_ratio_serial_hot']:.2f}x (hot, serial), {r['bound_ratio_serial_cold']:.2f}x (cold, serial), "
              f"{r['bound_ratio_overlap_cold']:.2f}x (cold, fully overlapped)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tile-bytes", type=int, nargs="+", default=[MIB])
    p.add_argument("--runs", type=int, default=11)
    p.add_argument("--out", type=Path, default=Path.home() / ".cache" / "tflm_swap" / "bench_delegate")
    p.add_argument("--json", type=Path, default=None, help="write the results here (default OUT/results.json)")
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    paths = build_models(args.out)
    rows = [measure(name, paths[name], args, args.out) for name in args.models]
    report(rows)
    target = args.json or args.out / "results.json"
    target.write_text(json.dumps(rows, indent=1))
    print(f"\nresults: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
