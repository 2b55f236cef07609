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
                   help="arena bytes for the generated header (default: measured on the host TFLM, and on "
                        "--arena-board for 32-bit targets)")
    g.add_argument("--arena-board", default="auto",
                   help="measure the header's arena on this emulated board (32-bit, QEMU): 'auto' (default: "
                        "mps2-an386 when its toolchain is installed, else the host figure), a board name, or 'host'")
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
                             offline_plan=args.offline_plan,
                             arena_board=None if args.arena_board == "host" else args.arena_board)
    if project.arena_note:
        print(f"note: {project.arena_note}; arena predicted by the planner", file=sys.stderr)
    if project.board_note:
        print(f"note: arena not measured on a 32-bit board ({project.board_note}); the header carries "
              "the 64-bit host figure, an upper bound on 32-bit targets", file=sys.stderr)
    prefix = project.prefix
    on_board = (f" on a 64-bit host, {project.mcu_arena_size} bytes on 32-bit ({project.arena_board})"
                if project.arena_board else "")
    print(f"wrote {len(project.files)} files to {args.output}: graph {project.graph_bytes} bytes "
          f"({prefix}_model_data.cc), image {project.image_bytes} bytes ({prefix}_image.bin), "
          f"{project.load_ops} load operators, {len(project.micro.tiled)} tiled operators, "
          f"{project.flash_bytes_per_inference} flash bytes per inference in {project.micro.reads_per_inference} "
          f"reads, arena {project.arena_size} bytes{on_board}")
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
    from ..converters.decode_layout import expand
    from ..format.model import Model
    from ..units import parse_size
    from .tiles import choose_tiles, stock_tail

    model = expand(Model.load(model_path))
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


def add_mcu_parser(sub) -> None:
    """`tflm-swap mcu run PROJECT --board BOARD`: a generated project on an emulated Cortex-M."""
    from .mcu import BOARDS, DEFAULT_BOARD, KERNEL_SETS

    m = sub.add_parser("mcu", help="build a generated TFLM project for an emulated Cortex-M and run it under QEMU")
    msub = m.add_subparsers(dest="mcu_command", required=True)
    r = msub.add_parser("run", help="cross-compile PROJECT (from convert --target tflm) with TFLM, run it under "
                                    "QEMU, print its outputs, 32-bit arena, flash bytes and instruction counts")
    r.add_argument("project", help="directory written by `tflm-swap convert MODEL --target tflm -o DIR`")
    r.add_argument("--board", default=DEFAULT_BOARD, choices=sorted(BOARDS), help="emulated board")
    r.add_argument("--kernels", default="reference", choices=KERNEL_SETS,
                   help="TFLM's reference kernels, or its CMSIS-NN kernels (their scratch buffers need more arena "
                        "than the header's: it is measured first unless --arena-size is given)")
    r.add_argument("--inputs", help=".npy of input 0 values, one per inference along the first axis "
                                    "(or a single value); default: one inference on zeros")
    r.add_argument("--arena-size", type=int, default=None, help="override the header's arena (bytes)")
    r.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    r.set_defaults(func=run_mcu)


def run_mcu(args) -> int:
    """Run a generated project on the board and print what it reported."""
    import json

    import numpy as np

    from ..errors import TflmSwapError
    from .host import io_specs
    from .mcu import measure_arena, read_project, run_project

    inputs = None
    if args.inputs:
        try:
            values = np.load(args.inputs, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise TflmSwapError(f"cannot read the inputs {args.inputs}: {exc}") from exc
        shape, _ = io_specs(read_project(args.project).graph, "inputs")[0]
        per = int(np.prod(shape, dtype=np.int64))
        if values.size % per:
            raise TflmSwapError(f"{args.inputs}: {values.size} values is not a whole number of inputs of shape {shape}")
        inputs = list(values.reshape(-1, *shape))
    arena = args.arena_size
    if arena is None and args.kernels != "reference":  # the header is sized for the reference kernels
        arena = measure_arena(args.project, args.board, kernels=args.kernels)
    run = run_project(args.project, inputs, board_name=args.board, arena_size=arena, kernels=args.kernels)
    report = {"board": args.board, "arena_used_bytes": run.arena_used_bytes, "arena_used_rounded": run.smallest_arena,
              "flash_bytes_read": run.flash_bytes_read, "invoke_instructions": run.invoke_instructions,
              "outputs": [[o.tolist() for o in outs] for outs in run.outputs]}
    if args.json:
        print(json.dumps(report))
        return 0
    for n, outs in enumerate(run.outputs):
        for k, o in enumerate(outs):
            print(f"inference {n} output {k}: {' '.join(str(v) for v in o.ravel().tolist())}")
        print(f"inference {n} instructions: {run.invoke_instructions[n]}")
    print(f"arena_used_bytes: {run.arena_used_bytes} (rounded up to 16: {run.smallest_arena})")
    print(f"flash_bytes_read: {run.flash_bytes_read}")
    return 0
