"""An existing .tflite in, run within half its weights and within the minimum, against stock LiteRT.

What it shows:

1. `tflm_swap.convert(path)` segments a `.tflite` you already have (TensorFlow is not imported);
2. `tflm_swap.verify(...)` checks page alignment and the CRC32 of every segment, and a flipped bit
   is caught and named;
3. `SwapInterpreter` runs the segmented file at 50% of its weights and at the minimum budget the
   stage planner accepts; latency and outputs are compared with the stock LiteRT interpreter on the
   original file (same builtin kernels, so outputs must be bit-identical), and `stats()` is printed;
4. the same at the minimum budget with XNNPACK (LiteRT's default kernels), stages built once and
   their packed weights paged from files (`xnnpack_cache_dir`), against stock LiteRT with XNNPACK.

Default model: MLPerf Tiny's Visual Wake Words int8 from `../shared/models/mlperf_tiny/` beside the
checkout; without it, the digits CNN of keras_to_budget.py is trained here (needs TensorFlow).

Run:  python examples/run_existing_tflite.py [MODEL.tflite] [--out DIR] [--invokes 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import tflm_swap
from tflm_swap.report import format_bytes
from tflm_swap.runtime import litert_interpreter, min_ram_budget

# ../shared beside the checkout (this file is <checkout>/examples/run_existing_tflite.py)
SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models" / "mlperf_tiny"


def default_model(out: Path, name: str = "vww_96_int8") -> Path | None:
    """`name`.tflite from the shared MLPerf Tiny models; else the int8 digits CNN of keras_to_budget.py,
    trained briefly and written to `out`; None (with a message) when neither is possible."""
    shared = SHARED_MODELS / f"{name}.tflite"
    if shared.is_file():
        return shared
    print(f"{shared} not found (the shared models belong next to the checkout); "
          "falling back to the digits CNN of keras_to_budget.py")
    try:
        from keras_to_budget import quiet_converter, train_digits_cnn  # this directory: examples/

        model, x_train, *_ = train_digits_cnn(epochs=2)
    except ImportError as exc:  # TensorFlow / Keras not installed
        print(f"cannot train the fallback model ({exc}); pass a .tflite path instead")
        return None
    path = out / "digits_int8.tflite"
    with quiet_converter():
        path.write_bytes(tflm_swap.to_tflite(model, representative_data=x_train))
    return path


def show_crc_check(data: bytes) -> str:
    """Flip one bit in a copy of the first segment and return what `verify` says about it."""
    manifest = tflm_swap.read_manifest(data)
    corrupt = bytearray(data)
    corrupt[manifest.image_offset + manifest.segments[0].offset] ^= 0x01
    try:
        tflm_swap.verify(bytes(corrupt))
    except tflm_swap.SegmentIntegrityError as exc:
        return str(exc)
    raise AssertionError("a corrupt segment passed verify")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, help=".tflite file (default: MLPerf Tiny VWW int8)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: a new temp dir)")
    parser.add_argument("--invokes", type=int, default=20, help="random inputs run through both interpreters")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="tflm_swap_run_existing_"))
    out.mkdir(parents=True, exist_ok=True)
    from keras_to_budget import compare_with_stock, print_run  # shared with example 1 (no TensorFlow)

    path = args.model or default_model(out)
    if path is None:
        return 2
    print(f"model: {path}")

    # 1. Segment: weights move to page-aligned, CRC-checked segments after the graph.
    seg = tflm_swap.convert(path)
    swap_path = seg.save(out / f"{path.stem}.swap.tflite")

    # 2. Verify, as a device would before trusting its flash (and see a corruption caught).
    manifest = tflm_swap.verify(swap_path.read_bytes())
    print(f"verify: {len(manifest.segments)} segments, all page-aligned ({manifest.page_size} B) and matching "
          f"their CRC32; {format_bytes(manifest.external_bytes)} of weights -> {swap_path}")
    print(f"verify on a copy with one flipped bit: {show_crc_check(seg.data)}")

    # 3. Run within budgets. Inputs: random images in [0, 1) (quantised for int8 models).
    details = litert_interpreter(seg.original).get_input_details()
    if len(details) != 1:
        print(f"this example feeds single-input models; {path.name} has {len(details)} inputs")
        return 2
    x = np.random.default_rng(0).random((args.invokes, *details[0]["shape"][1:]), dtype=np.float32)
    whole = manifest.external_bytes
    # the least budget SwapInterpreter accepts (builtin kernels: one copy of the weights)
    minimum, with_prefetch = (min_ram_budget(swap_path, p, default_delegates=False) for p in (0, 1))
    print(f"weights {format_bytes(whole)}; minimum budget {format_bytes(minimum)} without prefetch, "
          f"{format_bytes(with_prefetch)} with one stage prefetched\n")
    results = {}
    paged = min_ram_budget(swap_path, 1, xnnpack_cache=True)  # XNNPACK, paged: its packed copy only
    for label, budget, cache in (("50% of the weights", max(whole // 2, minimum), None),
                                 ("minimum budget", minimum, None),
                                 ("XNNPACK, paged stages, minimum budget", paged, out / "xnnpack_stages")):
        # prefetch a stage while the current one runs when the budget has room for the extra slot
        prefetch = 1 if with_prefetch <= budget or cache else 0
        run = compare_with_stock(seg.original, swap_path, x, budget, prefetch, xnnpack_cache_dir=cache)
        print_run(label, run)
        results[label] = {"ram_budget": budget, "prefetch": prefetch, "bit_identical": run["bit_identical"],
                          "latency_ratio": run["swap_ms"] / run["stock_ms"], "xnnpack_paged": cache is not None,
                          "peak_weight_bytes": run["stats"]["peak_weight_bytes"]}
    (out / "result.json").write_text(json.dumps({"model": str(path), "weights_bytes": whole, "runs": results},
                                                indent=2))
    print(f"\nartifacts in {out}")
    return 0 if all(r["bit_identical"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
