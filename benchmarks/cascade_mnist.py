"""Cascade evaluation on MNIST (../shared/datasets/mnist.npz) and scikit-learn's digits.

MNIST: the file's first 60,000 samples train, the last 10,000 test (the file is shuffled with seed 0,
so this is the standard 60k/10k split *by order*, not the official one). Digits: stratified 75/25
split (seed 0). Everything is seeded. For each dataset: one monolithic model (the default CNN with
batch norm, cosine learning-rate decay, batch-norm statistics refreshed), then a cascade for each of
`--groups`; prints the figures side by side with the issue's targets, writes JSON and the plot of
accuracy against weights and MACs per inference.

Trained models are cached under build/cache/cascade/, keyed by the data, the recipe and the code
that trains them (the monolithic model: cascade/models.py and training.py; a cascade: the
monolithic weights, the cascade's training and bundle modules and the converters), so a rerun with nothing changed
only evaluates.

    python benchmarks/cascade_mnist.py [--mnist ../shared/datasets/mnist.npz] [--out benchmarks/cascade_results]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tflm_swap.cascade.data import load_npz, split_by_order  # noqa: E402
from tflm_swap.cascade.report import evaluate, format_table, plot_tradeoff  # noqa: E402
from tflm_swap.fileio import write_atomic  # noqa: E402

CACHE = ROOT / "build" / "cache" / "cascade"
TRAINING_CODE = [ROOT / "tflm_swap" / "cascade" / f"{name}.py"
                 for name in ("builder", "bundle", "groups", "models", "router", "slimming", "training")]
TRAINING_CODE += sorted((ROOT / "converters").glob("*.py"))
MONOLITHIC_CODE = [ROOT / "tflm_swap" / "cascade" / name for name in ("models.py", "training.py")]
# Epochs of the monolithic model, the router, sparsity fine-tuning and fine-tuning after pruning;
# augmentation shift (pixels); each specialist's size as a share of the monolithic weights, by number of groups.
RECIPES = {
    "mnist": {"epochs": 10, "router_epochs": 8, "sparsity_epochs": 2, "finetune_epochs": 3, "batch_size": 128,
              "shift": 1, "specialist_share": {2: 0.25, 3: 0.2, 4: 0.18}},
    "digits": {"epochs": 20, "router_epochs": 20, "sparsity_epochs": 5, "finetune_epochs": 5, "batch_size": 64,
               "shift": 0, "specialist_share": {2: 0.25, 3: 0.2, 4: 0.18}},
}
COMMON = {"threshold": "auto", "target_share": 0.36, "fallback": "full", "distill": 0.5, "temperature": 2.0,
          "group_method": "confusion"}
TARGETS = {"mono_int8_top1": 0.993, "delta_points": -0.5, "used_pct": 40.0, "macs_pct": 40.0}


def cache_key(code: list[Path], *parts) -> str:
    """SHA-256 over the `code` files and `parts` (arrays by their bytes, the rest as JSON)."""
    h = hashlib.sha256()
    for path in code:
        h.update(path.read_bytes())
    for part in parts:
        h.update(part.tobytes() if hasattr(part, "tobytes") else json.dumps(part, sort_keys=True).encode())
    return h.hexdigest()[:20]


def monolithic(name: str, x_train, y_train, recipe: dict, verbose):
    """The trained monolithic Keras model, from the cache when its inputs did not change."""
    import keras

    from tflm_swap.cascade.models import default_cnn
    from tflm_swap.cascade.training import fit_classifier

    key = cache_key(MONOLITHIC_CODE, x_train, y_train, recipe["epochs"], recipe["batch_size"], recipe["shift"])
    path = CACHE / f"{name}_mono_{key}.keras"
    if path.is_file():
        print(f"== {name}: monolithic model from {path.relative_to(ROOT)}", flush=True)
        return keras.saving.load_model(path), 0.0
    keras.utils.set_random_seed(0)
    started = time.perf_counter()
    model = default_cnn(x_train.shape[1:], int(y_train.max()) + 1)
    print(f"== {name}: training the monolithic model ({recipe['epochs']} epochs, {len(x_train)} samples)", flush=True)
    fit_classifier(model, x_train, y_train, recipe["epochs"], recipe["batch_size"], verbose=verbose,
                   shift=recipe["shift"])
    seconds = time.perf_counter() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.keras")
    model.save(partial)
    os.replace(partial, path)
    return model, seconds


def cascade(name: str, mono, x_train, y_train, n_groups: int, options: dict, verbose):
    """The cascade bundle for `n_groups`, from the cache when its inputs did not change."""
    from tflm_swap.cascade import CascadeBuilder, CascadeBundle

    weights = [w for layer in mono.layers for w in layer.get_weights()]
    key = cache_key(TRAINING_CODE, x_train, y_train, *weights, n_groups, options)
    path = CACHE / f"{name}_{n_groups}_{key}.cascade"
    if path.is_file():
        print(f"== {name}: {n_groups} groups from {path.relative_to(ROOT)}", flush=True)
        return CascadeBundle.load(path), 0.0
    started = time.perf_counter()
    builder = CascadeBuilder(n_groups=n_groups, verbose=verbose, **options).fit(mono, x_train, y_train)
    write_atomic(path, builder.bundle_.to_bytes())
    return builder.bundle_, time.perf_counter() - started


def run_dataset(name: str, x_train, y_train, x_test, y_test, groups: list[int], out: Path, verbose) -> dict:
    """Monolithic model once, then a cascade for each listed number of groups."""
    recipe = RECIPES[name]
    mono, mono_seconds = monolithic(name, x_train, y_train, recipe, verbose)
    results = []
    for n in groups:
        options = {k: v for k, v in recipe.items() if k not in ("epochs", "specialist_share")}
        options.update(COMMON, specialist_share=recipe["specialist_share"][n])
        bundle, build_s = cascade(name, mono, x_train, y_train, n, options, verbose)
        bundle.save(out / f"{name}_{n}.cascade")
        r = evaluate(bundle, x_test, y_test, keras_model=mono)
        r.update({"build_seconds": build_s, "mono_train_seconds": mono_seconds, "options": options,
                  "threshold": bundle.threshold, "threshold_choice": bundle.stats.get("threshold_choice")})
        print(format_table({f"{name} ({n} groups)": r}), flush=True)
        results.append(r)
    best = max(results, key=lambda r: (meets_targets(r), r["cascade_top1"]))
    _save(out, name, best, results)
    return {"best": best, "sweep": results}


def meets_targets(r: dict) -> bool:
    """All of the issue's MNIST targets: monolithic int8 >= 99.3%, cascade within 0.5 pt of it,
    weights and MACs per inference <= 40% of the monolithic model's."""
    return (r["mono_int8_top1"] >= TARGETS["mono_int8_top1"] and r["delta_points"] >= TARGETS["delta_points"]
            and r["used_pct"] <= TARGETS["used_pct"] and r["macs_pct"] <= TARGETS["macs_pct"])


def targets_table(name: str, sweep: list[dict]) -> str:
    """The sweep next to the targets, one row per number of groups."""
    r0 = sweep[0]
    lines = [f"{name}: monolithic float {100 * r0['mono_float_top1']:.2f}% / int8 {100 * r0['mono_int8_top1']:.2f}% "
             f"(target: int8 >= {100 * TARGETS['mono_int8_top1']:.1f}%)",
             "| groups | cascade top-1 | vs monolithic int8 (target >= -0.50) | weights / inference (target <= 40%) "
             "| MACs / inference (target <= 40%) | fallback rate | threshold | all targets |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sweep:
        lines.append(f"| {r['n_groups']} | {100 * r['cascade_top1']:.2f}% | {r['delta_points']:+.2f} pt | "
                     f"{r['used_pct']:.1f}% | {r['macs_pct']:.1f}% | {100 * r['fallback_rate']:.1f}% | "
                     f"{r['threshold']} | {'yes' if meets_targets(r) else 'no'} |")
    return "\n".join(lines)


def _with_saved(results: dict, out: Path) -> dict[str, list[dict]]:
    """Sweeps of this run, plus those of the other datasets saved by an earlier run (for the plot)."""
    sweeps = {}
    for name in RECIPES:
        if name in results:
            sweeps[name] = results[name]["sweep"]
        elif (out / f"{name}.json").is_file():
            sweeps[name] = json.loads((out / f"{name}.json").read_text())["sweep"]
    return sweeps


def _save(out: Path, name: str, best: dict, sweep: list[dict]) -> None:
    text = json.dumps({"best": best, "sweep": sweep, "targets": TARGETS}, indent=1, default=float)
    write_atomic(out / f"{name}.json", text.encode())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mnist", default=str(ROOT.parent / "shared" / "datasets" / "mnist.npz"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "cascade_results"))
    p.add_argument("--groups", default="2,3,4", help="numbers of groups for the sweep (plot)")
    p.add_argument("--datasets", default="digits,mnist")
    p.add_argument("--verbose", type=int, default=2)
    args = p.parse_args(argv)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = [int(g) for g in args.groups.split(",") if g]
    all_results = {}
    for name in args.datasets.split(","):
        if name == "digits":
            from tflm_swap.demo import load_digits_images

            x_train, x_test, y_train, y_test = load_digits_images(0)
        else:
            x, y = load_npz(args.mnist)
            x_train, y_train, x_test, y_test = split_by_order(x, y, 10_000)
        all_results[name] = run_dataset(name, x_train, y_train, x_test, y_test, groups, out, args.verbose)
        plot_tradeoff(_with_saved(all_results, out), out / "cascade_tradeoff.png", targets=TARGETS)
    print("\n" + format_table({f"{name} (best: {r['best']['n_groups']} groups)": r["best"]
                               for name, r in all_results.items()}))
    for name, r in all_results.items():
        print("\n" + targets_table(name, r["sweep"]))
    print(f"\nJSON and plot in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
