"""File sizes: upstream TFLM's compressed layout (TFLM_DECODE) against our segmented TSWC file (issue 18).

    python benchmarks/decode_layout_sizes.py [--shared ../shared] [--out benchmarks/compression_results]
                                             [--bits 4] [--per-tensor]

Per MLPerf Tiny int8 model in ../shared, clustered by `tflm_swap.compress` (default 4-bit per channel):
- plain: the clustered model, a plain .tflite (every runtime's reference);
- upstream: that model compressed by upstream TFLM's own tool (`decode_layout.upstream_compress`:
  tables per channel for filters quantized per channel, one table for those quantized per tensor);
- ours (DECODE): `decode_layout.to_decode_layout` of it, the same layout written by us;
- ours (TSWC): `tflm_swap.convert(..., compress_bits=)`, the segmented file (page-aligned segments,
  4 KiB pages by default) and its weight bytes (the segments, what flash holds and streams);
- upstream converted: `tflm_swap.convert` of the upstream file (its tables and bitstrings kept).
Writes decode_layout.json and decode_layout.md into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tflm_swap import compress, convert  # noqa: E402
from tflm_swap.converters.decode_layout import to_decode_layout, upstream_compress  # noqa: E402
from tflm_swap.fileio import write_atomic  # noqa: E402
from tflm_swap.format.model import Model  # noqa: E402

MODELS = ["ad01_int8", "kws_ref_model", "pretrainedResnet_quant", "vww_96_int8"]


def constant_bytes(data: bytes) -> int:
    """Bytes of the model's constant buffers as stored (encoded indices and tables included)."""
    model = Model.from_bytes(data)
    return sum(len(b) for i, b in enumerate(model.buffers) if i and b) - sum(
        len(model.buffers[m.buffer]) for m in model.fb.metadata or [])


def measure(path: Path, bits: int, per_channel: bool) -> dict:
    plain = compress(path.read_bytes(), bits, per_channel)
    upstream = upstream_compress(plain)
    ours = to_decode_layout(plain)
    segmented = convert(plain, compress_bits=bits, per_channel=per_channel)
    from_upstream = convert(upstream)
    weights = lambda r: sum(s.size for s in r.manifest.segments)  # noqa: E731
    return {
        "plain": len(plain), "plain_weights": constant_bytes(plain),
        "upstream": len(upstream), "upstream_weights": constant_bytes(upstream),
        "ours_decode": len(ours), "ours_decode_weights": constant_bytes(ours),
        "tswc_file": len(segmented.data), "tswc_weights": weights(segmented),
        "tswc_graph": segmented.manifest.graph_size,
        "from_upstream_file": len(from_upstream.data), "from_upstream_weights": weights(from_upstream),
    }


def table(results: dict, setting: str) -> str:
    lines = [f"File bytes (weight bytes), {setting}; produced by benchmarks/decode_layout_sizes.py.", "",
             "| model | plain .tflite | upstream DECODE (tool) | ours DECODE | ours TSWC segmented | "
             "upstream, converted by us |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['plain']:,} ({r['plain_weights']:,}) | {r['upstream']:,} "
                     f"({r['upstream_weights']:,}) | {r['ours_decode']:,} ({r['ours_decode_weights']:,}) | "
                     f"{r['tswc_file']:,} ({r['tswc_weights']:,}) | {r['from_upstream_file']:,} "
                     f"({r['from_upstream_weights']:,}) |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shared", default=str(ROOT.parent / "shared"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "compression_results"))
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--per-tensor", action="store_true")
    args = p.parse_args()
    models = Path(args.shared) / "models" / "mlperf_tiny"
    from tqdm import tqdm

    results = {}
    for name in tqdm([m for m in MODELS if (models / f"{m}.tflite").is_file()], desc="models", file=sys.stderr):
        results[name] = measure(models / f"{name}.tflite", args.bits, not args.per_tensor)
    if not results:
        print(f"no MLPerf Tiny models under {models}", file=sys.stderr)
        return 1
    setting = f"{args.bits}-bit {'per-tensor' if args.per_tensor else 'per-channel'}"
    md = table(results, setting)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "decode_layout.json", json.dumps({"setting": setting, "models": results}, indent=1).encode())
    write_atomic(out / "decode_layout.md", md.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
