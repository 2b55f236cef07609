"""Fully-connected layers split into tiles: run a dense model below the smallest budget of its layers.

What it shows:

1. `tflm_swap.convert(model, tile_bytes=...)` splits each large FULLY_CONNECTED layer into tiles of
   output rows (one operator each, joined by a CONCATENATION), checked bit-identical on this
   machine's LiteRT kernels; `seg.tiled` lists what was split;
2. `min_ram_budget` before and after: with prefetch 1 the runtime needs two of the largest layers
   untiled, two tiles once tiled;
3. `SwapInterpreter` runs the tiled model at the untiled model's minimum budget (some tiles of a
   layer stay resident, the rest stream between them) and at the tiled minimum, against stock
   LiteRT on the original model (same builtin kernels: outputs must be bit-identical).

The model is a float MLP with random weights (Keras, built offline), 1024 -> 4 x width -> 2 x width
-> 2 x width -> 1024 by default (width 1024: 72 MiB of weights, the benchmark's dense model).

Run:  python examples/dense_layers_in_tiles.py [--width 1024] [--tile-kib 4096] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from keras_to_budget import compare_with_stock, print_run, quiet_converter  # this directory: examples/

import tflm_swap
from tflm_swap.report import format_bytes
from tflm_swap.runtime import min_ram_budget


def build_mlp(width: int, seed: int = 0):
    """A float Keras MLP with random weights: 1024 inputs, then 4w, 2w, 2w and 1024 units."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = [keras.layers.Dense(n, activation="relu") for n in (4 * width, 2 * width, 2 * width)]
    return keras.Sequential([keras.Input((1024,)), *layers, keras.layers.Dense(1024)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024, help="layer width unit (default 1024: 72 MiB)")
    parser.add_argument("--tile-kib", type=int, default=4096, help="weights per tile, KiB (default 4096)")
    parser.add_argument("--samples", type=int, default=100,
                        help="random inputs run through both interpreters (the mean per invoke includes the "
                             "first, which reads the resident tiles)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: a new temp dir)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="tflm_swap_dense_tiles_"))
    out.mkdir(parents=True, exist_ok=True)

    # 1. Convert twice: as it is, and with its fully-connected layers in tiles.
    model = build_mlp(args.width)
    with quiet_converter():
        whole = tflm_swap.convert(model, quantization="float32")
    tiled = tflm_swap.convert(whole.original, tile_bytes=args.tile_kib << 10)  # checked bit-identical here
    whole_path, tiled_path = whole.save(out / "mlp.swap.tflite"), tiled.save(out / "mlp_tiled.swap.tflite")
    (out / "mlp.tflite").write_bytes(whole.original)
    print(f"MLP: {format_bytes(whole.manifest.external_bytes)} of float32 weights in {len(tiled.tiled)} layers")
    for layer in tiled.tiled:
        print(f"  operator {layer.op} ({format_bytes(layer.weight_bytes)}): {layer.tiles} tiles")

    # 2. The smallest budgets, with prefetch 1 and builtin kernels (one copy of the weights).
    untiled_min = min_ram_budget(whole_path, 1, default_delegates=False)
    tiled_min = min_ram_budget(tiled_path, 1, default_delegates=False)
    print(f"smallest budget, prefetch 1: {format_bytes(untiled_min)} untiled, {format_bytes(tiled_min)} tiled")

    # 3. Run the tiled model at both budgets against stock LiteRT on the original model.
    x = np.random.default_rng(1).standard_normal((args.samples, 1024)).astype(np.float32)
    runs = {}
    for label, budget in (("untiled minimum", untiled_min), ("tiled minimum", tiled_min)):
        runs[label] = compare_with_stock(whole.original, tiled_path, x, budget)
        print_run(f"\ntiled model at the {label}", runs[label])
    result = {
        "weights_bytes": whole.manifest.external_bytes, "tiled_layers": len(tiled.tiled),
        "untiled_min_budget": untiled_min, "tiled_min_budget": tiled_min,
        "runs": {label: {"ram_budget": run["stats"]["ram_budget"], "bit_identical": run["bit_identical"],
                         "peak_weight_bytes": run["stats"]["peak_weight_bytes"],
                         "latency_ratio": run["swap_ms"] / run["stock_ms"]} for label, run in runs.items()},
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"\nartifacts in {out}")
    return 0 if all(run["bit_identical"] for run in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
