"""Command line: `tflm-swap` / `python -m tflm_swap`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import BudgetError, TflmSwapError, UnsupportedModelError
from .fileio import plan_outputs, write_atomic, write_files
from .format.segments import DEFAULT_MIN_SEGMENT_BYTES, DEFAULT_PAGE_SIZE
from .units import at_least

DEFAULT_BANDWIDTH = "40MB/s"  # a typical QSPI NOR read rate; pass your part's figure
EXIT_OK, EXIT_CHECK_FAILED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
EPILOG = """exit status:
  0    success
  1    a check failed: verify found a damaged or foreign model, plan found no fit,
       run's outputs differ from stock LiteRT
  2    error: bad arguments, a missing, unreadable or malformed input, an output refused
       (the same file as an input or another output) or not writable; one line on stderr,
       `tflm-swap: error: FILE: problem`, and nothing written
  130  interrupted (Ctrl-C), 143 terminated (SIGTERM); no partial output left behind"""


class UsageError(Exception):
    """Bad command-line arguments (argparse's complaint, reported in one line)."""


class Terminated(BaseException):
    """SIGTERM arrived: unwind like an interrupt, so that partial outputs are removed."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are raised (and reported by `main`) instead of exiting."""

    def error(self, message: str):
        command = self.prog.split(" ", 1)[1] if " " in self.prog else self.prog
        raise UsageError(f"{command}: {message} (see {self.prog} --help)")


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status (see EPILOG). A user error is one line on stderr."""
    try:
        with _terminate_as_exception():
            args = _parser().parse_args(argv)
            return args.func(args)
    except Terminated:
        print("tflm-swap: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except (UsageError, TflmSwapError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(os_message(exc))
    except MemoryError:
        return _fail("out of memory (an input declares more data than this machine holds)")
    except KeyboardInterrupt:
        print("tflm-swap: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


@contextmanager
def _terminate_as_exception() -> Iterator[None]:
    """While a command runs (in the main thread), SIGTERM raises Terminated instead of killing the
    process outright, so the writers' cleanup (temporary files and directories) runs."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def os_message(exc: OSError) -> str:
    """`FILE: problem` for an OSError (e.g. `out/x.tflite: No space left on device`)."""
    problem = exc.strerror or str(exc)
    return f"{exc.filename}: {problem}" if exc.filename is not None else problem


def _fail(message: str, status: int = EXIT_ERROR) -> int:
    print("tflm-swap: error: " + " | ".join(line for line in message.splitlines() if line.strip()), file=sys.stderr)
    return status


@contextmanager
def _about(path: str | Path) -> Iterator[None]:
    """Errors raised inside name `path` (prefixed unless they already do)."""
    try:
        yield
    except TflmSwapError as exc:
        if str(path) in str(exc):
            raise
        raise type(exc)(f"{path}: {exc}") from exc


def _read(path: str | Path) -> bytes:
    """An input file's bytes (OSError, e.g. a directory or an unreadable file, reported by `main`)."""
    return Path(path).read_bytes()


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tflm-swap", description=__doc__.split("\n")[0] if __doc__ else None, epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert (Keras/SavedModel) and segment a model")
    c.add_argument("model", help=".tflite file, .keras/.h5 file, or SavedModel directory")
    c.add_argument("-o", "--output", required=True, help="segmented .tflite to write (--target tflm: a directory)")
    c.add_argument("--target", choices=("litert", "tflm"), default="litert",
                   help="litert: one segmented .tflite; tflm: TFLite Micro project with load operators")
    c.add_argument("--page-size", type=at_least(1), default=DEFAULT_PAGE_SIZE, help="flash page size (bytes)")
    c.add_argument("--min-segment-bytes", type=at_least(1), default=DEFAULT_MIN_SEGMENT_BYTES,
                   help="buffers smaller than this stay inline in the graph")
    c.add_argument("--quantization", choices=("float32", "dynamic", "int8"),
                   help="for Keras/SavedModel input (default: int8 with --representative-data, else float32)")
    c.add_argument("--representative-data", help=".npy file of sample inputs for int8 calibration")
    c.add_argument("--graph", help="also write the split graph flatbuffer here")
    c.add_argument("--image", help="also write the split flash image here")
    c.add_argument("--tile-fc", metavar="SIZE",
                   help="split fully-connected layers into tiles of output rows of at most SIZE of weights "
                        "(e.g. 4MiB), so they stream in smaller pieces; outputs stay bit-identical")
    c.add_argument("--compress", metavar="BITS", type=int, choices=range(1, 8),
                   help="weight sharing: cluster int8 filters to at most 2**BITS values per channel and store "
                        "them palette-encoded (docs/FORMAT.md); outputs are those of the clustered model")
    c.add_argument("--per-tensor", action="store_true", help="with --compress: one set of values per tensor")
    c.add_argument("--layout", choices=("segments", "decode", "decode-segments"), default="segments",
                   help="with --compress (or a model in upstream TFLM's DECODE layout): segments (default: our "
                        "palette-encoded segments), decode (upstream TFLM's TFLM_DECODE layout, one plain .tflite for "
                        "stock TFLM; docs/FORMAT.md) or decode-segments (that layout segmented, for the LiteRT "
                        "delegate; docs/DELEGATE.md)")
    c.add_argument("--calibration", metavar="NPY",
                   help="with --compress: .npy of sample inputs; biases are corrected for the clustering's mean shift")
    from .micro.cli import add_tflm_arguments

    add_tflm_arguments(c)
    c.set_defaults(func=_cmd_convert)
    from .micro.cli import add_mcu_parser

    add_mcu_parser(sub)

    i = sub.add_parser("inspect", help="per-operator memory table, strategies, lower bounds and a plot")
    _plan_options(i)
    i.add_argument("--plot", default=None, help="PNG to write (default: <model>.memory.png here)")
    i.add_argument("--no-plot", action="store_true")
    i.add_argument("--flash-bandwidth", default=DEFAULT_BANDWIDTH, help="e.g. 40MB/s, 20MiB/s")
    i.add_argument("--op-times", help="JSON list of per-operator seconds (default: measured on LiteRT)")
    i.add_argument("--no-latency", action="store_true", help="skip timing operators")
    i.set_defaults(func=_cmd_inspect)

    pl = sub.add_parser("plan", help="does the model fit a RAM budget, and how")
    _plan_options(pl)
    pl.add_argument("--target", choices=("litert", "tflm"), default="litert",
                    help="tflm: the weight tiles `convert --target tflm --ram-budget` would pick")
    pl.set_defaults(func=_cmd_plan)

    m = sub.add_parser("manifest", help="print the manifest of a segmented model as JSON")
    m.add_argument("model")
    m.set_defaults(func=_cmd_manifest)

    v = sub.add_parser("verify", help="check page alignment and CRC32 of every segment")
    v.add_argument("model")
    v.set_defaults(func=_cmd_verify)

    s = sub.add_parser("split", help="split a segmented model into graph flatbuffer + flash image")
    s.add_argument("model")
    s.add_argument("--graph", required=True)
    s.add_argument("--image", required=True)
    s.set_defaults(func=_cmd_split)

    j = sub.add_parser("join", help="reassemble a model from graph + flash image")
    j.add_argument("graph")
    j.add_argument("image")
    j.add_argument("-o", "--output", required=True)
    j.set_defaults(func=_cmd_join)

    r = sub.add_parser("run", help="run a segmented model within a RAM budget; compare with stock LiteRT")
    r.add_argument("model", help="segmented .tflite")
    r.add_argument("--ram-budget", help="bytes of weights held at once (default: whole model)")
    r.add_argument("--prefetch", type=at_least(0), default=1, help="stages prepared ahead (default 1)")
    r.add_argument("--invokes", type=at_least(1), default=20)
    r.add_argument("--backend", default="auto", help="auto, ai_edge_litert, tflite_runtime or tensorflow")
    r.add_argument("--original", metavar="TFLITE",
                   help="compare with stock LiteRT on this model (e.g. the one converted with --tile-fc) "
                        "instead of on the segmented file")
    r.add_argument("--reference-kernels", action="store_true", help="TFLite reference kernels (as TFLM)")
    r.add_argument("--no-xnnpack", action="store_true",
                   help="builtin kernels: no XNNPACK, whose packed copy doubles each stage's weights")
    r.add_argument("--xnnpack-cache", metavar="DIR",
                   help="with XNNPACK: build every stage once, its packed weights in files in DIR, and page "
                        "them in and out (one weight copy against the budget, nothing repacked per invoke)")
    r.add_argument("--stage-files", metavar="DIR",
                   help="run each stage from the files `tflm-swap stages` wrote to DIR (compiled ones once sealed)")
    r.set_defaults(func=_cmd_run)

    st = sub.add_parser("stages", help="export the stage sub-models a budget gives (e.g. for edgetpu_compiler)")
    st.add_argument("model", help="segmented .tflite")
    st.add_argument("--ram-budget", required=True)
    st.add_argument("--prefetch", type=at_least(0), default=1)
    st.add_argument("--out", required=True, help="directory for stage_NN.tflite and stages.json")
    st.set_defaults(func=_cmd_stages)

    se = sub.add_parser("seal-stages", help="record size and CRC32 of the compiled stage_NN_edgetpu.tflite files")
    se.add_argument("directory", help="the --out directory of `tflm-swap stages`")
    se.set_defaults(func=_cmd_seal_stages)

    dl = sub.add_parser("delegate", help="build the tile table of the LiteRT weight-streaming delegate; print its "
                        "library path and load_delegate options as JSON")
    dl.add_argument("model", help="segmented .tflite")
    dl.add_argument("--tile-bytes", type=at_least(1), default=1 << 20)
    dl.add_argument("--no-prefetch", action="store_true", help="read tiles inline (one tile buffer)")
    dl.add_argument("--ops", default="FULLY_CONNECTED,CONV_2D,DEPTHWISE_CONV_2D")
    dl.add_argument("--min-weight-bytes", type=at_least(0), default=0)
    dl.add_argument("--rounding", default="auto", choices=["auto", "single", "double"])
    dl.add_argument("--table", default=None, help="tile table path (default MODEL.tiles)")
    dl.set_defaults(func=_cmd_delegate)

    from .cascade.cli import register as _register_cascade

    _register_cascade(sub)

    d = sub.add_parser("demo", help="the end-to-end demo on scikit-learn's digits (no data needed)")
    d.add_argument("--out", default="tflm_swap_demo", help="directory for the artifacts")
    d.add_argument("--epochs", type=at_least(1), default=20)
    d.set_defaults(func=_cmd_demo)
    return p


def _plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=".tflite file (segmented or not)")
    p.add_argument("--ram-budget", help="e.g. 256KiB, 1MiB, 300000")
    p.add_argument("--prefetch", default="1,2", help="prefetch depths to plan, comma-separated")
    p.add_argument("--min-segment-bytes", type=at_least(1), default=DEFAULT_MIN_SEGMENT_BYTES,
                   help="for unsegmented models: the segment layout to assume")


def _load_plan(args):
    from .converters.decode_layout import expand
    from .format.model import Model
    from .planner import plan_model

    depths = _depths(args.prefetch)
    model = expand(Model.load(args.model))  # upstream TFLM's DECODE layout: the model it decodes to
    return model, plan_model(model, prefetch_depths=depths, min_segment_bytes=args.min_segment_bytes)


def _depths(text: str) -> list[int]:
    """Prefetch depths from '1,2' (each a whole number >= 0)."""
    parse = at_least(0)
    try:
        return [parse(k.strip()) for k in text.split(",") if k.strip()] or [1]
    except argparse.ArgumentTypeError as exc:
        raise TflmSwapError(f"--prefetch {text!r}: {exc}; give depths such as 1,2") from None


# ------------------------------------------------------------------------------------ commands
def _write_decode_layout(args: argparse.Namespace, result, inputs: list[str]) -> int:
    """`convert --layout decode[-segments]`: upstream TFLM's DECODE layout of the compressed model,
    plain (stock TFLM) or segmented with its TFLM_DECODE operators kept (the LiteRT delegate)."""
    from .converters.decode_layout import to_decode_layout
    from .converters.segment import segment_model
    from .format.model import Model

    if args.compress is None and not any(s.encoded for s in result.manifest.segments):
        raise TflmSwapError(f"--layout {args.layout} needs --compress BITS (or a model compressed by upstream TFLM)")
    data = to_decode_layout(result.original)
    what = "TFLM's DECODE layout"
    if args.layout == "decode-segments":
        data = segment_model(Model.from_bytes(data, source=args.model), args.page_size, args.min_segment_bytes,
                             keep_decode=True)
        what += ", segmented for the LiteRT delegate"
    write_files({args.output: data}, inputs)
    print(f"wrote {args.output}: {len(data)} bytes in {what} ({len(result.original)} plain)")
    return 0


def _cmd_convert(args) -> int:
    from .converters.convert import convert
    from .fileio import read_npy
    from .report import parse_size

    inputs = (args.model, args.representative_data, args.calibration)
    if args.calibration and args.compress is None:
        raise TflmSwapError("--calibration goes with --compress")
    if args.target == "tflm":
        if Path(args.output).exists() and not Path(args.output).is_dir():
            raise TflmSwapError(f"{args.output}: exists and is not a directory; --target tflm writes a directory")
    elif args.graph or args.image:
        if not (args.graph and args.image):
            raise TflmSwapError("--graph and --image go together")
    if args.layout != "segments" and (args.target != "litert" or args.graph or args.tile_fc):
        raise TflmSwapError(f"--layout {args.layout} writes one .tflite; it goes without --target tflm, "
                            "--graph/--image and --tile-fc")
    plan_outputs([args.output, args.graph, args.image] if args.target == "litert" else [], inputs)
    data = read_npy(args.representative_data) if args.representative_data else None
    result = convert(args.model, representative_data=data, quantization=args.quantization,
                     page_size=args.page_size, min_segment_bytes=args.min_segment_bytes,
                     tile_bytes=parse_size(args.tile_fc) if args.tile_fc else None,
                     compress_bits=args.compress, per_channel=not args.per_tensor,
                     data=read_npy(args.calibration) if args.calibration else None)
    for layer in result.tiled:
        print(f"operator {layer.op} ({layer.weights}, {layer.weight_bytes} bytes of weights): "
              f"split into {layer.tiles} fully-connected tiles")
    if args.target == "tflm":
        from .micro.cli import convert_tflm

        return convert_tflm(result, args.model, args)
    if args.layout != "segments":
        return _write_decode_layout(args, result, inputs)
    files = {args.output: result.data}
    if args.graph:
        graph, image = result.split()
        files.update({args.graph: graph, args.image: image})
    write_files(files, inputs)  # all of them, or none
    m = result.manifest
    print(f"wrote {args.output}: graph {m.graph_size} bytes, {len(m.segments)} segments, "
          f"{m.external_bytes} bytes of external weights, image at offset {m.image_offset}")
    if args.graph:
        print(f"wrote {args.graph} ({len(graph)} bytes) and {args.image} ({len(image)} bytes)")
    return 0


def _cmd_inspect(args) -> int:
    from .planner import estimate_latency
    from .report import (
        latency_lines,
        operator_table,
        parse_rate,
        parse_size,
        plot_plan,
        strategy_table,
        summary,
    )

    plot = None if args.no_plot else args.plot or f"{Path(args.model).stem}.memory.png"
    plan_outputs([plot], [args.model, args.op_times])
    model, plan = _load_plan(args)
    budget = parse_size(args.ram_budget) if args.ram_budget else None
    print(summary(plan), "", strategy_table(plan), "", operator_table(plan), sep="\n")
    if not args.no_latency:
        times = _op_times(args, model)
        bandwidth = parse_rate(args.flash_bandwidth)
        estimates = {
            s.name: estimate_latency(plan, times, bandwidth, prefetch=s.prefetch)
            for s in plan.strategies.values() if s.prefetch is not None
        }
        print("", latency_lines(estimates, bandwidth), sep="\n")
    if plot is not None:
        plot_plan(plan, plot, budget, inputs=(args.model, args.op_times))
        print(f"\nplot: {plot}")
    return 0


def _op_times(args, model) -> list[float]:
    if args.op_times:
        try:
            times = [float(t) for t in json.loads(_read(args.op_times))]
        except (ValueError, TypeError, RecursionError) as exc:
            raise TflmSwapError(f"{args.op_times}: not a JSON list of per-operator seconds ({exc})") from exc
        if len(times) != len(model.operators) or not all(0 <= t < float("inf") for t in times):
            raise TflmSwapError(f"{args.op_times}: needs {len(model.operators)} finite non-negative times, "
                                f"has {len(times)}")
        return times
    from .profiling import measure_op_times

    return measure_op_times(model)


def _cmd_plan(args) -> int:
    from .report import format_bytes, parse_size, strategy_table

    if not args.ram_budget:
        raise TflmSwapError("plan needs --ram-budget, e.g. --ram-budget 256KiB")
    if args.target == "tflm":
        from .micro.cli import plan_tflm

        return plan_tflm(args.model, args)
    budget = parse_size(args.ram_budget)
    _, plan = _load_plan(args)
    print(strategy_table(plan), "", sep="\n")
    try:
        best = plan.fit(budget)
    except BudgetError as exc:
        print(f"does not fit: {exc}")
        return 1
    print(f"fits in {format_bytes(budget)} with strategy '{best.name}': arena {format_bytes(best.arena)} "
          f"(lower bound {format_bytes(best.lower_bound)}), {format_bytes(best.flash_bytes_per_inference)} "
          f"read from flash per inference, {format_bytes(budget - best.arena)} to spare")
    return 0


def _cmd_manifest(args) -> int:
    from .format.manifest import read_manifest

    data = _read(args.model)
    with _about(args.model):
        print(json.dumps(read_manifest(data).to_dict(), indent=2))
    return 0


def _cmd_verify(args) -> int:
    import warnings

    from .format.segments import UncheckedGraphWarning, verify

    data = _read(args.model)
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", UncheckedGraphWarning)
        try:
            m = verify(data, source=args.model)
        except TflmSwapError as exc:  # the check failed: status 1, not a usage error
            return _fail(f"{args.model}: {exc}", EXIT_CHECK_FAILED)
    graph = ", graph SHA-256 match" if m.graph_sha256 else ""
    print(f"{args.model}: OK — {len(m.segments)} segments, all page-aligned ({m.page_size} B), CRC32 match{graph}")
    for note in notes:
        print(f"note: {note.message}")
    return 0


def _cmd_split(args) -> int:
    from .format.segments import split

    plan_outputs([args.graph, args.image], [args.model])
    data = _read(args.model)
    with _about(args.model):
        graph, image = split(data)
    write_files({args.graph: graph, args.image: image}, [args.model])
    print(f"wrote {args.graph} ({len(graph)} bytes) and {args.image} ({len(image)} bytes)")
    return 0


def _cmd_join(args) -> int:
    from .format.segments import join

    plan_outputs([args.output], [args.graph, args.image])
    graph, image = _read(args.graph), _read(args.image)
    with _about(f"{args.graph} + {args.image}"):
        data = join(graph, image)
    write_atomic(args.output, data, (args.graph, args.image))
    print(f"wrote {args.output} ({len(data)} bytes)")
    return 0


def _cmd_run(args) -> int:
    import statistics
    import time

    import numpy as np

    from .format.model import Model
    from .interpreters import litert_interpreter, random_inputs, run_litert
    from .report import format_bytes, parse_size
    from .runtime.interpreter import SwapInterpreter

    budget = parse_size(args.ram_budget) if args.ram_budget else None
    options = {"backend": args.backend, "reference_kernels": args.reference_kernels,
               "default_delegates": not args.no_xnnpack}
    from .converters.decode_layout import has_decode

    for path in dict.fromkeys([args.model, args.original or args.model]):
        model = Model.load(path)  # a malformed model (or damaged weights) is reported before LiteRT sees it
        if has_decode(model):
            raise UnsupportedModelError(f"{path}: TFLite Micro's compressed layout (TFLM_DECODE operators), "
                                        "which LiteRT cannot run; `tflm-swap convert` it first")
    stock = litert_interpreter(model_path=args.original or args.model, **options)
    stock.allocate_tensors()
    rng = np.random.default_rng(0)
    times = {"stock": [], "swap": []}
    identical = True
    with SwapInterpreter(args.model, ram_budget=budget, prefetch=args.prefetch, xnnpack_cache_dir=args.xnnpack_cache,
                         stage_files=args.stage_files, **options) as swap:
        swap.allocate_tensors()
        for _ in range(args.invokes):
            xs = random_inputs(stock.get_input_details(), rng)
            started = time.perf_counter()
            want = run_litert(stock, xs)
            times["stock"].append(time.perf_counter() - started)
            started = time.perf_counter()
            got = run_litert(swap, xs)
            times["swap"].append(time.perf_counter() - started)
            identical &= all(a.tobytes() == b.tobytes() for a, b in zip(want, got))
        stats = swap.stats()
    stock_ms, swap_ms = (statistics.median(times[k]) * 1e3 for k in ("stock", "swap"))
    kept = sum(s["resident"] for s in stats["stages"])
    print(f"stages: {len(stats['stages'])} ({kept} resident, {len(stats['stages']) - kept} streamed), prefetch "
          f"{args.prefetch}; peak weights held {format_bytes(stats['peak_weight_bytes'])}"
          + (f" of a {format_bytes(budget)} budget" if budget else ""))
    print(f"flash read: {format_bytes(stats['streamed_bytes_per_invoke'])} per invoke after "
          f"{format_bytes(stats['resident_weight_bytes'])} read once")
    print(f"median latency: stock {stock_ms:.3f} ms, swap {swap_ms:.3f} ms ({swap_ms / stock_ms:.2f}x)")
    for i, s in enumerate(stats["stages"]):
        print(f"  stage {i}: ops {s['ops'][0]}..{s['ops'][1]}, {format_bytes(s['weight_bytes'])}"
              f"{' (resident)' if s['resident'] else ''}, {s['loads']} loads, load {s['load_s'] * 1e3:.2f} ms, "
              f"compute {s['compute_s'] * 1e3:.2f} ms")
    print(f"outputs bit-identical to stock LiteRT{' on ' + args.original if args.original else ''} "
          f"on {args.invokes} random inputs: {identical}")
    return 0 if identical else 1


def _cmd_stages(args) -> int:
    from .converters.decode_layout import expand
    from .format.model import Model
    from .planner import partition_stages, plan_model
    from .report import parse_size
    from .runtime.stage_files import export_stage_dir

    plan_outputs([], [args.model])
    model = expand(Model.load(args.model))
    stages = partition_stages(plan_model(model), parse_size(args.ram_budget), args.prefetch)
    export_stage_dir(model, stages, args.out, (args.model,))
    print(f"wrote {len(stages)} stage models and stages.json to {args.out}/")
    return 0


def _cmd_seal_stages(args) -> int:
    from .runtime.stage_files import seal_stage_dir

    sealed = seal_stage_dir(args.directory)
    print(f"sealed {len(sealed)} compiled stage file(s) in {args.directory}/stages.json: "
          + (", ".join(sealed) or "none found (stage_NN_edgetpu.tflite)"))
    return 0


def _cmd_delegate(args) -> int:
    from .delegate import delegate_library, delegate_options

    options = delegate_options(args.model, tile_bytes=args.tile_bytes, prefetch=not args.no_prefetch,
                               ops=[o for o in args.ops.split(",") if o], min_weight_bytes=args.min_weight_bytes,
                               table_path=args.table, rounding=args.rounding)
    print(json.dumps({"library": delegate_library(), "options": options}, indent=1))
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), epochs=args.epochs)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
