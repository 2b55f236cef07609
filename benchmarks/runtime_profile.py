"""Where SwapInterpreter's time goes when it streams: per-phase cost of loading every stage once.

    python benchmarks/runtime_profile.py out/bench_models/mlp_72mb.swap.tflite --budget-mib 64 --kernels builtin

Repeats, outside the prefetch thread and without overlap, what one invoke's stage loads do:
take a stage buffer (reused slot, as the runtime does, or fresh), positioned reads of the
segments, CRC32 checks, interpreter construction, allocate_tensors (where XNNPACK packs its copy
of the weights), and releasing the stage. Prints milliseconds per invoke (all stages) next to the
stock interpreter's median invoke on the original model, when given.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from tflm_swap.interpreters import litert_interpreter, random_inputs, run_litert
from tflm_swap.runtime import SwapInterpreter
from tflm_swap.runtime.crc import NATIVE, crc32
from tflm_swap.runtime.process_memory import bytes_view, pin_mmap_threshold, writable_bytes


def profile_loads(swap: SwapInterpreter, fresh: bool, repeats: int) -> dict[str, float]:
    """Seconds per phase, summed over all stages, averaged over `repeats` passes."""
    templates = [swap._templates[i] for i in swap._streamed]  # resident stages are read once, not per invoke
    size = max(t.base + t.blob_size for t in templates)
    slot, _ = writable_bytes(size)
    totals: dict[str, float] = {}

    def tick(phase: str, started: float) -> float:
        now = time.perf_counter()
        totals[phase] = totals.get(phase, 0.0) + now - started
        return now

    for _ in range(repeats):
        for t in templates:
            clock = time.perf_counter()
            if fresh:
                slot = None
                slot, _ = writable_bytes(size)
            view = bytes_view(slot)
            clock = tick("buffer (fresh: allocate + zero)" if fresh else "buffer (reused slot)", clock)
            view[: len(t.graph)] = t.graph
            blob = view[t.base:]
            for sid, offset in t.placement.items():
                seg = swap.manifest.segments[sid]
                part = blob[offset: offset + seg.size]
                os.preadv(swap._fd, [part], swap.manifest.image_offset + seg.offset)
                clock = tick("pread segments", clock)
                if crc32(part) != seg.crc32:
                    raise SystemExit(f"segment {seg.id}: CRC32 mismatch")
                clock = tick(f"CRC32 check ({'native' if NATIVE else 'zlib'})", clock)
            del blob, view, part
            interpreter = litert_interpreter(slot, **swap._options)
            clock = tick("interpreter construction", clock)
            interpreter.allocate_tensors()
            clock = tick("allocate_tensors (XNNPACK packing)", clock)
            del interpreter
            tick("release", clock)
    return {k: v / repeats for k, v in totals.items()}


def stock_median(path: str, builtin: bool, n: int = 20) -> float:
    """Median invoke of the stock interpreter on the original model, seconds."""
    interpreter = litert_interpreter(model_path=path, default_delegates=not builtin)
    interpreter.allocate_tensors()
    inputs = random_inputs(interpreter.get_input_details(), np.random.default_rng(0))
    run_litert(interpreter, inputs)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        run_litert(interpreter, inputs)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("segmented")
    ap.add_argument("--budget-mib", type=float, required=True)
    ap.add_argument("--kernels", choices=("xnnpack", "builtin"), default="xnnpack")
    ap.add_argument("--prefetch", type=int, default=1)
    ap.add_argument("--original", help="the original .tflite, to time the stock interpreter")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    builtin = args.kernels == "builtin"
    swap = SwapInterpreter(args.segmented, ram_budget=int(args.budget_mib * 2**20), prefetch=args.prefetch,
                           default_delegates=not builtin)
    swap.allocate_tensors()
    pin_mmap_threshold()
    weights = sum(swap._templates[i].stage.weight_bytes for i in swap._streamed)
    print(f"{Path(args.segmented).name}, {args.kernels}, budget {args.budget_mib} MiB: {len(swap.stages)} stages "
          f"({len(swap.stages) - len(swap._streamed)} resident), {weights / 2**20:.1f} MiB of weights read per invoke")
    for fresh in (False, True):
        phases = profile_loads(swap, fresh, args.repeats)
        print(f"  {'fresh buffers' if fresh else 'reused slots'}: total {sum(phases.values()) * 1e3:.1f} ms/invoke")
        for phase, seconds in phases.items():
            print(f"    {phase:<38} {seconds * 1e3:8.1f} ms")
    if args.original:
        print(f"  stock interpreter, median invoke: {stock_median(args.original, builtin) * 1e3:.2f} ms")
    swap.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
