"""A cascade as one TFLite Micro project: every member rewritten with load operators, one flash image
(a version-3 container naming each member's image), one arena, and the C API of
`delegates/micro/tswap_cascade.h` (`tflm-swap cascade export BUNDLE --target tflm -o DIR`).

Files (prefix = a C identifier, default `cascade`):
    {prefix}_cascade.h/.cc   the members' graphs, segment tables and exp tables, and the config
                             (`{prefix}_config`): groups, class map, fallback policy and threshold
    {prefix}_image.bin       the container: each member's flash image, named (external flash)
    main.cc                  example: classify inputs, print scores and per-inference statistics
    tswap/                   the tflm_swap micro library with tswap_cascade.{h,cc}
    README.md

`run_project` builds `main.cc` on the host TFLM (-Wall -Werror) and runs it on float inputs.
"""

from __future__ import annotations

import os
import re
import shutil
import string
import subprocess
import tempfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..converters.flash_image import build_container
from ..converters.tflm import MicroModel, rewrite_for_tflm
from ..errors import TflmSwapError, UnsupportedModelError
from ..fileio import refuse_inputs, staged_directory
from ..format.flash_image import DEFAULT_ALIGNMENT
from ..format.model import Model, numpy_dtype
from ..format.segments import DEFAULT_MIN_SEGMENT_BYTES
from ..micro.codegen import builtin_ops, c_array, check_options, resolver_lines, resolver_method
from ..micro.project import measured_arena
from ..micro.toolchain import CASCADE_FILES, CORE_FILES, HOST_FILES, TFLM_FILES, build_cascade_example, native_sources
from .bundle import CascadeBundle, MemberInfo
from .interpreter import _as_bundle
from .scores import exp_table

POLICIES = {"top2": "TSWAP_FALLBACK_TOP2", "full": "TSWAP_FALLBACK_FULL", "none": "TSWAP_FALLBACK_NONE"}
MAX_GROUPS = 64  # kTswapCascadeMaxGroups
ALIGN = 16  # arena regions (tswap_cascade.cc kAlign)


@dataclass(frozen=True)
class ProjectMember:
    """One member of a cascade project: its name in the image, group (None: router or monolithic),
    the rewritten graph and image, its own arena (measured on the host TFLM, else predicted) and
    its output width and scale."""

    name: str
    group: int | None
    micro: MicroModel
    arena_size: int
    arena_measured: bool
    outputs: int
    output_scale: float

    @property
    def flash_bytes_per_inference(self) -> int:
        return self.micro.flash_bytes_per_inference


@dataclass(frozen=True)
class CascadeProject:
    """A generated cascade project (see `export_project`)."""

    out_dir: Path
    prefix: str
    files: list[Path]
    members: list[ProjectMember]  # container order, the router first
    image: bytes
    bundle: CascadeBundle
    cache_size: int = 0  # {PREFIX}_CACHE_SIZE: RAM for recently run members' images (hot specialists)

    @property
    def arena_size(self) -> int:
        """The arena of {PREFIX}_ARENA_SIZE: the router's region plus the largest other member's
        (each rounded up to 16 bytes), plus 16 to align its start (tswap_cascade_arena_size)."""
        return ALIGN + _align(self.members[0].arena_size) + max(_align(m.arena_size) for m in self.members[1:])

    @property
    def image_path(self) -> Path:
        return self.out_dir / f"{self.prefix}_image.bin"

    def member(self, name: str) -> ProjectMember:
        return next(m for m in self.members if m.name == name)


def export_project(bundle: CascadeBundle | str | os.PathLike[str] | bytes, out_dir: str | os.PathLike[str], *,
                   prefix: str = "cascade", monolithic: bool | None = None, prefetch: bool = False,
                   verify_crc: bool = False, alignment: int = DEFAULT_ALIGNMENT,
                   min_segment_bytes: int = DEFAULT_MIN_SEGMENT_BYTES, cache_size: int = 0,
                   progress: bool = True) -> CascadeProject:
    """Write a TFLite Micro project running the cascade `bundle` (a `CascadeBundle`, or a bundle
    file's path or bytes) into `out_dir`.

    Every member (the router, each specialist, and the monolithic model when `monolithic` is True,
    or by default when the bundle's fallback policy is 'full') is rewritten for TFLM with load
    operators (`prefetch`, `verify_crc`, `alignment`, `min_segment_bytes` as in
    `tflm_swap.micro.export_project`) and its arena measured on the host TFLM (predicted without
    it). `cache_size` (bytes, default 0: none) gives the example a RAM cache of recently run members'
    images (`tswap_cascade_use_cache`: a specialist that ran before and still fits is not read from
    flash again). `progress`: a progress bar over the members on stderr. Raises `TflmSwapError` (or a
    subclass) for a bundle the C API cannot run (more than 64 groups, a member without int8 output,
    policy 'full' without the monolithic model)."""
    bundle = _as_bundle(bundle)
    check_options(prefix)
    if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
        raise TflmSwapError(f"cache size {cache_size!r} must be a number of bytes >= 0")
    policy = bundle.fallback["policy"]
    with_mono = policy == "full" if monolithic is None else monolithic
    if policy == "full" and not with_mono:
        raise TflmSwapError(f"{bundle.source}: fallback policy 'full' runs the monolithic model; it cannot be left out")
    if with_mono and bundle.monolithic is None:
        raise TflmSwapError(f"{bundle.source}: the bundle has no monolithic model to include")
    if len(bundle.groups) > MAX_GROUPS:
        raise UnsupportedModelError(f"{bundle.source}: {len(bundle.groups)} groups; the C API runs up to {MAX_GROUPS}")
    chosen: list[tuple[str, int | None, MemberInfo]] = [("router", None, bundle.router)]
    chosen += [(f"specialist_{g}", g, s) for g, s in enumerate(bundle.specialists) if s.member is not None]
    if with_mono:
        chosen.append(("monolithic", None, bundle.monolithic))
    options = dict(min_segment_bytes=min_segment_bytes, prefetch=prefetch, verify_crc=verify_crc, alignment=alignment)
    members = [_member(bundle, name, group, info, options)
               for name, group, info in tqdm(chosen, desc="cascade members", unit="model", disable=not progress)]
    image, _ = build_container([(m.name, m.micro.image, m.micro.graph) for m in members], alignment)
    project = CascadeProject(Path(out_dir), prefix, [], members, image, bundle, cache_size)
    return replace(project, files=_write(project))


def _member(bundle: CascadeBundle, name: str, group: int | None, info: MemberInfo, options: dict) -> ProjectMember:
    model = Model.from_bytes(bundle.member_bytes(info), source=f"{bundle.source}:{info.member}")
    out = model.tensors[model.outputs[0]]
    scales = out.quantization.scale if out.quantization is not None else None
    if numpy_dtype(out.type) != np.int8 or scales is None or len(scales) != 1:
        raise UnsupportedModelError(f"{model.source}: output 0 is not int8 with one scale; the cascade's C API "
                                    "computes probabilities from int8 logits")
    micro = rewrite_for_tflm(model, **options)
    arena = measured_arena(micro, model)
    return ProjectMember(name, group, micro, arena.size, arena.measured, int(np.prod(out.shape)), float(scales[0]))


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _write(project: CascadeProject) -> list[Path]:
    out, prefix = project.out_dir, project.prefix
    if out.exists() and not out.is_dir():
        raise TflmSwapError(f"output {out} exists and is not a directory; the tflm target writes a directory")
    ops = sorted({op for m in project.members for op in builtin_ops(m.micro.graph_model or m.micro.graph)})
    contents = {
        f"{prefix}_cascade.h": _header(project).encode(),
        f"{prefix}_cascade.cc": _source(project).encode(),
        "main.cc": _main(project, ops).encode(),
        "README.md": _readme(prefix).encode(),
        f"{prefix}_image.bin": project.image,
    }
    root = native_sources()
    library = {out / "tswap" / Path(rel).name: root / rel
               for rel in CORE_FILES + TFLM_FILES + HOST_FILES + CASCADE_FILES}
    inputs = (project.bundle.source,) if Path(project.bundle.source).is_file() else ()
    refuse_inputs([*(out / n for n in contents), *library], inputs)
    with staged_directory(out, inputs) as stage:
        for name, data in contents.items():
            (stage / name).write_bytes(data)
        (stage / "tswap").mkdir()
        for dest, src in library.items():
            shutil.copyfile(src, stage / dest.relative_to(out))
    return [*(out / n for n in contents), *library]


def _header(project: CascadeProject) -> str:
    p, upper, b = project.prefix, project.prefix.upper(), project.bundle
    table = project.members[0].micro.segments, max(len(m.micro.segments) for m in project.members[1:])
    flash = "\n".join(f"#define {upper}_FLASH_BYTES_{m.name.upper()} {m.flash_bytes_per_inference}u"
                      for m in project.members)
    what = f"{Path(b.source).name} ({len(b.groups)} groups, {b.n_classes} classes)"
    return f"""// Generated by tflm_swap: the cascade of {what}.
#ifndef {upper}_CASCADE_H_
#define {upper}_CASCADE_H_

#include "tswap_cascade.h"

#define {upper}_N_CLASSES {b.n_classes}u
#define {upper}_INPUT_SIZE {int(np.prod(b.input_shape))}u /* floats: input shape {list(b.input_shape)} */
#define {upper}_MEMBER_COUNT {len(project.members)}u
#define {upper}_IMAGE_SIZE {len(project.image)}u
#define {upper}_IMAGE_CRC32 0x{zlib.crc32(project.image):08x}u /* CRC32 of the whole image file */
/* Arena: the router's region + the largest other member's (measured on a 64-bit host TFLM; a 32-bit
 * MCU needs less), + 16 for alignment. Define {upper}_ARENA_SIZE yourself to override it. */
#ifndef {upper}_ARENA_SIZE
#define {upper}_ARENA_SIZE {project.arena_size}u
#endif
#define {upper}_TABLE_SIZE {len(table[0]) + table[1]}u /* segment-table entries (12 bytes each) */
/* RAM cache of recently run members' images (0: none; tswap_cascade_use_cache). */
#ifndef {upper}_CACHE_SIZE
#define {upper}_CACHE_SIZE {project.cache_size}u
#endif
/* Flash bytes each member's load operators read per run. */
{flash}

extern const tswap_cascade_config {p}_config;

#endif  // {upper}_CASCADE_H_
"""


def _hex(v: float) -> str:
    return float(v).hex()


def _source(project: CascadeProject) -> str:
    p, b = project.prefix, project.bundle
    parts = [f'// Generated by tflm_swap: the cascade\'s members and configuration.\n#include "{p}_cascade.h"\n']
    rows = []
    for k, m in enumerate(project.members):
        segs = "\n".join(f"    {{{s.offset}u, {s.size}u, 0x{s.crc32:08x}u}},  /* {s.id}: {n} */"
                         for s, n in zip(m.micro.segments, m.micro.segment_names)) or "    {0u, 0u, 0u},"
        table = ",\n  ".join(", ".join(_hex(v) for v in exp_table(m.output_scale)[i : i + 4]) for i in range(0, 256, 4))
        parts.append(f"// member {k}: {m.name} ({m.micro.flash_bytes_per_inference} flash bytes per run, "
                     f"arena {m.arena_size} bytes)\n" + c_array(f"{p}_{m.name}_graph", m.micro.graph)
                     + f"static const tswap_segment {p}_{m.name}_segments[] = {{\n{segs}\n}};\n"
                     f"/* exp(-k * {m.output_scale!r}), the output scale */\n"
                     f"static const double {p}_{m.name}_exp[256] = {{\n  {table}\n}};\n")
        rows.append(f'    {{"{m.name}", {p}_{m.name}_graph, {len(m.micro.graph)}u, 0x{zlib.crc32(m.micro.graph):08x}u, '
                    f"{p}_{m.name}_segments, {len(m.micro.segments)}u, {len(m.micro.image)}u, {m.arena_size}u, "
                    f"{m.outputs}u, {p}_{m.name}_exp}},")
    index = {m.name: k for k, m in enumerate(project.members)}
    specialist = ", ".join(str(index.get(f"specialist_{g}", -1)) for g in range(len(b.groups)))
    classes = ", ".join(f"{c}u" for g in b.groups for c in g)
    starts = np.concatenate([[0], np.cumsum([len(g) for g in b.groups])])
    policy = b.fallback["policy"]
    parts.append(f"""static const tswap_cascade_member {p}_members[] = {{
{chr(10).join(rows)}
}};
static const int32_t {p}_specialist[] = {{{specialist}}};
static const uint16_t {p}_classes[] = {{{classes}}};  /* groups {b.groups} */
static const uint32_t {p}_group_start[] = {{{", ".join(f"{int(s)}u" for s in starts)}}};

const tswap_cascade_config {p}_config = {{
    {b.n_classes}u, {len(b.groups)}u, {int(np.prod(b.input_shape))}u, {p}_members, {len(project.members)}u,
    {p}_specialist, {index.get("monolithic", -1)}, {p}_classes, {p}_group_start,
    {POLICIES[policy]}, {_hex(b.threshold)} /* fallback '{policy}' below {b.threshold!r} */
}};
""")
    return "\n".join(parts)


def _main(project: CascadeProject, ops: list[str]) -> str:
    template = (native_sources() / "micro" / "example" / "cascade_main.cc.in").read_text()
    return string.Template(template).substitute(
        name=project.prefix, upper=project.prefix.upper(), op_count=len(ops) + 6,
        resolver_lines=resolver_lines(ops, 'return Fail("resolver: {op}");'))


def _readme(prefix: str) -> str:
    return f"""# {prefix}: a cascade (router + specialists) on TFLite Micro, generated by tflm_swap

- `{prefix}_cascade.cc/.h`: every member's graph (internal flash), its segment table, the config.
- `{prefix}_image.bin`: one flash image holding every member's weights (external flash).
- `tswap/`: the tflm_swap micro library with the cascade API `tswap_cascade.h`.
- `main.cc`: the example: `tswap_cascade_init`, then `tswap_cascade_classify` per input.

Host build against a TFLM library (here xmos-ai-tools' host TFLM, namespace `tflite_micro`):

```
gcc -std=c99 -O2 -Wall -Werror -Itswap -c tswap/tswap_micro.c tswap/tswap_crc32.c tswap/tswap_file_flash.c
g++ -std=c++17 -O2 -Wall -Werror -Dtflite=tflite_micro -I. -Itswap -isystem $TFLM_INCLUDE \\
    -isystem /usr/include/gemmlowp main.cc {prefix}_cascade.cc tswap/tswap_cascade.cc tswap/tswap_tflm.cc \\
    tswap/tswap_tiled.cc *.o $TFLM_LIBRARY -o {prefix}_example
./{prefix}_example {prefix}_image.bin [inputs.bin]   # inputs: float32, {prefix.upper()}_INPUT_SIZE per inference
```
"""


# ------------------------------------------------------------------------------- host run
@dataclass(frozen=True)
class CascadeRun:
    """What the generated example printed, parsed: per inference its scores and statistics."""

    scores: np.ndarray  # [N, n_classes] float64, exactly as computed (printed as IEEE-754 bits)
    groups_run: list[list[int]]
    monolithic: list[bool]
    members_run: list[list[int]]  # member indices (container order), router first
    member_bytes: list[list[int]]  # flash bytes each of them read
    bytes_loaded: list[int]  # flash bytes
    cache_bytes: list[int]  # bytes the members' loads read from the RAM cache instead
    setups: list[int]  # interpreters set up by the inference (specialist switches)
    arena_size: int
    stdout: str


def run_project(project: CascadeProject, x: np.ndarray, *, board: str = "host", image: bytes | None = None,
                timeout: float = 900, pinned_tflm: bool = False) -> CascadeRun:
    """Build the project's `main.cc` and classify each of `x` ([N, *input_shape] floats).

    `board` "host": on the host TFLM (xmos-ai-tools, or with `pinned_tflm` TFLM built for the host
    from the pinned sources, as tflite-micro's interpreter computes; -Wall -Werror; cached by
    content); a board name
    (e.g. "mps2-an386"): cross-built with the pinned TFLM and run under QEMU (`tflm_swap.micro.mcu`).
    `image`: run with these flash bytes instead of the project's (to test what a wrong image does).
    Raises `NativeToolError` when the toolchain is missing and `TflmSwapError` with what the example
    printed when it fails (e.g. at `tswap_cascade_init`)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if list(x.shape[1:]) != list(project.bundle.input_shape):
        raise TflmSwapError(f"inputs of shape {list(x.shape[1:])}; the cascade takes {project.bundle.input_shape}")
    with tempfile.TemporaryDirectory(prefix="tswap_cascade_") as tmp:
        flash = project.image_path
        if image is not None:
            flash = Path(tmp) / "image.bin"
            flash.write_bytes(image)
        if board == "host":
            exe = build_cascade_example(project.out_dir, project.prefix, _pinned_tflm(project) if pinned_tflm else None)
            (Path(tmp) / "inputs.bin").write_bytes(x.tobytes())
            proc = subprocess.run([str(exe), str(flash), str(Path(tmp) / "inputs.bin")], capture_output=True,
                                  text=True, errors="replace", timeout=timeout)
            status, stdout = proc.returncode, proc.stdout + proc.stderr
        else:
            from ..micro import mcu

            files = mcu.ProjectFiles(project.out_dir, project.prefix, b"", False,
                                     (f"{project.prefix}_cascade.cc", "tswap/tswap_cascade.cc"))
            elf = mcu.build_firmware(files, board)
            status, stdout = mcu.run_firmware(elf, flash, x.tobytes(), board, timeout)
    if status != 0 or re.search(r"^(error:|FAULT)", stdout, re.M):
        raise TflmSwapError(f"the generated cascade example failed on {board}: {stdout.strip()[-2000:]}")
    return _parse_run(stdout, len(x))


def _pinned_tflm(project: CascadeProject):
    """TFLM built for the host from the pinned sources with every member's kernels."""
    from ..micro import mcu

    ops = {op for m in project.members for op in builtin_ops(m.micro.graph_model or m.micro.graph)}
    return mcu.source_host_tflm([resolver_method(op) for op in sorted(ops)])


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _parse_run(stdout: str, count: int) -> CascadeRun:
    """main.cc prints per inference `scores N: <hex floats>` and `info N: key=value ...`, then `arena_size: N`."""
    scores = [[int(v, 16) for v in m.group(1).split()] for m in re.finditer(r"^scores \d+:(.*)$", stdout, re.M)]
    infos = [dict(kv.split("=", 1) for kv in m.group(1).split()) for m in re.finditer(r"^info \d+:(.*)$", stdout, re.M)]
    arena = re.search(r"^arena_size: (\d+)$", stdout, re.M)
    if len(scores) != count or len(infos) != count or arena is None:
        raise TflmSwapError(f"the generated cascade example printed {len(scores)} of {count} results: {stdout[-2000:]}")
    return CascadeRun(np.array(scores, dtype=np.uint64).view(np.float64), [_ints(i["groups"]) for i in infos],
                      [i["monolithic"] == "1" for i in infos], [_ints(i["members"]) for i in infos],
                      [_ints(i["member_bytes"]) for i in infos], [int(i["bytes"]) for i in infos],
                      [int(i["cache_bytes"]) for i in infos], [int(i["setups"]) for i in infos],
                      int(arena.group(1)), stdout)
