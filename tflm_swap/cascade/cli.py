"""`tflm-swap cascade build|eval|run|export`: the cascade subcommands (registered by tflm_swap.cli)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..errors import TflmSwapError
from ..fileio import plan_outputs, write_atomic
from ..units import at_least, format_bytes, parse_size, probability


def register(sub) -> None:
    """Add the `cascade` command and its `build`, `eval`, `run` and `export` subcommands to `sub`."""
    c = sub.add_parser("cascade", help="router + slimmed specialist cascades: build, eval, run, export")
    csub = c.add_subparsers(dest="cascade_command", required=True)

    b = csub.add_parser("build", help="train a cascade from labelled images and write the bundle")
    b.add_argument("--data", required=True, help=".npz with images 'x' [N,H,W(,C)] and labels 'y'")
    b.add_argument("--model", help="trained Keras model (.keras/.h5) to start from (default: train the default CNN)")
    b.add_argument("-o", "--output", required=True, help="bundle file to write (e.g. model.cascade)")
    b.add_argument("--n-test", type=at_least(0), default=0, help="hold out the last N samples and print the evaluation")
    b.add_argument("--n-groups", type=at_least(2), help="number of class groups (default: chosen automatically)")
    b.add_argument("--group-method", choices=("activations", "confusion"), default="activations")
    b.add_argument("--epochs", type=at_least(1), default=10, help="monolithic model epochs (when training it)")
    b.add_argument("--router-epochs", type=at_least(1), default=10)
    b.add_argument("--sparsity-epochs", type=at_least(0), default=3)
    b.add_argument("--finetune-epochs", type=at_least(0), default=3)
    b.add_argument("--batch-size", type=at_least(1), default=64)
    b.add_argument("--fallback", choices=("top2", "full", "none"), default="top2")
    b.add_argument("--threshold", type=_threshold, default=0.9,
                   help="router confidence below which to fall back, or 'auto' (most fallbacks --target-share allows)")
    b.add_argument("--target-share", type=probability, default=0.4,
                   help="with --threshold auto: weights per inference, share of the monolithic model (default 0.4)")
    b.add_argument("--specialist-share", type=probability,
                   help="each specialist's size, share of the monolithic weights (default: its share of the classes)")
    b.add_argument("--distill", type=probability, default=0.5,
                   help="weight of the monolithic model's probabilities in the router's and specialists' targets")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=cmd_build)

    e = csub.add_parser("eval", help="accuracy and costs of bundles on labelled images (table, JSON, plot)")
    e.add_argument("bundle", nargs="+", help="one or more bundles (e.g. built with different --n-groups)")
    e.add_argument("--data", required=True, help=".npz with 'x' and 'y'")
    e.add_argument("--last", type=at_least(0), default=0, help="use only the last N samples (e.g. the held-out ones)")
    _runtime_options(e)
    e.add_argument("--json", help="also write the figures as JSON here")
    e.add_argument("--plot", help="also plot accuracy against weights used per inference (PNG) here")
    e.set_defaults(func=cmd_eval)

    r = csub.add_parser("run", help="run a bundle on inputs within a RAM budget; per-inference bytes loaded")
    r.add_argument("bundle")
    r.add_argument("--data", required=True, help=".npz with 'x' (labels 'y' optional) or an .npy of images")
    r.add_argument("--limit", type=at_least(1), default=20, help="inputs to run (default 20)")
    _runtime_options(r)
    r.add_argument("--prefetch", action="store_true", help="prefetch the most likely next specialist")
    r.set_defaults(func=cmd_run)

    x = csub.add_parser("export", help="write the cascade as one TFLite Micro project (one image, one arena)")
    x.add_argument("bundle")
    x.add_argument("--target", choices=("tflm",), required=True, help="tflm: a TFLite Micro C/C++ project")
    x.add_argument("-o", "--output", required=True, help="project directory to write")
    x.add_argument("--prefix", default="cascade", help="C identifier prefix of the generated names")
    x.add_argument("--monolithic", action=argparse.BooleanOptionalAction, default=None,
                   help="include the monolithic model (default: only with fallback policy 'full')")
    x.add_argument("--prefetch", action="store_true", help="asynchronous weight reads one operator early")
    x.add_argument("--verify-crc", action="store_true", help="check each segment's CRC32 at every load")
    x.add_argument("--cache", default="0", help="RAM cache for recently run specialists' weights, e.g. 32KiB "
                   "(default 0: none)")
    x.set_defaults(func=cmd_export)


def _threshold(text: str) -> float | str:
    """An argparse type: a probability or 'auto'."""
    return "auto" if text == "auto" else probability(text)


def _runtime_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("litert", "tflm"), default="litert")
    p.add_argument("--ram-budget", help="weight bytes held at once, e.g. 64KiB (default: router + largest model)")
    p.add_argument("--cache", choices=("lru", "lfu"), default="lru")


def check_data(bundle, x: np.ndarray, y: np.ndarray | None, path: str) -> None:
    """Raise TflmSwapError naming `path` unless its images fit the bundle's input and its labels
    are among the bundle's classes."""
    if list(x.shape[1:]) != list(bundle.input_shape):
        raise TflmSwapError(f"{path}: images of shape {list(x.shape[1:])}, but {bundle.source} takes "
                            f"{bundle.input_shape}")
    if y is not None and len(y) and int(y.max()) >= bundle.n_classes:
        raise TflmSwapError(f"{path}: label {int(y.max())} is out of range for {bundle.source} "
                            f"({bundle.n_classes} classes)")


def _budget(args, bundle) -> int:
    if args.ram_budget:
        return parse_size(args.ram_budget)
    from .report import tight_budget

    return tight_budget(bundle)


def cmd_build(args) -> int:
    """Train and bundle; with --n-test, evaluate on the held-out tail."""
    from .builder import CascadeBuilder
    from .data import load_npz, split_by_order
    from .report import evaluate, format_table

    plan_outputs([args.output], [args.data, args.model])  # before hours of training
    x, y = load_npz(args.data)
    x_test = y_test = None
    if args.n_test:
        x, y, x_test, y_test = split_by_order(x, y, args.n_test)
    model = None
    if args.model:
        import keras

        model = keras.models.load_model(args.model)
    builder = CascadeBuilder(
        n_groups=args.n_groups, group_method=args.group_method, epochs=args.epochs,
        router_epochs=args.router_epochs, sparsity_epochs=args.sparsity_epochs,
        finetune_epochs=args.finetune_epochs, batch_size=args.batch_size, fallback=args.fallback,
        threshold=args.threshold, target_share=args.target_share, specialist_share=args.specialist_share,
        distill=args.distill, seed=args.seed, verbose=0 if args.quiet else 2,
    ).fit(model, x, y)
    path = builder.bundle_.save(args.output)
    print(f"wrote {path}: {len(builder.groups_)} groups {builder.groups_}, "
          f"{format_bytes(path.stat().st_size)}")
    if x_test is not None:
        print(format_table({"held-out": evaluate(builder.bundle_, x_test, y_test, keras_model=builder.model_)}))
    return 0


def cmd_eval(args) -> int:
    """Print the evaluation table of each bundle; optionally JSON and the accuracy/weights plot."""
    from .bundle import CascadeBundle
    from .data import load_npz
    from .report import evaluate, format_table, plot_tradeoff

    plan_outputs([args.json, args.plot], [*args.bundle, args.data])
    x, y = load_npz(args.data)
    if args.last:
        x, y = x[-args.last :], y[-args.last :]
    results = {}
    for path in args.bundle:
        bundle = CascadeBundle.load(path)
        check_data(bundle, x, y, args.data)
        results[Path(path).name] = evaluate(bundle, x, y, backend=args.backend, ram_budget=_budget(args, bundle),
                                            cache=args.cache)
    print(format_table(results))
    if args.json:
        figures = next(iter(results.values())) if len(results) == 1 else results
        write_atomic(args.json, json.dumps(figures, indent=1, default=float).encode(), (*args.bundle, args.data))
    if args.plot:
        plot = plot_tradeoff({Path(args.data).stem: list(results.values())}, args.plot, (*args.bundle, args.data))
        print(f"plot: {plot}")
    return 0


def cmd_run(args) -> int:
    """Run inputs one by one and print what each inference loaded."""
    from .bundle import CascadeBundle
    from .data import load_images
    from .interpreter import CascadeInterpreter

    bundle = CascadeBundle.load(args.bundle)
    x, y = load_images(args.data)
    x, y = x[: args.limit], None if y is None else y[: args.limit]
    if len(x) == 0:
        raise TflmSwapError(f"{args.data}: no inputs to run")
    check_data(bundle, x, y, args.data)
    with CascadeInterpreter(bundle, ram_budget=_budget(args, bundle), cache=args.cache, prefetch=args.prefetch,
                            backend=args.backend) as ci:
        scores = ci.predict(x)
        stats = ci.stats()
        for i, rec in enumerate(ci.records):
            label = "" if y is None else f" label {int(y[i])}"
            print(f"#{i:3d}: class {int(np.argmax(scores[i]))}{label}; router group {rec.group} "
                  f"(p={rec.confidence:.3f}) ran {rec.groups_run or 'monolithic'}; loaded {rec.bytes_loaded} B, "
                  f"weights used {rec.weights_used} B")
    print(json.dumps(stats, indent=1, default=float))
    return 0


def cmd_export(args) -> int:
    """Write the cascade's TFLM project and print its figures."""
    from .tflm_project import export_project

    project = export_project(args.bundle, args.output, prefix=args.prefix, monolithic=args.monolithic,
                             prefetch=args.prefetch, verify_crc=args.verify_crc, cache_size=parse_size(args.cache))
    print(f"wrote {project.out_dir}: {len(project.members)} members in {format_bytes(len(project.image))} of "
          f"flash image, arena {project.arena_size} bytes ({project.prefix.upper()}_ARENA_SIZE)")
    for m in project.members:
        how = "measured" if m.arena_measured else "predicted"
        print(f"  {m.name:<14} graph {len(m.micro.graph):>7} B  arena {m.arena_size:>7} B ({how})  "
              f"flash {m.flash_bytes_per_inference:>7} B per run")
    return 0
