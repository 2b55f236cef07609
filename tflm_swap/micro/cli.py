"""`tflm-swap convert --target tflm`: write a TFLM project (graph C array, image, headers, main.cc)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..errors import TflmSwapError
from .codegen import generate_project
from .image import DEFAULT_ALIGNMENT
from .native import NativeToolError
from .predict import predict_arena
from .rewrite import MicroModel, rewrite_for_tflm

PREDICTION_MARGIN = 1024  # bytes: TFLM builds differ by a few hundred bytes of persistent data


def add_tflm_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the `tflm` target (added to `convert`)."""
    g = parser.add_argument_group("--target tflm (output: a directory of C/C++ sources + image)")
    g.add_argument("--prefix", default=None, help="C identifier prefix of generated names (default: from model)")
    g.add_argument("--prefetch", action="store_true", help="read each operator's largest weights one op early")
    g.add_argument("--verify-crc", action="store_true", help="check each segment's CRC32 on every load")
    g.add_argument("--alignment", type=int, default=DEFAULT_ALIGNMENT, help="segment alignment in the image")
    g.add_argument("--arena-size", type=int, default=None,
                   help="arena bytes for the generated header (default: measured on the host TFLM)")


def convert_tflm(data: bytes, model_path: str, args) -> int:
    """Rewrite `data` for TFLM and write the project to `args.output`; prints a summary."""
    micro = rewrite_for_tflm(data, min_segment_bytes=args.min_segment_bytes, prefetch=args.prefetch,
                             verify_crc=args.verify_crc, alignment=args.alignment, source=model_path)
    prefix = args.prefix or _identifier(Path(model_path).stem)
    arena = args.arena_size or measured_arena(micro, data)
    files = generate_project(micro, args.output, prefix, arena, inputs=(model_path,))
    print(f"wrote {len(files)} files to {args.output}: graph {len(micro.graph)} bytes "
          f"({prefix}_model_data.cc), image {len(micro.image)} bytes ({prefix}_image.bin), "
          f"{len(micro.loads)} load operators, {micro.flash_bytes_per_inference} flash bytes per "
          f"inference, arena {arena} bytes")
    return 0


def measured_arena(micro: MicroModel, source: bytes) -> int:
    """The arena the host TFLM allocates for the rewritten graph (one inference on zero inputs).

    Without the host TFLM (xmos-ai-tools, compilers), the planner's prediction is used instead,
    with the stock model's persistent arena taken from the official tflite-micro interpreter and a
    `PREDICTION_MARGIN` for the difference between TFLM builds."""
    from .host import io_specs, run_host_tflm

    try:
        zeros = [np.zeros(shape, dtype) for shape, dtype in io_specs(micro.graph, "inputs")]
        return run_host_tflm(micro.graph, micro.image, [zeros]).arena_total
    except NativeToolError as exc:
        try:
            from ..model import Model
            from ..runtime.backends import tflm_arena

            plain = bytes(Model.from_bytes(source).without_external())  # TFLM cannot read Buffer.offset
            predicted = predict_arena(micro, source, stock_tail=tflm_arena(plain).tail).total
        except Exception as inner:  # tflite-micro missing or failing: nothing left to estimate with
            raise TflmSwapError(f"cannot measure the arena on the host TFLM ({exc}) nor predict it "
                                f"({inner}); pass --arena-size") from exc
        print(f"note: host TFLM unavailable ({exc}); arena predicted by the planner", file=sys.stderr)
        return predicted + PREDICTION_MARGIN


def _identifier(stem: str) -> str:
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in stem) or "model"
    return name if not name[0].isdigit() else f"m_{name}"


