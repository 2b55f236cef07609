"""A cascade on scikit-learn's digits: a tiny router and slimmed specialists instead of one CNN.

What it shows:

1. `tflm_swap.cascade.build(None, x, y, ...)` trains the default batch-norm CNN (the monolithic
   model), groups the classes, trains a router (at most 10% of the monolithic weights and MACs) and
   one slimmed specialist per group, and bundles them as segmented int8 models in one file;
2. `cascade.report.evaluate` + `format_table`: accuracy and size of the cascade against the
   monolithic model (float and int8) on the test split;
3. `CascadeInterpreter` within a RAM budget of the router plus the largest specialist: which group
   each input went to, what was loaded from flash, and the totals of `stats()`.

Epochs are kept small so that it runs in well under a minute; more epochs (see
benchmarks/cascade_mnist.py: 20 / 20 / 5 + 5 on digits) give the figures in docs/CASCADE.md.

Run:  python examples/cascade_digits.py [--out DIR] [--epochs 8] [--n-groups 2] [--tflm]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import tflm_swap.cascade as cascade  # imports no TensorFlow: building does
from tflm_swap.cascade.report import evaluate, format_table
from tflm_swap.demo import load_digits_images
from tflm_swap.report import format_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: a new temp dir)")
    parser.add_argument("--epochs", type=int, default=8, help="monolithic CNN and router training epochs")
    parser.add_argument("--specialist-epochs", type=int, default=2,
                        help="specialist fine-tuning epochs, before and again after pruning")
    parser.add_argument("--n-groups", type=int, default=None, help="class groups (default: chosen automatically)")
    parser.add_argument("--train-samples", type=int, default=None, help="use only this many training images")
    parser.add_argument("--tflm", action="store_true", help="also run the cascade on TensorFlow Lite Micro")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="tflm_swap_cascade_digits_"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quieter TensorFlow start-up (before it is imported)

    x_train, x_test, y_train, y_test = load_digits_images(seed=0)  # float32 [N, 8, 8, 1], labels 0..9
    x_train, y_train = x_train[: args.train_samples], y_train[: args.train_samples]
    print(f"digits: {len(x_train)} training / {len(x_test)} test images")

    # 1. Build: None trains the default CNN (a trained Keras model, or fn(input_shape, n_classes), also work).
    builder = cascade.build(None, x_train, y_train, n_groups=args.n_groups, epochs=args.epochs,
                            router_epochs=args.epochs, sparsity_epochs=args.specialist_epochs,
                            finetune_epochs=args.specialist_epochs, seed=0, verbose=0)
    bundle_path = out / "digits.cascade"
    builder.bundle_.save(bundle_path)  # one file: manifest + CRC-checked, segmented int8 members
    bundle = builder.bundle_
    print(f"groups: {builder.groups_}; router {format_bytes(bundle.router.weight_bytes)}, specialists "
          f"{', '.join(format_bytes(s.weight_bytes) for s in bundle.specialists)}, monolithic "
          f"{format_bytes(bundle.monolithic.weight_bytes)} of int8 weights -> {bundle_path}")

    # 2. Accuracy and size against the monolithic model (LiteRT; optionally TFLite Micro too).
    results = {"digits (LiteRT)": evaluate(bundle, x_test, y_test, keras_model=builder.model_)}
    if args.tflm:
        results["digits (TFLM)"] = evaluate(bundle, x_test, y_test, keras_model=builder.model_, backend="tflm")
    print("\n" + format_table(results) + "\n")

    # 3. The runtime: only the router and the chosen specialist(s) are held, loaded on demand.
    budget = bundle.router.weight_bytes + max(s.weight_bytes for s in bundle.specialists)
    with cascade.CascadeInterpreter(bundle_path, ram_budget=budget, cache="lru") as ci:
        scores = ci.predict(x_test[:8])  # [8, 10] in the original label space
        for label, s, r in zip(y_test[:8], scores, ci.records):
            print(f"  label {label}: predicted {s.argmax()}, router group {r.group} ({r.confidence:.2f}), "
                  f"specialists run {r.groups_run}, loaded {r.bytes_loaded} B")
        stats = ci.stats()
    print(f"CascadeInterpreter, budget {format_bytes(budget)} (router + largest specialist): "
          f"{stats['bytes_loaded_per_inference']:.0f} B loaded and {stats['weights_used_per_inference']:.0f} B "
          f"of weights used per inference, fallback rate {stats['fallback_rate']:.2f}")

    summary = {name: {k: r.get(k) for k in ("mono_float_top1", "mono_int8_top1", "cascade_top1", "router_top1",
                                           "used_pct", "router_weight_pct", "fallback_rate")}
               for name, r in results.items()}
    (out / "result.json").write_text(json.dumps({"groups": builder.groups_, "results": summary}, indent=2))
    print(f"\nartifacts in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
