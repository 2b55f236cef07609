"""`tflm-swap convert --target tflm`: write a TFLM project (graph C array, image, headers, main.cc)."""

from __future__ import annotations

import argparse
import sys

from ..converters.convert import SegmentedModel
from ..format.flash_image import DEFAULT_ALIGNMENT
from .project import export_project


def add_tflm_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the `tflm` target (added to `convert`)."""
    g = parser.add_argument_group("--target tflm (output: a directory of C/C++ sources + image)")
    g.add_argument("--prefix", default=None, help="C identifier prefix of generated names (default: from model)")
    g.add_argument("--prefetch", action="store_true", help="read each operator's largest weights one op early")
    g.add_argument("--verify-crc", action="store_true", help="check each segment's CRC32 on every load")
    g.add_argument("--alignment", type=int, default=DEFAULT_ALIGNMENT, help="segment alignment in the image")
    g.add_argument("--arena-size", type=int, default=None,
                   help="arena bytes for the generated header (default: measured on the host TFLM)")


def convert_tflm(model: SegmentedModel, model_path: str, args) -> int:
    """Rewrite `model` (converted from `model_path`) for TFLM and write the project to
    `args.output` with `export_project`; prints a summary."""
    project = export_project(model, args.output, prefix=args.prefix or None, prefetch=args.prefetch,
                             verify_crc=args.verify_crc, alignment=args.alignment,
                             arena_size=args.arena_size or None, min_segment_bytes=args.min_segment_bytes,
                             source=model_path)
    if project.arena_note:
        print(f"note: {project.arena_note}; arena predicted by the planner", file=sys.stderr)
    prefix = project.prefix
    print(f"wrote {len(project.files)} files to {args.output}: graph {project.graph_bytes} bytes "
          f"({prefix}_model_data.cc), image {project.image_bytes} bytes ({prefix}_image.bin), "
          f"{project.load_ops} load operators, {project.flash_bytes_per_inference} flash bytes per "
          f"inference, arena {project.arena_size} bytes")
    return 0
