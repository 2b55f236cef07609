"""The main job: train a small CNN on scikit-learn's digits, convert, segment, check and plan it, run
it within a RAM budget, then build a cascade (router + slimmed specialists) from it and run that on
LiteRT and TFLite Micro.

Runs offline in one to two minutes on 2 CPU cores; artifacts go to the output directory.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .converters.convert import convert
from .fileio import write_atomic
from .format.model import Model
from .format.segments import split, verify
from .interpreters import litert_interpreter, quantize_input, run_litert
from .planner import min_stage_budget, plan_model
from .report import format_bytes, operator_table, plot_plan, strategy_table, summary

DEMO_BUDGET = 48 * 1024


def load_digits_images(seed: int = 0):
    """scikit-learn's digits as (x_train, y_train, x_test, y_test); x is float32 [N, 8, 8, 1] in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
    return train_test_split(x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target)


def build_cnn(input_shape: tuple[int, ...], n_classes: int):
    """The demo's monolithic model: the cascade's default MCU-style CNN with batch norm (~64 KiB int8),
    whose batch-norm scales drive the specialists' channel slimming."""
    from .cascade.models import default_cnn

    return default_cnn(input_shape, n_classes)


def predict_tflite(data: bytes, x: np.ndarray) -> np.ndarray:
    """Raw outputs of a single-input model on LiteRT, one sample at a time (quantising if int8)."""
    interpreter = litert_interpreter(data)
    interpreter.allocate_tensors()
    return predict_tflite_with(interpreter, x)


def predict_tflite_with(interpreter, x: np.ndarray) -> np.ndarray:
    """Raw outputs of an allocated single-input interpreter (LiteRT's surface), one sample at a time."""
    d = interpreter.get_input_details()[0]
    xs = quantize_input(x, d)
    return np.concatenate([run_litert(interpreter, [xs[i : i + 1]])[0] for i in range(len(xs))])


def run_demo(out: Path, epochs: int = 20, seed: int = 0, cascade_epochs: int | None = None) -> dict:
    """Train, convert (float32 and int8), segment, check bit-identity on LiteRT, plan, run within a
    budget, build and run the cascade; print a report. `cascade_epochs` (router epochs; the
    specialists get a quarter of it for each fine-tuning phase) defaults to `epochs`; the defaults
    are the digits recipe of benchmarks/cascade_mnist.py."""
    import keras

    from .cascade.models import compile_classifier

    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    x_train, x_test, y_train, y_test = load_digits_images(seed)
    print(f"[1/8] training a CNN on scikit-learn digits ({len(x_train)} train / {len(x_test)} test)")
    model = build_cnn(x_train.shape[1:], 10)
    compile_classifier(model)
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=2)
    keras_acc = float(np.mean(np.argmax(model.predict(x_test, verbose=0), 1) == y_test))

    results = {}
    for step, (name, kwargs) in enumerate(
        [("float32", {"quantization": "float32"}), ("int8", {"representative_data": x_train})], start=2
    ):
        print(f"[{step}/8] converting to {name} TFLite and segmenting")
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

    print("[4/8] planning memory for the int8 model")
    int8 = results["int8"]["data"]
    plan = plan_model(Model.from_bytes(int8, source=str(out / "digits_int8.swap.tflite")))
    plot = plot_plan(plan, out / "digits_int8.memory.png", DEMO_BUDGET)
    graph, image = split(int8)
    write_atomic(out / "digits_int8.graph.tflite", graph)
    write_atomic(out / "digits_int8.image.bin", image)

    print("[5/8] cross-checking the activation plan with TFLite Micro")
    tflm_line = _tflm_check(Model.from_bytes(int8).without_external(), plan)

    print("[6/8] running the int8 model with SwapInterpreter inside a weights budget")
    swap_line, swap_ok = _swap_check(out / "digits_int8.swap.tflite", results["int8"]["data"], x_test[:50])

    cascade, cascade_lines = _cascade(model, x_train, y_train, x_test, y_test, out,
                                      cascade_epochs or epochs, seed)

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
    print("\n" + cascade_lines)
    print(f"\nartifacts in {out}/ (plot: {plot.name}; split: {len(graph)} B graph + {len(image)} B image; "
          "cascade bundle: digits.cascade)")
    if not all(r["bit_identical"] for r in results.values()) or not swap_ok:
        raise RuntimeError("segmented model output differs from the original")
    return {"keras_accuracy": keras_acc, "cascade": cascade,
            **{k: {kk: vv for kk, vv in v.items() if kk != "data"} for k, v in results.items()}}


def _cascade(model, x_train, y_train, x_test, y_test, out: Path, epochs: int, seed: int) -> tuple[dict, str]:
    """Build the cascade from the trained model, run it on LiteRT (with a budget of the router and one
    specialist) and on TFLite Micro; return the figures and the report text."""
    from .cascade import CascadeBuilder
    from .cascade.report import evaluate, format_table

    print("[7/8] building the cascade: class groups, tiny router, slimmed specialists (int8, segmented)")
    builder = CascadeBuilder(router_epochs=epochs, sparsity_epochs=max(1, epochs // 4),
                             finetune_epochs=max(1, epochs // 4), seed=seed, verbose=2).fit(model, x_train, y_train)
    builder.bundle_.save(out / "digits.cascade")
    print("[8/8] running the cascade on LiteRT (SwapInterpreter, budget: router + largest specialist) and TFLM")
    litert = evaluate(builder.bundle_, x_test, y_test, keras_model=model)
    lines = [f"Cascade: {len(builder.groups_)} groups {builder.groups_} (chosen automatically); fallback "
             f"'{builder.fallback}' below router confidence {builder.threshold}",
             format_table({"digits (LiteRT)": litert})]
    try:
        micro = evaluate(builder.bundle_, x_test, y_test, backend="tflm")
        litert["tflm_cascade_top1"] = micro["cascade_top1"]
        lines.append(f"cascade top-1 on TFLite Micro: {micro['cascade_top1']:.4f} "
                     f"(LiteRT: {litert['cascade_top1']:.4f})")
    except Exception as exc:  # tflite-micro not installed: report, do not hide
        lines.append(f"TFLite Micro cascade run skipped: {exc}")
    return litert, "\n".join(lines)


def _swap_check(path: Path, data: bytes, x: np.ndarray) -> tuple[str, bool]:
    """Run the segmented model on SwapInterpreter at its minimum budget (one operator's weights,
    twice for XNNPACK's packed copy; no prefetch) and compare with stock LiteRT on the same inputs."""
    from .runtime.interpreter import SwapInterpreter

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
        from .interpreters import tflm_arena

        arena = tflm_arena(model_bytes)
    except Exception as exc:  # tflite-micro not installed or failed: report, do not hide
        return f"TFLite Micro cross-check skipped: {exc}"
    return (f"TFLite Micro arena (original model): {arena.head} B non-persistent + {arena.tail} B persistent; "
            f"planner predicts {plan.activation_arena} B non-persistent")
