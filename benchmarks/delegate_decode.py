"""The LiteRT delegate on compressed filters (upstream TFLM's DECODE layout) vs uncompressed ones.

    python benchmarks/delegate_decode.py [--shared ../shared] [--out benchmarks/delegate_decode_results]
                                         [--bits 4] [--tile-bytes 4096] [--runs 21]

Per MLPerf Tiny int8 model in ../shared: the reference is `tflm_swap.compress(model, bits, per_channel=True)`
(k-means weight sharing); "plain" is that reference segmented, "decode" the same reference written in
upstream TFLM's DECODE layout by upstream's own tool (LUT per channel, tests/upstream_decode.py) and
segmented. For both, with the delegate on LiteRT's reference kernels: weight bytes read per inference
(tile preads from segments + encoded bytes decoded from the mapped graph), the tile buffers, whether
LiteRT left the decoded filters unallocated, median latency, and bit-identity with the reference
kernels on the reference model. Writes delegate_decode.json and delegate_decode.md into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from upstream_decode import decode_ops, upstream_decode_layout  # noqa: E402

from tflm_swap import compress  # noqa: E402
from tflm_swap.converters.compress import filter_channels  # noqa: E402
from tflm_swap.converters.segment import segment_model  # noqa: E402
from tflm_swap.delegate import delegate_library, delegate_options, delegate_stats  # noqa: E402
from tflm_swap.fileio import write_atomic  # noqa: E402
from tflm_swap.format.model import Model  # noqa: E402
from tflm_swap.interpreters import litert_interpreter, random_inputs, run_litert  # noqa: E402

MODELS = ["ad01_int8", "kws_ref_model", "pretrainedResnet_quant", "vww_96_int8"]


def measure(path: Path, reference_out, inputs, tile_bytes: int, runs: int, decoded: list[int]) -> dict:
    """One delegated interpreter on `path`: bytes read per inference, buffers, latency, bit-identity."""
    from ai_edge_litert.interpreter import load_delegate

    delegate = load_delegate(delegate_library(), delegate_options(path, tile_bytes=tile_bytes))
    interpreter = litert_interpreter(model_path=str(path), delegates=[delegate], reference_kernels=True)
    interpreter.allocate_tensors()
    unallocated = 0
    for t in decoded:
        try:
            interpreter.get_tensor(t)
        except ValueError:  # "Tensor data is null": not in LiteRT's arena
            unallocated += 1
    before = delegate_stats(delegate)
    identical = all(a.tobytes() == b.tobytes() for x, ref in zip(inputs, reference_out)
                    for a, b in zip(run_litert(interpreter, x), ref))
    after = delegate_stats(delegate)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - t0)
    n = len(inputs)
    return {
        "claimed_nodes": after.claimed_nodes,
        "segment_bytes_per_inference": (after.bytes_read - before.bytes_read) // n,
        "mapped_bytes_per_inference": (after.mapped_bytes - before.mapped_bytes) // n,
        "tile_buffer_bytes": after.buffer_bytes,
        "decoded_filters": len(decoded),
        "decoded_filters_unallocated": unallocated,
        "median_ms": statistics.median(times) * 1e3,
        "bit_identical": identical,
    }


def run_model(name: str, shared: Path, tmp: Path, bits: int, tile_bytes: int, runs: int) -> dict:
    raw = (shared / "models" / "mlperf_tiny" / f"{name}.tflite").read_bytes()
    reference = compress(raw, bits, per_channel=True)
    ref_path = tmp / f"{name}.ref.tflite"
    ref_path.write_bytes(reference)
    stock = litert_interpreter(model_path=str(ref_path), reference_kernels=True)
    stock.allocate_tensors()
    rng = np.random.default_rng(0)
    inputs = [random_inputs(stock.get_input_details(), rng) for _ in range(3)]
    reference_out = [run_litert(stock, x) for x in inputs]
    plain = tmp / f"{name}.plain.tflite"
    plain.write_bytes(segment_model(Model.from_bytes(reference)))
    layout = upstream_decode_layout(reference, bits, per_channel=True)
    decode = tmp / f"{name}.decode.tflite"
    decode.write_bytes(segment_model(layout, keep_decode=True))
    decoded = [layout.fb.subgraphs[0].operators[op].outputs[0] for op in decode_ops(layout)]
    ref_model = Model.from_bytes(reference)
    return {
        "file_bytes": {"original": len(raw), "plain": plain.stat().st_size, "decode": decode.stat().st_size},
        "filter_bytes": sum(ref_model.buffer_size(b) for b in filter_channels(ref_model)),
        "plain": measure(plain, reference_out, inputs, tile_bytes, runs, []),
        "decode": measure(decode, reference_out, inputs, tile_bytes, runs, decoded),
    }


def table(results: dict, bits: int, tile_bytes: int) -> str:
    lines = [f"{bits}-bit per-channel LUT, {tile_bytes}-byte tiles, LiteRT reference kernels + delegate",
             "", "| model | int8 filter bytes | plain: streamed by the delegate | DECODE layout: encoded bytes "
             "(segments + mapped graph) | filters / encoded | tile buffers plain / decode | decoded filters not in "
             "LiteRT's arena | median ms plain / decode | bit-identical |",
             "|---|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for name, r in results.items():
        p, d = r["plain"], r["decode"]
        plain_read = p["segment_bytes_per_inference"] + p["mapped_bytes_per_inference"]
        decode_read = d["segment_bytes_per_inference"] + d["mapped_bytes_per_inference"]
        lines.append(
            f"| {name} | {r['filter_bytes']:,} | {plain_read:,} | {decode_read:,} "
            f"({d['segment_bytes_per_inference']:,} + {d['mapped_bytes_per_inference']:,}) | "
            f"{r['filter_bytes'] / decode_read:.2f}x | {p['tile_buffer_bytes']:,} / "
            f"{d['tile_buffer_bytes']:,} | {d['decoded_filters_unallocated']}/{d['decoded_filters']} | "
            f"{p['median_ms']:.2f} / {d['median_ms']:.2f} | {p['bit_identical'] and d['bit_identical']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "delegate_decode_results")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--tile-bytes", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="tflm_swap_decode_") as tmp:
        for name in tqdm(MODELS, desc="models", file=sys.stderr):
            results[name] = run_model(name, args.shared, Path(tmp), args.bits, args.tile_bytes, args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(results, args.bits, args.tile_bytes)
    write_atomic(args.out / "delegate_decode.json", json.dumps(results, indent=1).encode())
    write_atomic(args.out / "delegate_decode.md", text.encode())
    print(text)
    ok = all(r[k]["bit_identical"] for r in results.values() for k in ("plain", "decode"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
