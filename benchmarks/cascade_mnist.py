"""Cascade evaluation on MNIST (../shared/datasets/mnist.npz) and scikit-learn's digits.

MNIST: the file's first 60,000 samples train, the last 10,000 test (the file is shuffled with seed 0,
so this is the standard 60k/10k split *by order*, not the official one). Digits: stratified 75/25
split (seed 0). Everything is seeded. For each dataset: one monolithic model (the default CNN with
batch norm), then a cascade for the automatically chosen number of groups and for each of
`--groups`; prints the table, writes JSON and the accuracy-vs-weights plot.

    python benchmarks/cascade_mnist.py [--mnist ../shared/datasets/mnist.npz] [--out benchmarks/cascade_results]
"""

from __future__ import annotations

import argparse
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

RECIPES = {  # epochs: monolithic, router, sparsity fine-tuning, fine-tuning after pruning
    "mnist": {"epochs": 6, "router_epochs": 8, "sparsity_epochs": 2, "finetune_epochs": 3, "batch_size": 128},
    "digits": {"epochs": 20, "router_epochs": 20, "sparsity_epochs": 5, "finetune_epochs": 5, "batch_size": 64},
}


def run_dataset(name: str, x_train, y_train, x_test, y_test, groups: list[int], out: Path, verbose) -> dict:
    """Monolithic model once, then a cascade for the automatic choice and for each listed number of groups."""
    import keras

    from tflm_swap.cascade import CascadeBuilder
    from tflm_swap.cascade.models import compile_classifier, default_cnn

    recipe = RECIPES[name]
    keras.utils.set_random_seed(0)
    started = time.perf_counter()
    mono = default_cnn(x_train.shape[1:], int(y_train.max()) + 1)
    compile_classifier(mono)
    print(f"== {name}: training the monolithic model ({recipe['epochs']} epochs, {len(x_train)} samples)", flush=True)
    mono.fit(x_train, y_train, epochs=recipe["epochs"], batch_size=recipe["batch_size"], verbose=verbose)
    mono_seconds = time.perf_counter() - started
    options = {k: v for k, v in recipe.items() if k != "epochs"}
    results, auto, pending = [], None, [None] + list(groups)
    while pending:
        n = pending.pop(0)
        t0 = time.perf_counter()
        builder = CascadeBuilder(n_groups=n, verbose=verbose, **options).fit(mono, x_train, y_train)
        build_s = time.perf_counter() - t0
        builder.bundle_.save(out / f"{name}_{'auto' if n is None else n}.cascade")
        r = evaluate(builder.bundle_, x_test, y_test, keras_model=mono)
        r.update({"auto": n is None, "build_seconds": build_s, "mono_train_seconds": mono_seconds,
                  "group_choices": builder.bundle_.stats.get("group_choices")})
        print(format_table({f"{name} ({len(builder.groups_)} groups{', auto' if n is None else ''})": r}), flush=True)
        if n is None:
            auto = r
            pending = [g for g in pending if g != len(builder.groups_)]  # the automatic choice is in the sweep
        results.append(r)
        _save(out, name, auto, results)
    _save(out, name, auto, results)
    return {"auto": auto, "sweep": results}


def _with_saved(results: dict, out: Path) -> dict[str, list[dict]]:
    """Sweeps of this run, plus those of the other datasets saved by an earlier run (for the plot)."""
    sweeps = {}
    for name in RECIPES:
        if name in results:
            sweeps[name] = results[name]["sweep"]
        elif (out / f"{name}.json").is_file():
            sweeps[name] = json.loads((out / f"{name}.json").read_text())["sweep"]
    return sweeps


def _save(out: Path, name: str, auto: dict, sweep: list[dict]) -> None:
    (out / f"{name}.json").write_text(json.dumps({"auto": auto, "sweep": sweep}, indent=1, default=float))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mnist", default=str(ROOT.parent / "shared" / "datasets" / "mnist.npz"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "cascade_results"))
    p.add_argument("--groups", default="2,3,4", help="numbers of groups for the sweep (plot)")
    p.add_argument("--datasets", default="digits,mnist")
    p.add_argument("--verbose", type=int, default=2)
    args = p.parse_args(argv)
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
        plot_tradeoff(_with_saved(all_results, out), out / "cascade_tradeoff.png")
    print("\n" + format_table({name: r["auto"] for name, r in all_results.items()}))
    print(f"\nJSON and plot in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
