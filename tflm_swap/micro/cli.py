"""`tflm-swap convert --target tflm`: write a TFLM project (graph C array, image, headers, main.cc)."""

from __future__ import annotations

import argparse
import sys

from ..converters.convert import SegmentedModel
from ..errors import BudgetError, TflmSwapError
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
    g.add_argument("--ram-budget", default=None,
                   help="whole TFLM arena to fit (e.g. 48KiB): picks per operator the weight tiles needed")
    g.add_argument("--offline-plan", action=argparse.BooleanOptionalAction, default=None,
                   help="write the planner's packed arena layout as TFLM's OfflineMemoryAllocation plan "
                        "(default: on with --ram-budget)")
    g.add_argument("--tile", action="append", default=[], metavar="OP=N",
                   help="compute operator OP (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED) in N weight tiles; "
                        "repeatable")


def convert_tflm(model: SegmentedModel, model_path: str, args) -> int:
    """Rewrite `model` (converted from `model_path`) for TFLM and write the project to
    `args.output` with `export_project`; prints a summary."""
    project = export_project(model, args.output, prefix=args.prefix or None, prefetch=args.prefetch,
                             verify_crc=args.verify_crc, alignment=args.alignment,
                             arena_size=args.arena_size or None, min_segment_bytes=args.min_segment_bytes,
                             source=model_path, ram_budget=args.ram_budget, tiles=parse_tiles(args.tile),
                             offline_plan=args.offline_plan)
    if project.arena_note:
        print(f"note: {project.arena_note}; arena predicted by the planner", file=sys.stderr)
    prefix = project.prefix
    print(f"wrote {len(project.files)} files to {args.output}: graph {project.graph_bytes} bytes "
          f"({prefix}_model_data.cc), image {project.image_bytes} bytes ({prefix}_image.bin), "
          f"{project.load_ops} load operators, {len(project.micro.tiled)} tiled operators, "
          f"{project.flash_bytes_per_inference} flash bytes per inference in {project.micro.reads_per_inference} "
          f"reads, arena {project.arena_size} bytes")
    for t in project.micro.tiled:
        print(f"operator {t.source_op} ({t.kind}): {t.tiles} tiles of {t.tile_channels} channels"
              + (", prefetched" if t.prefetch else ""))
    return 0


def parse_tiles(items: list[str]) -> dict[int, int]:
    """`--tile OP=N` arguments as {OP: N}; raises TflmSwapError on a malformed one."""
    tiles = {}
    for item in items or []:
        op, _, count = item.partition("=")
        try:
            tiles[int(op)] = int(count)
        except ValueError:
            raise TflmSwapError(f"--tile {item!r}: expected OP=N, e.g. --tile 9=8") from None
    return tiles


def plan_tflm(model_path: str, args) -> int:
    """`tflm-swap plan M --target tflm --ram-budget B`: the tiles `convert` would pick and the
    predicted arena, without writing anything; 1 when the budget cannot be reached."""
    from ..format.model import Model
    from ..units import parse_size
    from .tiles import choose_tiles, stock_tail

    model = Model.load(model_path)
    budget = parse_size(args.ram_budget)
    if budget <= 0:
        raise TflmSwapError(f"RAM budget {args.ram_budget!r} must be positive")
    try:
        plan = choose_tiles(model, budget, stock_tail(model), prefetch=False,
                            min_segment_bytes=args.min_segment_bytes, offline_plan=True)
    except BudgetError as exc:
        print(f"does not fit: {exc}")
        return 1
    micro = plan.micro
    print(f"fits in {budget} bytes: arena {plan.arena} bytes predicted ({plan.head} planned, exact, + {plan.tail} "
          f"TFLM persistent, upper bound), {micro.flash_bytes_per_inference} flash bytes per inference in "
          f"{micro.reads_per_inference} reads, {len(micro.loads)} load operators, offline arena plan")
    for t in micro.tiled:
        print(f"  operator {t.source_op} ({t.kind}): {t.tiles} tiles of {t.tile_channels} channels")
    if not micro.tiled:
        print("  no operator needs tiles")
    return 0
