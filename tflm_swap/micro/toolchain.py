"""Find the native sources and the host TFLM, and compile them (cached by content hash).

The C/C++ sources live in `delegates/` of the repository (an editable install) or, from a wheel,
in `<prefix>/share/tflm_swap/delegates/` (setup.cfg `data_files`); `native_sources()` finds either. The host TFLM is
xmos-ai-tools' `xtflm_python.so` (namespace `tflite_micro`, hence `-Dtflite=tflite_micro`), which
also needs Debian's gemmlowp headers (`libgemmlowp-dev`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import TflmSwapError

# Library files a user's project needs, relative to the source root (delegates/).
CORE_FILES = ("micro/tswap_micro.h", "micro/tswap_micro.c", "common/tswap_crc32.h", "common/tswap_crc32.c")
TFLM_FILES = ("micro/tswap_tflm.h", "micro/tswap_tflm.cc", "micro/tswap_tiled.cc")
HOST_FILES = ("micro/tswap_file_flash.h", "micro/tswap_file_flash.c")
CASCADE_FILES = ("micro/tswap_cascade.h", "micro/tswap_cascade.cc")  # cascade projects only
GEMMLOWP_DIRS = ("/usr/include/gemmlowp", "/usr/local/include/gemmlowp")


class NativeToolError(TflmSwapError):
    """A compiler, the host TFLM library or a native source is missing, or a build failed."""


def native_sources() -> Path:
    """The directory holding `micro/` and `common/` C sources (repository `delegates/` or packaged copy)."""
    here = Path(__file__).resolve().parent
    installed = Path(sys.prefix) / "share" / "tflm_swap" / "delegates"  # wheel: setup.cfg data_files
    for root in (here.parents[1] / "delegates", installed, here / "native_src"):
        if (root / "micro" / "tswap_micro.c").is_file() and (root / "common" / "tswap_crc32.c").is_file():
            return root
    raise NativeToolError(f"tflm_swap's C sources are missing (looked in {here.parents[1] / 'delegates'} "
                          f"and {installed}); reinstall tflm_swap")


def compiler(name: str) -> str:
    """Path of a compiler (gcc, g++, clang); raises NativeToolError naming what to install."""
    path = shutil.which(os.environ.get(name.upper().replace("+", "X"), name))
    if path is None:
        raise NativeToolError(f"{name} not found on PATH; install it (Debian: apt-get install {name})")
    return path


@dataclass(frozen=True)
class HostTflm:
    """A TFLM library for this machine and the flags to compile and link against it: xmos-ai-tools'
    (`host_tflm`) or one built from the pinned sources (`mcu.source_host_tflm`)."""

    library: Path
    compile_flags: tuple[str, ...]
    link: tuple[str, ...]

    def cxx_flags(self) -> list[str]:
        return list(self.compile_flags)

    def link_flags(self) -> list[str]:
        return list(self.link)


def host_tflm() -> HostTflm:
    """Locate xmos-ai-tools' host TFLM; raises NativeToolError naming the missing piece."""
    spec = importlib.util.find_spec("xmos_ai_tools")
    if spec is None or spec.origin is None:
        raise NativeToolError("xmos-ai-tools is not installed (pip install xmos-ai-tools); it provides "
                              "the host TFLite Micro library the TFLM target is verified with")
    root = Path(spec.origin).parent
    include = root / "runtime" / "include"
    libs = sorted((root / "xinterpreters" / "libs").glob("*/xtflm_python.so"))
    if not (include / "tensorflow" / "lite" / "micro" / "micro_interpreter.h").is_file() or not libs:
        raise NativeToolError(f"xmos-ai-tools at {root} lacks the TFLM headers or xtflm_python.so")
    gemm = next((Path(d) for d in GEMMLOWP_DIRS if Path(d, "fixedpoint").is_dir()), None)
    if gemm is None:
        raise NativeToolError("gemmlowp headers not found (Debian: apt-get install libgemmlowp-dev)")
    flags = ("-std=c++17", "-Dtflite=tflite_micro", "-isystem", str(include), "-isystem", str(gemm))
    return HostTflm(libs[0], flags, (str(libs[0]), f"-Wl,-rpath,{libs[0].parent}"))


def cache_dir() -> Path:
    """Where compiled binaries are cached (TFLM_SWAP_CACHE, else ~/.cache/tflm_swap/native)."""
    base = os.environ.get("TFLM_SWAP_CACHE") or Path.home() / ".cache" / "tflm_swap" / "native"
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def build(name: str, sources: list[Path], command: list[str], extra_key: str = "",
          moved: Path | None = None) -> Path:
    """Compile `sources` with `command` (ending before '-o OUT'); reuse a cached binary of the same
    sources and flags. `moved`: a directory whose place does not matter (a generated project), left
    out of the cache key so that the same project written elsewhere is not built again. Raises
    NativeToolError with the compiler's message on failure."""
    key = " ".join(command)
    if moved is not None:
        key = key.replace(str(moved), "<project>")
    digest = hashlib.sha256(extra_key.encode() + key.encode())
    for src in sources:
        digest.update(src.read_bytes())
    for header in sorted({h for s in sources for h in s.parent.glob("*.h")}):
        digest.update(header.read_bytes())
    out = cache_dir() / f"{name}-{digest.hexdigest()[:16]}"
    if out.is_file():
        return out
    run_to_file(command, out, f"building {name} failed:\n{' '.join(command)}")
    return out


def run_to_file(command: list[str], out: Path, failure: str) -> None:
    """Run a compiler or linker `command` (ending before '-o OUT') into a temporary sibling of `out`,
    renamed into place on success; on failure raise NativeToolError(`failure` + the tool's stderr)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    proc = subprocess.run([*command, "-o", str(tmp)], capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise NativeToolError(f"{failure}\n{proc.stderr[-4000:]}")
    os.replace(tmp, out)


def c_objects_command(sources: list[Path], extra: list[str] | None = None) -> list[str]:
    """A gcc command line compiling the C core strictly (C99, warnings as errors)."""
    root = native_sources()
    return [compiler("gcc"), "-std=c99", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pedantic",
            f"-I{root / 'micro'}", f"-I{root / 'common'}", *(extra or []), *map(str, sources)]


def build_host_runner(ops_source: str, tflm: HostTflm | None = None) -> Path:
    """The host runner (delegates/micro/host/tswap_host_runner.cc) linked to the host TFLM, with
    `ops_source`: the C++ definitions of tswap_host_ops.h for a model (its operators and resource
    variables). The runner's fixed part is compiled once; each distinct `ops_source` adds one small
    object and a link, all cached by content. `tflm`: the TFLM to link (xmos-ai-tools' by default)."""
    root, tflm = native_sources(), tflm or host_tflm()
    c_src = [root / f for f in CORE_FILES + HOST_FILES if f.endswith(".c")]
    cc_src = [root / "micro" / "host" / "tswap_host_runner.cc", root / "micro" / "tswap_tflm.cc",
              root / "micro" / "tswap_tiled.cc"]
    flags = [compiler("g++"), "-O2", "-Wall", *tflm.cxx_flags(), f"-I{root / 'micro'}",
             f"-I{root / 'micro' / 'host'}", f"-I{root / 'common'}", "-c"]
    objects = [build_c_object(src) for src in c_src]
    objects += [build(f"host-{src.stem}.o", [src], [*flags, str(src)], str(tflm.library)) for src in cc_src]
    digest = hashlib.sha256(ops_source.encode()).hexdigest()[:16]
    generated = cache_dir() / "host_ops" / f"tswap_host_ops-{digest}.cc"
    if not generated.is_file():
        generated.parent.mkdir(parents=True, exist_ok=True)
        tmp = generated.with_name(f"{generated.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(ops_source)
        os.replace(tmp, generated)
    header = root / "micro" / "host" / "tswap_host_ops.h"
    objects.append(build(f"host-ops-{digest}.o", [generated, header], [*flags, str(generated)], str(tflm.library)))
    link = [compiler("g++"), *map(str, objects), *tflm.link_flags()]
    return build(f"tswap_host_runner-{digest}", objects, link, str(tflm.library))


def build_c_object(source: Path, extra: list[str] | None = None) -> Path:
    """One C99 source of the core compiled to a cached object file (strict warnings)."""
    command = [*c_objects_command([source], extra), "-c"]
    return build(source.stem + ".o", [source], command)


def build_example(project: str | Path, prefix: str) -> Path:
    """Compile a generated project's `main.cc` on the host (file-backed flash, host TFLM), as its
    README describes; returns the executable (cached by source content)."""
    return _build_project(Path(project), f"{prefix}_example",
                          ["main.cc", f"{prefix}_model_data.cc"], f"{prefix}_tswap.h", [])


def _build_project(project: Path, name: str, own: list[str], header: str, cc_source: list[str],
                   werror: bool = False, tflm: HostTflm | None = None) -> Path:
    """Compile a generated project: the C core (-Wall -Wextra -Werror), then the project's `own` C++
    files with the library's `cc_source` and tswap_tflm.cc/tswap_tiled.cc against the host TFLM
    (-Wall, and -Werror with `werror`), linked to `name` (cached by content; `header` joins the key).
    `tflm`: the host TFLM to build against (xmos-ai-tools' by default)."""
    tflm = tflm or host_tflm()
    lib = project / "tswap"
    c_src = [lib / "tswap_micro.c", lib / "tswap_crc32.c", lib / "tswap_file_flash.c"]
    objects = [build(f"example-{s.stem}.o", [s], [compiler("gcc"), "-std=c99", "-O2", "-Wall", "-Wextra",
                                                  "-Werror", f"-I{lib}", "-c", str(s)], moved=project)
               for s in c_src]
    cc_src = [*(project / f for f in own), *(lib / f for f in cc_source), lib / "tswap_tflm.cc", lib / "tswap_tiled.cc"]
    command = [compiler("g++"), "-O2", "-Wall", *(["-Werror"] if werror else []), *tflm.cxx_flags(), f"-I{project}",
               f"-I{lib}", *map(str, cc_src), *map(str, objects), *tflm.link_flags()]
    return build(name, c_src + cc_src + [project / header], command, str(tflm.library), moved=project)


def build_cascade_example(project: str | Path, prefix: str, tflm: HostTflm | None = None) -> Path:
    """Compile a generated cascade project's `main.cc` on the host (file-backed flash, host TFLM:
    `tflm`, else xmos-ai-tools') with -Wall -Werror (C also -Wextra); returns the executable (cached
    by source content)."""
    return _build_project(Path(project), f"{prefix}_cascade_example", ["main.cc", f"{prefix}_cascade.cc"],
                          f"{prefix}_cascade.h", ["tswap_cascade.cc"], werror=True, tflm=tflm)


def build_unit_tests() -> Path:
    """The C core's unit tests (delegates/micro/tests) with AddressSanitizer and UBSan; run it with a
    scratch file path as its argument."""
    root = native_sources()
    sources = [root / "micro" / "tests" / "test_tswap_micro.c", root / "micro" / "tswap_micro.c",
               root / "common" / "tswap_crc32.c", root / "micro" / "tswap_file_flash.c"]
    command = c_objects_command(sources, ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"])
    return build("test_tswap_micro", sources, command)


def build_fuzzer() -> Path:
    """The libFuzzer target (delegates/micro/fuzz/fuzz_image.c), clang with ASan and UBSan."""
    root = native_sources()
    sources = [root / "micro" / "fuzz" / "fuzz_image.c", root / "micro" / "tswap_micro.c",
               root / "common" / "tswap_crc32.c"]
    command = [compiler("clang"), "-g", "-O1", "-fsanitize=fuzzer,address,undefined",
               "-fno-sanitize-recover=all", f"-I{root / 'micro'}", f"-I{root / 'common'}", *map(str, sources)]
    return build("fuzz_image", sources, command)
