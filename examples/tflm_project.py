"""An int8 .tflite in, a TensorFlow Lite Micro project out, with the weights in external flash.

What it shows:

1. `tflm_swap.micro.export_project(model, out_dir, ...)`, what `tflm-swap convert --target tflm`
   does: the graph gets a load operator in front of each conv / depthwise / fully-connected
   operator, the weights move to a flash image, and the C/C++ project is written (graph as a C array
   for internal flash, `<prefix>_image.bin` for external flash, `<prefix>_tswap.h`, `main.cc`,
   `tswap/` library) with the arena size measured on the host TFLM (predicted by the planner when
   that is missing);
2. when the host toolchain is there (gcc/g++, xmos-ai-tools' TFLM library, gemmlowp headers):
   `tflm_swap.micro.run_example(project, x)` compiles the generated `main.cc` with a file-backed
   flash driver and runs it on one random input; its arena use and flash bytes read are printed,
   and its output is compared with the same TFLM running the original model (bit for bit). Without
   the toolchain the build is skipped, saying why.

Default model: MLPerf Tiny's keyword-spotting DS-CNN from `../shared/models/mlperf_tiny/`; without it,
the digits CNN of keras_to_budget.py is trained here (needs TensorFlow).

Run:  python examples/tflm_project.py [MODEL.tflite] [--out DIR] [--prefix net] [--prefetch]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from tflm_swap import Model
from tflm_swap.interpreters import BackendUnavailableError, random_inputs, tflm_arena
from tflm_swap.micro import ExampleRun, TflmProject, export_project, run_example, run_host_tflm
from tflm_swap.micro.host import io_specs
from tflm_swap.micro.toolchain import NativeToolError
from tflm_swap.report import format_bytes


def reference_output(data: bytes, x: np.ndarray) -> np.ndarray:
    """The original model's output for `x` on the same host TFLM library the generated example links
    (`run_host_tflm` without an image): the rewrite must not change a single bit. (The official
    tflite-micro wheel or LiteRT's reference kernels may round some operators a few LSB apart.)"""
    plain = bytes(Model.from_bytes(data).without_external())
    return run_host_tflm(plain, None, [[x]]).outputs[0][0]


def build_and_run(project: TflmProject, x: np.ndarray) -> ExampleRun | None:
    """Compile the generated example and run it on `x`; None (with the reason printed) without a toolchain."""
    try:
        return run_example(project, x)  # gcc + g++ against the host TFLM (cached by content), then run
    except NativeToolError as exc:
        print(f"skipping the build: host toolchain unavailable ({exc})")
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, help="int8 .tflite (default: MLPerf Tiny KWS)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: a new temp dir)")
    parser.add_argument("--prefix", default="net", help="C identifier prefix of the generated names")
    parser.add_argument("--prefetch", action="store_true", help="start each weight read one operator early")
    parser.add_argument("--verify-crc", action="store_true", help="check each segment's CRC32 at every load")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="tflm_swap_tflm_project_"))
    out.mkdir(parents=True, exist_ok=True)
    from run_existing_tflite import default_model  # this directory: examples/

    path = args.model or default_model(out, "kws_ref_model")
    if path is None:
        return 2
    data = path.read_bytes()
    print(f"model: {path}")

    # 1. The project: load operators in the graph, weights in a separate flash image, the arena TFLM
    #    needs (measured on the host TFLM, or predicted), the C/C++ sources.
    project = export_project(path, out / "project", prefix=args.prefix, prefetch=args.prefetch,
                             verify_crc=args.verify_crc)
    prefix, arena = project.prefix, project.arena_size
    print(f"wrote {len(project.files)} files to {project.out_dir}: graph {format_bytes(project.graph_bytes)} "
          f"({prefix}_model_data.cc), image {format_bytes(project.image_bytes)} ({prefix}_image.bin), "
          f"{project.load_ops} load operators")
    if not project.arena_measured:
        print(f"arena predicted by the planner: {project.arena_note}")
    try:  # the original model on the official tflite-micro interpreter, for comparison
        stock_arena = tflm_arena(bytes(Model.from_bytes(data).without_external())).total
        print(f"stock TFLM:     arena {stock_arena:>7} B, model {len(data):>7} B (graph + all weights, internal flash)")
    except BackendUnavailableError as exc:
        stock_arena = None
        print(f"stock TFLM arena not measured: {exc}")
    print(f"with tflm_swap: arena {arena:>7} B, graph {project.graph_bytes:>7} B (internal flash), image "
          f"{project.image_bytes} B (external flash), {project.flash_bytes_per_inference} B read per inference")

    # 2. Build and run the generated main.cc on one random input.
    shape, dtype = io_specs(project.micro.graph, "inputs")[0]
    x = random_inputs([{"shape": shape, "dtype": dtype}], np.random.default_rng(0))[0]
    ran = build_and_run(project, x)
    result: dict = {"model": str(path), "arena_size": arena, "arena_measured": project.arena_measured,
                    "stock_arena": stock_arena, "built": ran is not None,
                    "flash_bytes_per_inference": project.flash_bytes_per_inference}
    ok = True
    if ran is not None:
        same = ran.outputs[0].tobytes() == reference_output(data, x).tobytes()
        print(f"generated example: arena used {ran.arena_used_bytes} B of {arena} B, "
              f"{ran.flash_bytes_read} B read from flash; output bit-identical to the same TFLM running "
              f"the original model: {same}")
        ok = same and ran.arena_used_bytes <= arena and ran.flash_bytes_read == project.flash_bytes_per_inference
        result.update(arena_used_bytes=ran.arena_used_bytes, flash_bytes_read=ran.flash_bytes_read,
                      bit_identical=same)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"\nproject in {project.out_dir} (see its README.md to build it for a device)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
