"""The main job: train a small CNN on scikit-learn's digits, convert, segment, check and plan it.

Runs offline in about a minute on 2 CPU cores; artifacts go to the output directory.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .convert import convert
from .fileio import write_atomic
from .model import Model
from .planner import min_stage_budget, plan_model
from .report import format_bytes, operator_table, plot_plan, strategy_table, summary
from .runtime.backends import litert_interpreter, run_litert
from .segment import split, verify

DEMO_BUDGET = 80 * 1024


def load_digits_images(seed: int = 0):
    """scikit-learn's digits as (x_train, y_train, x_test, y_test); x is float32 [N, 8, 8, 1] in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
    return train_test_split(x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target)


def build_cnn(input_shape: tuple[int, ...], n_classes: int):
    """A small MCU-style CNN whose weights (~125 KB int8) spread over several layers."""
    import keras

    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(n_classes),
    ])


def predict_tflite(data: bytes, x: np.ndarray) -> np.ndarray:
    """Raw outputs of a single-input model on LiteRT, one sample at a time (quantising if int8)."""
    interpreter = litert_interpreter(data)
    interpreter.allocate_tensors()
    return predict_tflite_with(interpreter, x)


def predict_tflite_with(interpreter, x: np.ndarray) -> np.ndarray:
    """Raw outputs of an allocated single-input interpreter (LiteRT's surface), one sample at a time."""
    d = interpreter.get_input_details()[0]
    xs = _quantize(x, d)
    return np.concatenate([run_litert(interpreter, [xs[i : i + 1]])[0] for i in range(len(xs))])


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]) == np.float32:
        return x.astype(np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def run_demo(out: Path, epochs: int = 8, seed: int = 0) -> dict:
    """Train, convert (float32 and int8), segment, check bit-identity on LiteRT, plan; print a report."""
    import keras

    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    x_train, x_test, y_train, y_test = load_digits_images(seed)
    print(f"[1/6] training a CNN on scikit-learn digits ({len(x_train)} train / {len(x_test)} test)")
    model = build_cnn(x_train.shape[1:], 10)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=2)
    keras_acc = float(np.mean(np.argmax(model.predict(x_test, verbose=0), 1) == y_test))

    results = {}
    for step, (name, kwargs) in enumerate(
        [("float32", {"quantization": "float32"}), ("int8", {"representative_data": x_train})], start=2
    ):
        print(f"[{step}/6] converting to {name} TFLite and segmenting")
        started = time.perf_counter()
        seg = convert(model, **kwargs)
        write_atomic(out / f"digits_{name}.tflite", seg.original)
        write_atomic(out / f"digits_{name}.swap.tflite", seg.data)
        verify(seg.data)
        ref, got = predict_tflite(seg.original, x_test), predict_tflite(seg.data, x_test)
        results[name] = {
            "accuracy": float(np.mean(np.argmax(ref, 1) == y_test)),
            "bit_identical": bool(np.array_equal(ref, got)),
            "segments": len(seg.manifest.segments),
            "seconds": time.perf_counter() - started,
            "data": seg.data,
        }

    print("[4/6] planning memory for the int8 model")
    int8 = results["int8"]["data"]
    plan = plan_model(Model.from_bytes(int8, source=str(out / "digits_int8.swap.tflite")))
    plot = plot_plan(plan, out / "digits_int8.memory.png", DEMO_BUDGET)
    graph, image = split(int8)
    write_atomic(out / "digits_int8.graph.tflite", graph)
    write_atomic(out / "digits_int8.image.bin", image)

    print("[5/6] cross-checking the activation plan with TFLite Micro")
    tflm_line = _tflm_check(Model.from_bytes(int8).without_external(), plan)

    print("[6/6] running the int8 model with SwapInterpreter inside a weights budget")
    swap_line, swap_ok = _swap_check(out / "digits_int8.swap.tflite", results["int8"]["data"], x_test[:50])

    print("\n" + "=" * 78)
    print(f"Keras float accuracy: {keras_acc:.4f}")
    for name, r in results.items():
        print(f"{name:8s} TFLite accuracy {r['accuracy']:.4f}; segmented model bit-identical on "
              f"{len(x_test)} test inputs: {r['bit_identical']} ({r['segments']} segments)")
    print("\n" + summary(plan) + "\n\n" + strategy_table(plan) + "\n\n" + operator_table(plan))
    try:
        fit = plan.fit(DEMO_BUDGET)
        print(f"\nfits a {format_bytes(DEMO_BUDGET)} RAM budget with '{fit.name}' (arena {format_bytes(fit.arena)})")
    except Exception as exc:  # BudgetError: say so, the demo goes on
        print(f"\n{exc}")
    print(tflm_line)
    print(swap_line)
    print(f"\nartifacts in {out}/ (plot: {plot.name}; split: {len(graph)} B graph + {len(image)} B image)")
    if not all(r["bit_identical"] for r in results.values()) or not swap_ok:
        raise RuntimeError("segmented model output differs from the original")
    return {"keras_accuracy": keras_acc, **{k: {kk: vv for kk, vv in v.items() if kk != "data"}
                                           for k, v in results.items()}}


def _swap_check(path: Path, data: bytes, x: np.ndarray) -> tuple[str, bool]:
    """Run the segmented model on SwapInterpreter at its minimum budget (one operator's weights,
    twice for XNNPACK's packed copy; no prefetch) and compare with stock LiteRT on the same inputs."""
    from .runtime.swap import SwapInterpreter

    plan = plan_model(Model.from_bytes(data))
    budget = min_stage_budget(plan, prefetch=0) * 2
    with SwapInterpreter(path, ram_budget=budget, prefetch=0) as swap:
        swap.allocate_tensors()
        got = predict_tflite_with(swap, x)
        stats = swap.stats()
    same = bool(np.array_equal(got, predict_tflite(data, x)))
    return (f"SwapInterpreter, budget {format_bytes(budget)} (weights {format_bytes(plan.external_bytes)}, "
            f"x2 for XNNPACK's packed copy): {len(stats['stages'])} stages streamed, peak weights held "
            f"{format_bytes(stats['peak_weight_bytes'])}, bit-identical on {len(x)} inputs: {same}"), same


def _tflm_check(model_bytes: bytes, plan) -> str:
    try:
        from .runtime.backends import tflm_arena

        arena = tflm_arena(model_bytes)
    except Exception as exc:  # tflite-micro not installed or failed: report, do not hide
        return f"TFLite Micro cross-check skipped: {exc}"
    return (f"TFLite Micro arena (original model): {arena.head} B non-persistent + {arena.tail} B persistent; "
            f"planner predicts {plan.activation_arena} B non-persistent")
