"""Generate the C/C++ sources of a TFLM project from a `MicroModel`.

Files (prefix = a C identifier, e.g. `kws`):
    {prefix}_model_data.h/.cc  the rewritten graph as a 16-byte aligned C array (internal flash)
    {prefix}_image.bin         the flash image (external flash)
    {prefix}_tswap.h           segment table, image size/CRC32, arena size, load-op count
    main.cc                    a minimal example (file-backed flash on a host, your driver on a device)
    tswap/                     the tflm_swap micro library (C99 core, CRC32, TFLM kernels, file driver)
    CMakeLists.txt             static library + example (plain CMake, or an ESP-IDF component)
    idf_component.yml          ESP-IDF component manifest (TFLM from espressif/esp-tflite-micro)
    cmake/arm-none-eabi.cmake  CMake toolchain file for Cortex-M
    README.md                  how to build it
"""

from __future__ import annotations

import re
import shutil
import string
import zlib
from pathlib import Path

from ..converters.tflm import LOAD_OP, LOAD_START_OP, LOAD_WAIT_OP, MicroModel
from ..converters.tflm_tiles import TILED_KERNELS
from ..errors import TflmSwapError, UnsupportedModelError
from ..fileio import refuse_inputs, staged_directory
from ..format.model import Model
from .toolchain import CORE_FILES, HOST_FILES, TFLM_FILES, native_sources

_RESOLVER_NAMES = {
    "CONV_2D": "Conv2D", "DEPTHWISE_CONV_2D": "DepthwiseConv2D", "AVERAGE_POOL_2D": "AveragePool2D",
    "MAX_POOL_2D": "MaxPool2D", "L2_POOL_2D": "L2Pool2D", "PADV2": "PadV2", "RELU6": "Relu6",
    "RELU_N1_TO_1": "ReluN1To1", "BATCH_MATMUL": "BatchMatMul", "TRANSPOSE_CONV": "TransposeConv",
}
# Custom operators of upstream TFLM itself, registered by a MicroMutableOpResolver method: its DECODE
# (compressed tensors, converters/decode_layout.py), built from kernels/decode*.cc (`mcu.KERNEL_COMPANIONS`)
UPSTREAM_CUSTOM_OPS = {"CUSTOM:TFLM_DECODE": "Decode"}
_OUR_OPS = {f"CUSTOM:{k}" for k in (LOAD_OP, LOAD_START_OP, LOAD_WAIT_OP, *TILED_KERNELS.values())}
_OUR_SLOTS = len(_OUR_OPS)  # tswap::AddLoadOps registers them all (tswap::kResolverSlots)
EXAMPLE_DIR = Path("micro") / "example"  # templates of the generated files, under native_sources()
TOOLCHAIN_FILE = "cmake/arm-none-eabi.cmake"  # CMake toolchain file for Cortex-M, copied into projects


def resolver_method(builtin: str) -> str:
    """`MicroMutableOpResolver` method registering a builtin (e.g. FULLY_CONNECTED -> AddFullyConnected)."""
    named = UPSTREAM_CUSTOM_OPS.get(builtin) or _RESOLVER_NAMES.get(builtin)
    return "Add" + (named or "".join(p.capitalize() for p in builtin.split("_")))


def c_array(name: str, data: bytes) -> str:
    """A `const unsigned char` array definition, 16-byte aligned, 16 bytes per line."""
    lines = [",".join(f"0x{b:02x}" for b in data[i : i + 16]) for i in range(0, len(data), 16)]
    body = ",\n  ".join(lines)
    return (f"alignas(16) const unsigned char {name}[] = {{\n  {body}\n}};\n"
            f"const unsigned int {name}_len = {len(data)};\n")


HOST_ARENA_ORIGIN = "measured or predicted on a 64-bit host; a 32-bit MCU needs less persistent space"


def generate_project(micro: MicroModel, out_dir: str | Path, prefix: str, arena_size: int,
                     inputs: tuple[str | Path, ...] = (), mcu_arena: tuple[int, str] | None = None) -> list[Path]:
    """Write the project files into `out_dir` (atomically; never over one of `inputs`: every
    destination is checked before the first file is written). `mcu_arena`: (bytes, where measured)
    of the arena on 32-bit targets; the header then uses `arena_size` only where pointers are 64-bit."""
    check_options(prefix, arena_size)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TflmSwapError(f"output {out} exists and is not a directory; the tflm target writes a directory")
    upper = prefix.upper()
    ops = builtin_ops(_graph(micro))
    files = {
        f"{prefix}_model_data.h": _model_header(prefix),
        f"{prefix}_model_data.cc": (f'#include "{prefix}_model_data.h"\n\n'
                                    + c_array(f"{prefix}_model_data", micro.graph)),
        f"{prefix}_tswap.h": _segments_header(micro, prefix, upper, arena_size, mcu_arena),
        "main.cc": _main(prefix, upper, ops, _graph(micro).resource_variable_count()),
        "CMakeLists.txt": _template("CMakeLists.txt.in", name=prefix),
        "idf_component.yml": _template("idf_component.yml.in", name=prefix),
        "README.md": _readme(prefix),
    }
    root = native_sources()
    library = {out / "tswap" / Path(rel).name: root / rel for rel in CORE_FILES + TFLM_FILES + HOST_FILES}
    library[out / TOOLCHAIN_FILE] = root / EXAMPLE_DIR / TOOLCHAIN_FILE
    contents = {**{n: text.encode() for n, text in files.items()}, f"{prefix}_image.bin": micro.image}
    refuse_inputs([*(out / n for n in contents), *library], inputs)
    with staged_directory(out, inputs) as stage:  # the whole project, or nothing
        for name, data in contents.items():
            (stage / name).write_bytes(data)
        for dest, src in library.items():
            (stage / dest.relative_to(out)).parent.mkdir(exist_ok=True)
            shutil.copyfile(src, stage / dest.relative_to(out))
    return [*(out / n for n in contents), *library]


def check_options(prefix: str, arena_size: int | None = None) -> None:
    """Raise TflmSwapError unless `prefix` is a C identifier and `arena_size` (if given) is positive."""
    if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix):
        raise TflmSwapError(f"prefix {prefix!r} must be a C identifier (letters, digits, underscore)")
    if arena_size is not None and arena_size <= 0:
        raise TflmSwapError(f"arena size {arena_size} must be positive")


def builtin_ops(graph: bytes | Model) -> list[str]:
    """The builtin operators of every subgraph of `graph` (sorted), and upstream TFLM's own custom
    operators (TFLM_DECODE), which a resolver must register next to tflm_swap's own; raises
    UnsupportedModelError for another custom operator."""
    model = graph if isinstance(graph, Model) else Model.from_bytes(graph)
    names = sorted({name for _, name in model.all_operator_names()} - _OUR_OPS)
    custom = [n for n in names if n.startswith("CUSTOM:") and n not in UPSTREAM_CUSTOM_OPS]
    if custom:
        raise UnsupportedModelError(f"the graph uses custom operators {custom}; the generated example "
                                    "cannot register them (add them to main.cc's resolver yourself)")
    return names


def resolver_lines(ops: list[str], fail: str) -> str:
    """C++ lines registering `ops` on `resolver`; `fail` is the statement run on failure, with {op}
    standing for the operator's name."""
    return "\n".join(f"  if (resolver.{resolver_method(o)}() != kTfLiteOk) {fail.format(op=o)}" for o in ops)


def _graph(micro: MicroModel) -> Model:
    """The rewritten graph, parsed (the rewrite's own parse when it kept one)."""
    return micro.graph_model if micro.graph_model is not None else Model.from_bytes(micro.graph)


def _model_header(prefix: str) -> str:
    guard = f"{prefix.upper()}_MODEL_DATA_H_"
    return (f"// Generated by tflm_swap: the TFLM graph (weights are in {prefix}_image.bin).\n"
            f"#ifndef {guard}\n#define {guard}\n\nextern const unsigned char {prefix}_model_data[];\n"
            f"extern const unsigned int {prefix}_model_data_len;\n\n#endif  // {guard}\n")


def _arena_lines(upper: str, arena_size: int, mcu_arena: tuple[int, str] | None) -> str:
    if mcu_arena is None:
        return f"""/* Arena for TFLM (activations + staged weights + TFLM's own data), {HOST_ARENA_ORIGIN}.
 * Define {upper}_ARENA_SIZE yourself to override it. */
#ifndef {upper}_ARENA_SIZE
#define {upper}_ARENA_SIZE {arena_size}u
#endif"""
    size, origin = mcu_arena
    return f"""/* Arena for TFLM (activations + staged weights + TFLM's own data); TFLM's records hold pointers,
 * so 64-bit hosts need more than 32-bit MCUs. Define {upper}_ARENA_SIZE yourself to override it. */
#ifndef {upper}_ARENA_SIZE
#if UINTPTR_MAX > 0xFFFFFFFFu
#define {upper}_ARENA_SIZE {arena_size}u /* 64-bit host: measured or predicted on the host TFLM */
#else
#define {upper}_ARENA_SIZE {size}u /* 32-bit: {origin} */
#endif
#endif"""


def _segments_header(micro: MicroModel, prefix: str, upper: str, arena_size: int,
                     mcu_arena: tuple[int, str] | None) -> str:
    rows = "\n".join(f"    {{{s.offset}u, {s.size}u, 0x{s.crc32:08x}u}},  /* {s.id}: {name} */"
                     for s, name in zip(micro.segments, micro.segment_names))
    n_ops = len(_graph(micro).operators)
    guard = f"{upper}_TSWAP_H_"
    return f"""// Generated by tflm_swap: the flash image {prefix}_image.bin that {prefix}_model_data reads.
#ifndef {guard}
#define {guard}

#include "tswap_micro.h"

#define {upper}_IMAGE_SIZE {len(micro.image)}u
#define {upper}_IMAGE_CRC32 0x{zlib.crc32(micro.image):08x}u /* CRC32 of the whole image file */
#define {upper}_SEGMENT_COUNT {len(micro.segments)}u
#define {upper}_FLASH_BYTES_PER_INFERENCE {micro.flash_bytes_per_inference}u
#define {upper}_LOAD_OPS {len(micro.loads)}u /* of {n_ops} operators in the graph */
#define {upper}_PREFETCH {1 if micro.prefetch else 0}
{_arena_lines(upper, arena_size, mcu_arena)}

/* offset from the image start, size, crc32 */
static const tswap_segment {prefix}_segments[{max(len(micro.segments), 1)}] = {{
{rows or "    {0u, 0u, 0u},"}
}};

#endif  // {guard}
"""


def _template(template: str, **values) -> str:
    """delegates/micro/example/`template` with `values` substituted (string.Template: $$ is a literal $)."""
    return string.Template((native_sources() / EXAMPLE_DIR / template).read_text()).substitute(values)


def _main(prefix: str, upper: str, ops: list[str], variables: int) -> str:
    return _template(
        "main.cc.in",
        name=prefix, upper=upper, op_count=len(ops) + _OUR_SLOTS,
        resolver_lines=resolver_lines(ops, 'return Fail("resolver: {op}", 0);'),
        interpreter_lines=_interpreter_lines(variables))


def _interpreter_lines(variables: int) -> str:
    """main.cc's interpreter: with `variables` resource variables (a stateful model), made on an
    allocator that keeps them in the arena."""
    if variables == 0:
        return "  static tflite::MicroInterpreter interpreter(model, resolver, tensor_arena, sizeof(tensor_arena));"
    return f"""  // The model's state between invocations: {variables} resource variable(s), kept in the arena.
  tflite::MicroAllocator* allocator = tflite::MicroAllocator::Create(tensor_arena, sizeof(tensor_arena));
  if (allocator == nullptr) return Fail("arena too small for the allocator", 0);
  tflite::MicroResourceVariables* variables = tflite::MicroResourceVariables::Create(allocator, {variables});
  if (variables == nullptr) return Fail("arena too small for the resource variables", 0);
  static tflite::MicroInterpreter interpreter(model, resolver, allocator, variables);"""


def _readme(prefix: str) -> str:
    return f"""# {prefix}: TFLite Micro with weights in external flash (generated by tflm_swap)

- `{prefix}_model_data.cc/.h`: the graph (keep it in internal flash).
- `{prefix}_image.bin`: the weights image; write it to external flash (QSPI/SPI NOR, SD card).
- `{prefix}_tswap.h`: its segment table, size, CRC32 and the arena size.
- `tswap/`: the tflm_swap micro library: add `tswap_micro.c`, `tswap_crc32.c`, `tswap_tflm.cc`,
  `tswap_tiled.cc` to your TFLM build (`tswap_file_flash.c` only on hosted builds).
- `main.cc`: the example. On a device build with `-DTSWAP_BOARD_FLASH` and implement
  `int tswap_board_flash_init(tswap_flash*)` (blocking `read`; optional DMA `start`/`poll`).

CMake (a static library `{prefix}_tswap` + `{prefix}_example`; TFLM is a library you built for the target):

```
cmake -S . -B build -DTFLM_LIBRARY=/path/libtensorflow-microlite.a \\
      -DTFLM_INCLUDE_DIRS="/path/tflite-micro;/path/flatbuffers/include;/path/gemmlowp;/path/ruy"
cmake --build build && ./build/{prefix}_example {prefix}_image.bin [input.bin]
```

Cortex-M: add `-DCMAKE_TOOLCHAIN_FILE=cmake/arm-none-eabi.cmake -DTSWAP_BOARD_FLASH=ON` and your board's
`TSWAP_BOARD_SOURCES` / `TSWAP_BOARD_LINK_OPTIONS`. ESP-IDF: put this directory under `components/`
(`idf_component.yml` pulls `espressif/esp-tflite-micro`). Without CMake, against xmos-ai-tools' host TFLM
(namespace `tflite_micro`):

```
gcc -std=c99 -O2 -Itswap -c tswap/tswap_micro.c tswap/tswap_crc32.c tswap/tswap_file_flash.c
g++ -std=c++17 -O2 -Dtflite=tflite_micro -I. -Itswap -I$TFLM_INCLUDE -I/usr/include/gemmlowp \\
    main.cc {prefix}_model_data.cc tswap/tswap_tflm.cc tswap/tswap_tiled.cc *.o $TFLM_LIBRARY -o {prefix}_example
./{prefix}_example {prefix}_image.bin [input.bin]
```
"""
