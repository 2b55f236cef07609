"""Keras model in, segmented int8 model out, run inside a RAM budget smaller than its weights.

What it shows, in the order an embedded-ML user does it:

1. build and briefly train a small Keras CNN on scikit-learn's digits (8x8 images, offline);
2. `tflm_swap.convert(model, representative_data=...)`: int8 quantisation + segmentation, saved as
   one `.swap.tflite` file (stock LiteRT runs it as it is);
3. `tflm_swap.plan_model(...)`: the memory plan from the graph alone, and `plan.fit(budget)` for an
   MCU-style RAM budget (weights + activations);
4. `SwapInterpreter` at the smallest weights budget the stage planner accepts (below the whole
   weights, so weights are streamed from the file per stage), checking that its outputs are
   bit-identical to the stock LiteRT interpreter on the original model with the same kernels.

Run:  python examples/keras_to_budget.py [--out DIR] [--epochs 20]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import tflm_swap  # imports no TensorFlow: only converting a Keras model does
from tflm_swap.demo import load_digits_images, predict_tflite_with
from tflm_swap.report import format_bytes, parse_size, strategy_table, summary
from tflm_swap.runtime import SwapInterpreter, litert_interpreter, min_ram_budget


def build_cnn(input_shape: tuple[int, ...], n_classes: int):
    """A small MCU-style CNN: five 3x3 convolutions, global average pooling, a dense head (~32 KB of
    int8 weights in layers of similar size, so that two of them fit where the whole model does not).

    Global average pooling rather than Flatten: with a dynamic batch, Flatten converts to extra
    SHAPE / STRIDED_SLICE / PACK operators computing the new shape at run time."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(n_classes),  # logits
    ])


def train_digits_cnn(epochs: int = 20, seed: int = 0):
    """Train `build_cnn` on scikit-learn's digits (75/25 split, stratified).

    Returns (keras_model, x_train, x_test, y_train, y_test); x is float32 [N, 8, 8, 1] in [0, 1]."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quieter TensorFlow start-up (before it is imported)
    import keras

    keras.utils.set_random_seed(seed)
    x_train, x_test, y_train, y_test = load_digits_images(seed)
    model = build_cnn(x_train.shape[1:], 10)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    return model, x_train, x_test, y_train, y_test


@contextlib.contextmanager
def quiet_converter():
    """Hide the TFLite converter's chatter (it prints the exported signatures and warns about input
    statistics); errors still raise."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def compare_with_stock(original: bytes, swap_path: Path, x: np.ndarray, ram_budget: int | None,
                       prefetch: int = 1, xnnpack_cache_dir: Path | None = None) -> dict:
    """Run `x` (float samples, one invoke each) through the stock LiteRT interpreter on the original
    model and through `SwapInterpreter` on the segmented file; return outputs, timings and stats.

    Both use LiteRT's builtin kernels without XNNPACK (`default_delegates=False`): unpaged, XNNPACK
    would pack a second copy of each stage's weights at every load. With `xnnpack_cache_dir`, both
    use XNNPACK and SwapInterpreter pages its stages' packed weights from files in that directory.
    Compared with the same kernels, the outputs are bit-identical."""
    xnnpack = xnnpack_cache_dir is not None
    stock = litert_interpreter(original, default_delegates=xnnpack)
    stock.allocate_tensors()
    started = time.perf_counter()
    want = predict_tflite_with(stock, x)  # quantises x for int8 inputs, one invoke per sample
    stock_ms = (time.perf_counter() - started) * 1e3 / len(x)

    with SwapInterpreter(swap_path, ram_budget=ram_budget, prefetch=prefetch, default_delegates=xnnpack,
                         xnnpack_cache_dir=xnnpack_cache_dir) as swap:
        swap.allocate_tensors()  # same surface as LiteRT's Interpreter
        started = time.perf_counter()
        got = predict_tflite_with(swap, x)
        swap_ms = (time.perf_counter() - started) * 1e3 / len(x)
        stats = swap.stats()  # bytes read, peak weights held, per-stage loads and times
    return {"outputs": got, "bit_identical": want.tobytes() == got.tobytes(), "stock_ms": stock_ms,
            "swap_ms": swap_ms, "stats": stats}


def print_run(label: str, run: dict) -> None:
    """One line for a SwapInterpreter run against stock, then one line per stage."""
    s = run["stats"]
    kept = sum(st["resident"] for st in s["stages"])
    budget = "whole model" if s["ram_budget"] is None else format_bytes(s["ram_budget"])
    print(f"{label}: budget {budget}, prefetch {s['prefetch']}: {len(s['stages'])} stages ({kept} resident), "
          f"peak weights held {format_bytes(s['peak_weight_bytes'])}, "
          f"{format_bytes(s['streamed_bytes_per_invoke'])} read per invoke")
    print(f"  latency per invoke: stock {run['stock_ms']:.3f} ms, SwapInterpreter {run['swap_ms']:.3f} ms "
          f"({run['swap_ms'] / run['stock_ms']:.2f}x); bit-identical to stock: {run['bit_identical']}")
    for i, st in enumerate(s["stages"]):
        print(f"  stage {i}: ops {st['ops'][0]}..{st['ops'][1]}, {format_bytes(st['weight_bytes'])}"
              f"{' resident' if st['resident'] else ' streamed'}, {st['loads']} loads, "
              f"load {st['load_s'] * 1e3:.2f} ms, compute {st['compute_s'] * 1e3:.2f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: a new temp dir)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    parser.add_argument("--mcu-budgets", default="8KiB,16KiB,40KiB",
                        help="RAM budgets (weights + activations, comma-separated) to try with plan.fit")
    parser.add_argument("--prefetch", type=int, default=1, help="stages SwapInterpreter prepares ahead")
    parser.add_argument("--samples", type=int, default=200, help="test images run through both interpreters")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="tflm_swap_keras_to_budget_"))
    out.mkdir(parents=True, exist_ok=True)

    # 1. Train (20 epochs over 1,347 8x8 images take a few seconds).
    model, x_train, x_test, y_train, y_test = train_digits_cnn(args.epochs)
    keras_acc = float(np.mean(np.argmax(model.predict(x_test, verbose=0), 1) == y_test))
    print(f"Keras float32 CNN: {model.count_params()} parameters, test accuracy {keras_acc:.4f}")

    # 2. Convert: int8 because representative data is given (it calibrates the activation ranges).
    with quiet_converter():
        seg = tflm_swap.convert(model, representative_data=x_train)
    (out / "digits_int8.tflite").write_bytes(seg.original)  # the plain int8 model, for comparison
    swap_path = seg.save(out / "digits_int8.swap.tflite")
    m = seg.manifest
    print(f"segmented: {len(m.segments)} page-aligned segments ({m.page_size} B pages), "
          f"{format_bytes(m.external_bytes)} of weights in flash, graph {format_bytes(m.graph_size)} -> {swap_path}")

    # 3. Plan: per-operator memory from the graph alone, and the fastest strategy for an MCU budget.
    plan = tflm_swap.plan_model(tflm_swap.Model.from_bytes(seg.data, source=str(swap_path)))
    print("\n" + summary(plan) + "\n\n" + strategy_table(plan) + "\n")
    for mcu_budget in (parse_size(b) for b in args.mcu_budgets.split(",")):
        try:
            best = plan.fit(mcu_budget)
            print(f"plan.fit({format_bytes(mcu_budget)}): strategy '{best.name}', arena {format_bytes(best.arena)}, "
                  f"{format_bytes(best.flash_bytes_per_inference)} read from flash per inference")
        except tflm_swap.BudgetError as exc:  # says why, and names the minimum budget
            print(f"plan.fit({format_bytes(mcu_budget)}): {exc}")

    # 4. Run on LiteRT within a weights budget: the smallest the stage planner accepts.
    budget = min_ram_budget(swap_path, args.prefetch, default_delegates=False)  # builtin kernels, below
    print(f"\nSwapInterpreter weights budget: {format_bytes(budget)} (the least it accepts with prefetch "
          f"{args.prefetch}) of {format_bytes(plan.external_bytes)} of weights")
    run = compare_with_stock(seg.original, swap_path, x_test[: args.samples], budget, args.prefetch)
    print_run("SwapInterpreter vs stock LiteRT", run)
    print("  (on a model this small, each stage's load and interpreter set-up outweigh its compute)")
    int8_acc = float(np.mean(np.argmax(run["outputs"], 1) == y_test[: args.samples]))
    print(f"int8 accuracy on {len(run['outputs'])} test images (SwapInterpreter): {int8_acc:.4f}")

    result = {"keras_accuracy": keras_acc, "int8_accuracy": int8_acc, "weights_bytes": plan.external_bytes,
              "ram_budget": budget, "bit_identical": run["bit_identical"],
              "peak_weight_bytes": run["stats"]["peak_weight_bytes"], "stages": len(run["stats"]["stages"])}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"\nartifacts in {out}")
    return 0 if run["bit_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
