"""TFLM on an emulated Cortex-M4 (mps2-an386, QEMU): every MLPerf Tiny int8 model in ../shared, stock
TFLM vs our projects (blocking loads, prefetch), 32-bit arenas and instruction counts side by side.

    python benchmarks/micro_qemu.py [--shared ../shared] [--inferences 5] [--kernels cmsis-nn] [--json F]

Per model: the 64-bit host arena of our blocking project (what the header carried before), the
32-bit arenas measured under QEMU (the smallest that runs; stock TFLM's too, the stock model run
with every weight in the graph), TFLM's arena_used_bytes there, instructions per inference (SysTick
under -icount shift=0: ticks x 40, instructions, not cycles) for stock, blocking and prefetch, flash
bytes read per inference, and whether all outputs are bit-identical to the host TFLM (which runs
the reference kernels). `--kernels cmsis-nn`: TFLM's CMSIS-NN kernels for stock and ours; the 32-bit
arenas are then measured with them (CMSIS-NN keeps scratch buffers in the arena), not read from the
header, which is sized for the reference kernels.

QEMU has no DMA: the prefetch build's flash driver completes a read when polled, so its count is
the blocking count plus the cost of the asynchronous path, not the overlap a real DMA would give.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tflm_swap.fileio import write_atomic
from tflm_swap.micro import export_project, mcu, run_host_tflm
from tflm_swap.micro.host import io_specs

MODELS = ("ad01_int8", "kws_ref_model", "pretrainedResnet_quant", "vww_96_int8")
NO_LOADS = 1 << 30  # min_segment_bytes keeping every weight in the graph: the stock model


def _inputs(data: bytes, n: int) -> list[np.ndarray]:
    (shape, dtype), = io_specs(data, "inputs")
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    return [rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype) for _ in range(n)]


def measure(path: Path, work: Path, inferences: int, kernels: str = "reference") -> dict:
    """All figures for one model."""
    data = path.read_bytes()
    inputs = _inputs(data, inferences)
    host = run_host_tflm(data, None, [[x] for x in inputs])
    row: dict = {"model": path.stem}
    row["host_arena_64bit"] = export_project(path, work / "host", arena_board=None).arena_size
    variants = {"stock": {"min_segment_bytes": NO_LOADS}, "blocking": {}, "prefetch": {"prefetch": True}}
    exact = True
    for name, options in variants.items():
        project = export_project(path, work / name, **options)
        arena = project.mcu_arena_size if kernels == "reference" else mcu.measure_arena(project, kernels=kernels)
        run = mcu.run_project(project, inputs, kernels=kernels, arena_size=arena)
        exact &= all(np.array_equal(a, b) for ours, ref in zip(run.outputs, host.outputs) for a, b in zip(ours, ref))
        row[f"{name}_arena_32bit"] = arena
        row[f"{name}_arena_used"] = run.arena_used_bytes
        row[f"{name}_instructions"] = int(np.median(run.invoke_instructions))
        row[f"{name}_flash_bytes"] = run.flash_bytes_read // inferences
    row["bit_exact"] = exact
    return row


COLUMNS = (("model", "model"), ("host_arena_64bit", "ours 64-bit host"), ("blocking_arena_32bit", "ours 32-bit"),
           ("blocking_arena_used", "used"), ("prefetch_arena_32bit", "prefetch 32-bit"),
           ("stock_arena_32bit", "stock 32-bit"), ("stock_arena_used", "stock used"),
           ("stock_instructions", "instr stock"), ("blocking_instructions", "instr blocking"),
           ("prefetch_instructions", "instr prefetch"), ("blocking_flash_bytes", "flash B/inf"),
           ("bit_exact", "bit-exact"))


def table(rows: list[dict]) -> str:
    """A markdown table of the rows."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [f"{row[k]:,}" if isinstance(row[k], int) and not isinstance(row[k], bool) else str(row[k])
                 for k, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    p.add_argument("--inferences", type=int, default=5)
    p.add_argument("--kernels", choices=mcu.KERNEL_SETS, default="reference", help="TFLM kernel set")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    os.environ.setdefault("TFLM_SWAP_VENDOR", str(Path(args.shared) / "vendor"))
    why = mcu.available()
    if why:
        print(f"cannot run on {mcu.DEFAULT_BOARD}: {why}", file=sys.stderr)
        return 1
    rows = []
    for name in MODELS:
        path = Path(args.shared) / "models" / "mlperf_tiny" / f"{name}.tflite"
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="tswap_qemu_") as tmp:
            rows.append(measure(path, Path(tmp), args.inferences, args.kernels))
        print(f"{name}: {time.monotonic() - start:.0f} s", file=sys.stderr)
    print(table(rows))
    if args.json:
        write_atomic(args.json, json.dumps(rows, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
