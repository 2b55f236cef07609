"""Generated TFLM projects on an emulated Cortex-M: cross-compile, run under QEMU, parse the results.

    run_project(project, inputs)      build the project for a board and run it -> McuRun
    tflm_library(ops, board)          TFLM built for the board from the pinned archives (cached)
    measure_arena(project)            the arena the project needs on the board (32-bit), bytes
    run_unit_tests(board)             the C core's unit tests built for the board, run under QEMU

Third-party sources come only from the pinned archives in the vendor directory (`TFLM_SWAP_VENDOR`,
else `../shared/vendor` beside the checkout): they are extracted into the build directory
(`TFLM_SWAP_MCU_BUILD`, else the checkout's git-ignored `build/mcu`), never into tracked files. The
TFLM library is compiled once per set of inputs (archive hashes, source list, flags, compiler
version) and cached there; the board files are ours (`delegates/micro/mcu/`).

Boards: `mps2-an386` (Cortex-M4F; 4 MiB code at 0x0, 4 MiB SRAM at 0x20000000, the flash image in
the 16 MiB PSRAM at 0x21000000) and `mps2-an500` (Cortex-M7, same RAMs, the PSRAM at 0x60000000); the
build target `host` is this machine (TFLM from the same sources, for what xmos-ai-tools' cannot run).
QEMU runs with `-icount shift=0`, so SysTick counts one tick per `INSTRUCTIONS_PER_TICK`
instructions: figures are instruction counts, not cycles.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TflmSwapError
from ..fileio import file_sha256
from .toolchain import HostTflm, NativeToolError, cache_dir, compiler, native_sources, run_to_file

INSTRUCTIONS_PER_TICK = 40  # SysTick at 25 MHz, qemu -icount shift=0: 1 instruction per ns
ARENA_ALIGNMENT = 16  # TFLM aligns the arena; the smallest arena that runs is arena_used rounded up to this

# Pinned archives (vendor directory) and the directory each one extracts to.
ARCHIVES = {
    "tflite-micro": "tflite-micro-90b983c2.tar.gz",
    "flatbuffers": "flatbuffers-v25.9.23.tar.gz",
    "gemmlowp": "gemmlowp-719139ce.tar.gz",
    "ruy": "ruy-d3712831.tar.gz",
    "CMSIS_6": "cmsis6-5782d6f8.tar.gz",
    "Cortex_DFP": "cortex-dfp-c2c70a97.tar.gz",
    "CMSIS-NN": "cmsis-nn-4ab83cc3.tar.gz",
}
FLATBUFFERS_PATCH = "tflite-micro/tensorflow/lite/micro/tools/make/flatbuffers.patch"

# TFLM sources every model needs (interpreter, allocator, planner, flatbuffer parsing, kernel helpers),
# relative to tflite-micro/. Operator kernels are added per model (`kernel_sources`); TFLM's
# reference micro_time.cc is replaced by delegates/micro/mcu/micro_time.cc (SysTick).
CORE_SOURCES = (
    "tensorflow/compiler/mlir/lite/schema/schema_utils.cc",
    "tensorflow/lite/core/api/flatbuffer_conversions.cc",
    "tensorflow/lite/core/c/common.cc",
    "tensorflow/lite/kernels/internal/common.cc",
    "tensorflow/lite/kernels/internal/portable_tensor_utils.cc",
    "tensorflow/lite/kernels/internal/quantization_util.cc",
    "tensorflow/lite/kernels/internal/reference/portable_tensor_utils.cc",
    "tensorflow/lite/kernels/internal/tensor_ctypes.cc",
    "tensorflow/lite/kernels/kernel_util.cc",
    "tensorflow/lite/micro/arena_allocator/non_persistent_arena_buffer_allocator.cc",
    "tensorflow/lite/micro/arena_allocator/persistent_arena_buffer_allocator.cc",
    "tensorflow/lite/micro/arena_allocator/single_arena_buffer_allocator.cc",
    "tensorflow/lite/micro/debug_log.cc",
    "tensorflow/lite/micro/flatbuffer_utils.cc",
    "tensorflow/lite/micro/kernels/kernel_util.cc",
    "tensorflow/lite/micro/memory_helpers.cc",
    "tensorflow/lite/micro/memory_planner/greedy_memory_planner.cc",
    "tensorflow/lite/micro/memory_planner/linear_memory_planner.cc",
    "tensorflow/lite/micro/micro_allocation_info.cc",
    "tensorflow/lite/micro/micro_allocator.cc",
    "tensorflow/lite/micro/micro_context.cc",
    "tensorflow/lite/micro/micro_interpreter.cc",
    "tensorflow/lite/micro/micro_interpreter_context.cc",
    "tensorflow/lite/micro/micro_interpreter_graph.cc",
    "tensorflow/lite/micro/micro_log.cc",
    "tensorflow/lite/micro/micro_op_resolver.cc",
    "tensorflow/lite/micro/micro_resource_variable.cc",
    "tensorflow/lite/micro/micro_utils.cc",
    "tensorflow/lite/micro/system_setup.cc",
    "tensorflow/lite/micro/tflite_bridge/flatbuffer_conversions_bridge.cc",
    "tensorflow/lite/micro/tflite_bridge/micro_error_reporter.cc",
)
KERNELS_DIR = "tensorflow/lite/micro/kernels"
# Kernel sets: TFLM's reference kernels, or its CMSIS-NN kernels (kernels/cmsis_nn/, the operators
# CMSIS-NN has; reference kernels for the rest) with the CMSIS-NN library built from its archive,
# as TFLM's make does with OPTIMIZED_KERNEL_DIR=cmsis_nn (float16/float32 CMSIS-NN functions off).
KERNEL_SETS = ("reference", "cmsis-nn")
CMSIS_NN_DIR = f"{KERNELS_DIR}/cmsis_nn"
CMSIS_NN_FLAGS = ("-DCMSIS_NN", "-DARM_NN_ENABLE_F16=0", "-DARM_NN_ENABLE_F32=0")
# The parameter helpers our tiled kernels (delegates/micro/tswap_tiled.cc) share with TFLM's own.
TILED_KERNEL_SOURCES = tuple(f"{KERNELS_DIR}/{k}_common.cc" for k in ("conv", "depthwise_conv", "fully_connected"))
# Kernel files whose registration needs further files of the same kernel (TFLM's sources.inc lists them):
# DECODE's per-type decoders (LUT, Huffman, pruning). No defines: the DECODE path is compiled unconditionally.
KERNEL_COMPANIONS = {
    "decode.cc": ("decode_state.cc", "decode_state_huffman.cc", "decode_state_lut.cc", "decode_state_prune.cc"),
}
RESOLVER_HEADER = "tensorflow/lite/micro/micro_mutable_op_resolver.h"
MCU_DIR = "micro/mcu"  # our board files, under native_sources()


@dataclass(frozen=True)
class Board:
    """A QEMU machine and how to build for it."""

    name: str
    cpu_flags: tuple[str, ...]
    device: str  # Cortex_DFP device folder (CMSIS device header <device>.h)
    linker_script: str  # in delegates/micro/mcu
    image_base: int  # where QEMU loads the flash image
    image_max: int  # bytes of emulated memory there


BOARDS = {
    "mps2-an386": Board("mps2-an386", ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
                        "ARMCM4", "mps2.ld", 0x21000000, 16 << 20),
    # Cortex-M7 (double-precision FPU): the same code and data RAM as AN386, its PSRAM at 0x60000000
    "mps2-an500": Board("mps2-an500", ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"),
                        "ARMCM7", "mps2.ld", 0x60000000, 16 << 20),
}
DEFAULT_BOARD = "mps2-an386"
# This machine, built with its own gcc: the stock TFLM from the pinned sources, for what xmos-ai-tools'
# host library cannot run (resource variables crash in its MicroResourceVariables::Allocate).
HOST_BOARD = Board("host", (), "", "", 0, 0)
# The host runner reports the arena through TFLM's recording allocator; main.cc reads TFLM's timer.
HOST_SOURCES = ("tensorflow/lite/micro/micro_time.cc", "tensorflow/lite/micro/recording_micro_allocator.cc",
                "tensorflow/lite/micro/arena_allocator/recording_single_arena_buffer_allocator.cc")

COMMON_FLAGS = ("-O2", "-ffunction-sections", "-fdata-sections", "-funsigned-char", "-DTF_LITE_STATIC_MEMORY",
                "-DNDEBUG", "-DTF_LITE_STRIP_ERROR_STRINGS")
# What code compiled against the library must define too (TFLM's structs and logging depend on them).
TFLM_DEFINES = tuple(f[2:] for f in COMMON_FLAGS if f.startswith("-D"))
CXX_FLAGS = ("-std=c++17", "-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics", "-fno-unwind-tables")
C_FLAGS = ("-std=c99",)


def board(name: str) -> Board:
    """The board called `name`; TflmSwapError naming the known boards otherwise."""
    if name not in BOARDS:
        raise TflmSwapError(f"unknown board {name!r}; known boards: {', '.join(sorted(BOARDS))}")
    return BOARDS[name]


def build_target(name: str) -> Board:
    """What TFLM and projects can be built for: a board, or this machine (`HOST_BOARD`, "host")."""
    return HOST_BOARD if name == HOST_BOARD.name else board(name)


# --------------------------------------------------------------------------------------------- tools


@dataclass(frozen=True)
class Toolchain:
    """The arm-none-eabi cross compilers and the QEMU system emulator."""

    gcc: str
    gxx: str
    ar: str
    qemu: str
    version: str  # first line of `arm-none-eabi-gcc --version`, part of the library's cache key


def toolchain(board_name: str = DEFAULT_BOARD) -> Toolchain:
    """Locate arm-none-eabi-gcc/g++/ar and qemu-system-arm (for the host board: gcc, g++ and ar);
    NativeToolError naming the Debian packages when one is missing."""
    if board_name == HOST_BOARD.name:
        gcc, ar = compiler("gcc"), shutil.which("ar") or "ar"
        proc = subprocess.run([gcc, "--version"], capture_output=True, text=True)
        return Toolchain(gcc, compiler("g++"), ar, "", proc.stdout.splitlines()[0])
    tools = {t: shutil.which(f"arm-none-eabi-{t}") for t in ("gcc", "g++", "ar")}
    tools["qemu"] = shutil.which("qemu-system-arm")
    missing = [t for t, p in tools.items() if p is None]
    if missing:
        raise NativeToolError(f"{', '.join(missing)} not found on PATH; install the Debian packages gcc-arm-none-eabi "
                              "libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib qemu-system-arm")
    proc = subprocess.run([tools["gcc"], "--version"], capture_output=True, text=True)
    return Toolchain(tools["gcc"], tools["g++"], tools["ar"], tools["qemu"], proc.stdout.splitlines()[0])


def vendor_dir() -> Path:
    """The directory holding the pinned archives: TFLM_SWAP_VENDOR, else ../shared/vendor beside the
    checkout. NativeToolError when an archive is missing."""
    env = os.environ.get("TFLM_SWAP_VENDOR")
    path = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "vendor"
    missing = [name for name in ARCHIVES.values() if not (path / name).is_file()]
    if missing:
        raise NativeToolError(f"pinned source archives missing in {path}: {', '.join(missing)} "
                              "(set TFLM_SWAP_VENDOR to the directory holding them)")
    return path


def build_root() -> Path:
    """Where sources are extracted and objects, libraries and firmware are cached, keyed by their
    inputs: TFLM_SWAP_MCU_BUILD, else `build/mcu` in the checkout tflm_swap runs from (git-ignored),
    else (an installed package) `mcu/` in tflm_swap's native cache."""
    env = os.environ.get("TFLM_SWAP_MCU_BUILD")
    checkout = Path(__file__).resolve().parents[2]
    if env:
        path = Path(env)
    elif (checkout / "setup.cfg").is_file() and (checkout / "delegates").is_dir():
        path = checkout / "build" / "mcu"
    else:
        path = cache_dir() / "mcu"
    path.mkdir(parents=True, exist_ok=True)
    return path


def available(board_name: str = DEFAULT_BOARD) -> str:
    """"" when projects can be built and run for `board_name` here, else why not."""
    try:
        board(board_name)
        toolchain()
        vendor_dir()
    except TflmSwapError as exc:
        return str(exc)
    return ""



@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock file, so that concurrent builds do not do the same work twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _progress(message: str) -> None:
    print(f"tflm-swap mcu: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Sources:
    """The extracted pinned archives."""

    root: Path  # holds tflite-micro/, flatbuffers/, gemmlowp/, ruy/, CMSIS_6/, Cortex_DFP/
    key: str  # hash of the archives' hashes

    @property
    def tflm(self) -> Path:
        return self.root / "tflite-micro"

    def include_dirs(self, device: str = "") -> list[Path]:
        """TFLM's include directories, and CMSIS's for a Cortex-M `device` ("" for the host)."""
        r = self.root
        dirs = [r / "tflite-micro", r / "flatbuffers" / "include", r / "gemmlowp", r / "ruy"]
        if device:
            dirs += [r / "CMSIS_6" / "CMSIS" / "Core" / "Include", r / "Cortex_DFP" / "Device" / device / "Include"]
        return dirs

    def include_flags(self, device: str = "") -> list[str]:
        return [f"-I{d}" for d in self.include_dirs(device)]


def extract_sources(vendor: Path | None = None) -> Sources:
    """Extract the pinned archives (and apply TFLM's flatbuffers.patch) into the build directory,
    once per set of archive hashes; returns where they are."""
    vendor = vendor or vendor_dir()
    hashes = {name: file_sha256(vendor / archive) for name, archive in ARCHIVES.items()}
    key = hashlib.sha256(repr(sorted(hashes.items())).encode()).hexdigest()[:16]
    dest = build_root() / "src" / key
    if (dest / ".complete").is_file():
        return Sources(dest, key)
    with _locked(build_root() / "src" / f"{key}.lock"):
        if (dest / ".complete").is_file():
            return Sources(dest, key)
        _progress(f"extracting the pinned archives from {vendor} into {dest}")
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=dest.parent))
        for name, archive in ARCHIVES.items():
            with tarfile.open(vendor / archive) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")
                else:  # Python < 3.11.4: the archives are pinned and hashed above
                    tar.extractall(tmp)  # noqa: S202
            if not (tmp / name).is_dir():
                raise NativeToolError(f"{vendor / archive} did not hold the expected top directory {name}/")
        _apply_patch(tmp / "flatbuffers", tmp / FLATBUFFERS_PATCH)
        (tmp / ".complete").write_text("\n".join(f"{h}  {ARCHIVES[n]}" for n, h in sorted(hashes.items())) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    return Sources(dest, key)


def _apply_patch(directory: Path, patch_file: Path) -> None:
    tool = shutil.which("patch")
    if tool is None:
        raise NativeToolError("the `patch` program is missing (Debian: apt-get install patch)")
    with open(patch_file, "rb") as f:
        proc = subprocess.run([tool, "-s", "-p1"], stdin=f, cwd=directory, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NativeToolError(f"applying {patch_file} to {directory} failed: {proc.stdout}{proc.stderr}")


def resolver_registrations(sources: Sources) -> dict[str, str]:
    """MicroMutableOpResolver method -> the registration function it uses (AddConv2D -> Register_CONV_2D),
    read from the extracted TFLM's micro_mutable_op_resolver.h."""
    text = (sources.tflm / RESOLVER_HEADER).read_text()
    found = {}
    for match in re.finditer(r"TfLiteStatus (Add\w+)\((.{0,400}?)\n  \}", text, re.DOTALL):
        reg = re.search(r"\b(Register_\w+)\(", match.group(2))
        if reg:
            found[match.group(1)] = reg.group(1)
    return found


def kernel_sources(sources: Sources, methods: Sequence[str], kernels: str = "reference") -> list[str]:
    """TFLM kernel sources (relative to tflite-micro/) that the resolver methods in `methods` need:
    the file defining each registration function (in kernels/cmsis_nn/ first for the CMSIS-NN set)
    and its `<kernel>_common.cc` when there is one."""
    if kernels not in KERNEL_SETS:
        raise TflmSwapError(f"unknown kernel set {kernels!r}; known: {', '.join(KERNEL_SETS)}")
    registrations = resolver_registrations(sources)
    dirs = [CMSIS_NN_DIR, KERNELS_DIR] if kernels == "cmsis-nn" else [KERNELS_DIR]
    defined: dict[str, str] = {}  # registration -> its file, relative to tflite-micro/
    for directory in dirs:
        for path in sorted((sources.tflm / directory).glob("*.cc")):
            if path.name.endswith("_test.cc"):
                continue
            for name in re.findall(r"^TFLMRegistration\*?\s+(Register_\w+)\s*\(\s*\)\s*\{", path.read_text(),
                                   re.MULTILINE):
                defined.setdefault(name, f"{directory}/{path.name}")
    result: list[str] = []
    for method in methods:
        if method not in registrations:
            raise TflmSwapError(f"MicroMutableOpResolver has no method {method} in the pinned TFLM")
        reg = registrations[method]
        if reg not in defined:
            raise TflmSwapError(f"no reference kernel in {KERNELS_DIR} defines {reg} (used by {method})")
        common = f"{KERNELS_DIR}/{Path(defined[reg]).stem}_common.cc"  # shared by both kernel sets
        companions = [f"{KERNELS_DIR}/{c}" for c in KERNEL_COMPANIONS.get(Path(defined[reg]).name, ())]
        for rel in (defined[reg], common, *companions):
            if (sources.tflm / rel).is_file() and rel not in result:
                result.append(rel)
    return result


def cmsis_nn_sources(sources: Sources) -> list[str]:
    """The CMSIS-NN library's C sources (relative to the extracted root), int8/int16 only."""
    found = sorted(p.relative_to(sources.root).as_posix() for p in (sources.root / "CMSIS-NN" / "Source").rglob("*.c"))
    return [f for f in found if not f.endswith(("_f16.c", "_f32.c", "/arm_nntables_flt.c"))]


# ---------------------------------------------------------------------------------------- compiling


def _compile_all(jobs: list[tuple[list[str], Path]], what: str) -> None:
    """Run the compile commands (each writes one object) two at a time per core, atomically."""
    todo = [(cmd, out) for cmd, out in jobs if not out.is_file()]
    if not todo:
        return
    _progress(f"compiling {len(todo)} {what} ({os.cpu_count() or 1} jobs)")
    from tqdm import tqdm

    def one(job: tuple[list[str], Path]) -> None:
        cmd, out = job
        run_to_file(cmd, out, f"compiling {cmd[-1]} failed:\n{' '.join(cmd)}")

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for _ in tqdm(pool.map(one, todo), total=len(todo), desc=what, unit="file", file=sys.stderr,
                      disable=None, leave=False):
            pass


def _flags(tools: Toolchain, b: Board, sources: Sources, cxx: bool) -> list[str]:
    return [tools.gxx if cxx else tools.gcc, *b.cpu_flags, *COMMON_FLAGS, *(CXX_FLAGS if cxx else C_FLAGS),
            *sources.include_flags(b.device)]


def tflm_library(methods: Sequence[str], board_name: str = DEFAULT_BOARD, kernels: str = "reference") -> Path:
    """TFLM built for the board with the kernels the resolver methods need from the kernel set
    (`kernel_sources`; "cmsis-nn" adds the CMSIS-NN library), as a static library cached under a hash
    of its inputs (archive hashes, source list, flags, compiler version); objects are shared between
    libraries of different operator sets."""
    b, tools, sources = build_target(board_name), toolchain(board_name), extract_sources()
    if kernels == "cmsis-nn" and b is HOST_BOARD:
        raise TflmSwapError("CMSIS-NN kernels are built for Cortex-M boards only")
    extra = HOST_SOURCES if b is HOST_BOARD else ()
    tflm_srcs = [*CORE_SOURCES, *extra, *TILED_KERNEL_SOURCES, *kernel_sources(sources, methods, kernels)]
    srcs = list(dict.fromkeys(f"tflite-micro/{s}" for s in tflm_srcs))  # relative to the extracted root
    cxx, cc = _flags(tools, b, sources, cxx=True), _flags(tools, b, sources, cxx=False)
    if kernels == "cmsis-nn":
        srcs += cmsis_nn_sources(sources)
        nn = [*CMSIS_NN_FLAGS, f"-I{sources.root / 'CMSIS-NN'}", f"-I{sources.root / 'CMSIS-NN' / 'Include'}"]
        cxx, cc = cxx + nn, cc + nn
    obj_key = hashlib.sha256(f"{sources.key}|{tools.version}|{' '.join(cxx + cc)}".encode()).hexdigest()[:16]
    lib_key = hashlib.sha256(f"{obj_key}|{'|'.join(sorted(srcs))}".encode()).hexdigest()[:16]
    suffix = "" if kernels == "reference" else f"-{kernels}"
    lib = build_root() / "lib" / f"libtflm-{b.name}{suffix}-{lib_key}.a"
    if lib.is_file():
        return lib
    obj_dir = build_root() / "obj" / f"{b.name}{suffix}-{obj_key}"
    objects = [obj_dir / (s.replace("/", "_") + ".o") for s in srcs]
    jobs = [([*(cc if s.endswith(".c") else cxx), "-c", str(sources.root / s)], o) for s, o in zip(srcs, objects)]
    with _locked(obj_dir.with_suffix(".lock")):
        _compile_all(jobs, f"TFLM sources for {b.name}{suffix}")
        lib.parent.mkdir(parents=True, exist_ok=True)
        tmp = lib.with_name(f"{lib.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        proc = subprocess.run([tools.ar, "rcs", str(tmp), *map(str, objects)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise NativeToolError(f"archiving {lib} failed: {proc.stderr}")
        os.replace(tmp, lib)
    return lib


def source_host_tflm(methods: Sequence[str]) -> HostTflm:
    """TFLM built for this machine from the pinned sources with the kernels `methods` need, as a
    HostTflm to build the host runner or a project against."""
    lib, sources = tflm_library(methods, HOST_BOARD.name), extract_sources()
    defines = [f"-D{d}" for d in TFLM_DEFINES]
    return HostTflm(lib, (*CXX_FLAGS[:1], *defines, *sources.include_flags()), (str(lib),))


# ------------------------------------------------------------------------------------------ projects


@dataclass(frozen=True)
class ProjectFiles:
    """What a generated project directory holds (read back from its files)."""

    directory: Path
    prefix: str
    graph: bytes  # the graph array of {prefix}_model_data.cc
    prefetch: bool
    sources: tuple[str, ...] = ()  # the project's C++ files besides main.cc (default {prefix}_model_data.cc)

    @property
    def image(self) -> Path:
        return self.directory / f"{self.prefix}_image.bin"

    @property
    def main(self) -> Path:
        return self.directory / "main.cc"

    def resolver_methods(self) -> list[str]:
        """The MicroMutableOpResolver methods main.cc calls (AddConv2D, ...)."""
        return re.findall(r"resolver\.(Add\w+)\(\)", self.main.read_text())


def read_project(directory: str | os.PathLike[str]) -> ProjectFiles:
    """Read a project that `tflm-swap convert --target tflm` wrote; TflmSwapError naming the file
    that is missing or malformed."""
    d = Path(directory)
    headers = sorted(d.glob("*_tswap.h")) if d.is_dir() else []
    if len(headers) != 1:
        raise TflmSwapError(f"{d} is not a generated TFLM project (expected one *_tswap.h, found {len(headers)})")
    prefix = headers[0].name[: -len("_tswap.h")]
    for needed in (d / "main.cc", d / f"{prefix}_model_data.cc", d / f"{prefix}_image.bin", d / "tswap"):
        if not needed.exists():
            raise TflmSwapError(f"{needed} is missing from the project {d}")
    text = (d / f"{prefix}_model_data.cc").read_text()
    body = re.search(r"\{(.*?)\};", text, re.DOTALL)
    if body is None:
        raise TflmSwapError(f"{d / f'{prefix}_model_data.cc'}: no array found")
    graph = bytes(int(h, 16) for h in re.findall(r"0x([0-9a-fA-F]{2})", body.group(1)))
    flag = re.search(rf"#define {prefix.upper()}_PREFETCH (\d)", headers[0].read_text())
    if flag is None:
        raise TflmSwapError(f"{headers[0]}: no {prefix.upper()}_PREFETCH definition")
    return ProjectFiles(d, prefix, graph, flag.group(1) == "1")


def build_firmware(project: ProjectFiles, board_name: str = DEFAULT_BOARD, arena_size: int | None = None,
                   kernels: str = "reference") -> Path:
    """Cross-compile and link the project (main.cc, graph, tswap library, our board files) against
    TFLM for the board with the kernel set `kernels`; `arena_size` overrides {PREFIX}_ARENA_SIZE.
    Cached by content."""
    b, tools, sources = board(board_name), toolchain(), extract_sources()
    lib = tflm_library(project.resolver_methods(), board_name, kernels)
    mcu, tswap = native_sources() / MCU_DIR, project.directory / "tswap"
    defines = ["-DTSWAP_BOARD_FLASH", "-DTSWAP_SEMIHOSTING", f'-DCMSIS_DEVICE_HEADER="{b.device}.h"']
    per_file = {  # defines only one file depends on, so that its siblings' objects are reused
        "board_flash.c": [f"-DTSWAP_MCU_IMAGE_BASE={b.image_base:#x}u", f"-DTSWAP_MCU_IMAGE_SIZE={b.image_max}u",
                          *(["-DTSWAP_MCU_DEFERRED_FLASH"] if project.prefetch else [])],
        "main.cc": [] if arena_size is None else [f"-D{project.prefix.upper()}_ARENA_SIZE={int(arena_size)}u"],
    }
    includes = [f"-I{project.directory}", f"-I{tswap}", f"-I{mcu}"]
    c_files = [tswap / "tswap_micro.c", tswap / "tswap_crc32.c", mcu / "startup.c", mcu / "board_flash.c"]
    own = project.sources or (f"{project.prefix}_model_data.cc",)
    cc_files = [project.main, *(project.directory / f for f in own), tswap / "tswap_tflm.cc",
                tswap / "tswap_tiled.cc", mcu / "micro_time.cc"]
    jobs, objects = [], []
    for src in c_files + cc_files:
        cmd = [*_flags(tools, b, sources, src.suffix == ".cc"), "-Wall", *defines, *per_file.get(src.name, []),
               *includes, "-c", str(src)]
        if src == project.main:  # what it compiles to depends on the arena, from -D or the header
            flags = [f for f in cmd[:-1] if f not in per_file["main.cc"]]
            text = _preprocessed(cmd, project.directory)
        else:
            flags, text = cmd[:-1], src.read_bytes() + _headers(src, tswap, mcu)
        where = " ".join(flags).replace(str(project.directory), "<project>")  # same project elsewhere: same key
        key = hashlib.sha256(where.encode() + text).hexdigest()[:20]
        objects.append(build_root() / "app" / f"{src.stem}-{key}.o")
        jobs.append((cmd, objects[-1]))
    _compile_all(jobs, f"{project.prefix} project files")
    link = [tools.gxx, *b.cpu_flags, "--specs=rdimon.specs", "-T", str(mcu / b.linker_script), "-Wl,--gc-sections",
            *map(str, objects), str(lib)]
    key = hashlib.sha256(" ".join(link).encode()).hexdigest()[:20]
    elf = build_root() / "elf" / f"{project.prefix}-{b.name}-{key}.elf"
    if not elf.is_file():
        run_to_file(link, elf, f"linking {project.prefix} for {b.name} failed:")
    return elf


def _preprocessed(cmd: list[str], directory: Path) -> bytes:
    """The compile command's source after the preprocessor, without line markers (so its cache key
    is what gets compiled, wherever the project is)."""
    pre = [c for c in cmd if c != "-c"]
    proc = subprocess.run([*pre[:-1], "-E", "-P", pre[-1]], capture_output=True)
    if proc.returncode != 0:
        raise NativeToolError(f"preprocessing {pre[-1]} failed:\n{proc.stderr.decode(errors='replace')[-4000:]}")
    return proc.stdout.replace(str(directory).encode(), b"<project>")


def _headers(src: Path, tswap: Path, mcu: Path) -> bytes:
    """The contents of the headers `src` may include (part of its object's cache key): those of its
    own directory, the tswap library and the board files; the graph array only its own header."""
    if src.name.endswith("_model_data.cc"):
        return src.with_suffix(".h").read_bytes()
    dirs = dict.fromkeys((src.parent, tswap, mcu))
    return b"".join(h.read_bytes() for d in dirs for h in sorted(d.glob("*.h")))


# --------------------------------------------------------------------------------------------- runs


@dataclass
class McuRun:
    """What the project printed under QEMU, parsed: one entry per inference in the list fields."""

    outputs: list[list[np.ndarray]]  # per inference, one array per model output
    invoke_ticks: list[int]  # SysTick ticks of each Invoke()
    arena_used_bytes: int  # MicroInterpreter::arena_used_bytes() on the board (32-bit)
    flash_bytes_read: int  # image bytes the load operators read over all inferences
    main_ticks: int  # SysTick ticks of the whole main() (setup, image check, all inferences, printing)
    firmware: Path
    stdout: str = field(repr=False, default="")

    @property
    def invoke_instructions(self) -> list[int]:
        """Instructions per Invoke() (ticks x INSTRUCTIONS_PER_TICK, exact to one tick)."""
        return [t * INSTRUCTIONS_PER_TICK for t in self.invoke_ticks]

    @property
    def smallest_arena(self) -> int:
        """arena_used_bytes rounded up to ARENA_ALIGNMENT: the smallest arena that runs on the board,
        unless TFLM's setup temporarily needs more than it keeps (`measure_arena` checks)."""
        return -(-self.arena_used_bytes // ARENA_ALIGNMENT) * ARENA_ALIGNMENT


def run_firmware(elf: Path, image: Path, inputs: bytes | None, board_name: str = DEFAULT_BOARD,
                 timeout: float = 900) -> tuple[int, str]:
    """Run the firmware under QEMU with `image` at the board's image address and `inputs` (raw input
    bytes, back to back) as its input file; returns (exit status, stdout)."""
    b, tools = board(board_name), toolchain()
    if image.stat().st_size > b.image_max:
        raise TflmSwapError(f"{image} is {image.stat().st_size} bytes; {b.name} emulates {b.image_max} "
                            "bytes of external flash")
    with tempfile.TemporaryDirectory(prefix="tswap_mcu_") as tmp:
        argv = [tools.qemu, "-M", b.name, "-semihosting", "-icount", "shift=0", "-nographic", "-monitor", "none",
                "-kernel", str(elf), "-device", f"loader,file={image},addr={b.image_base:#x}"]
        if inputs is not None:
            path = Path(tmp) / "inputs.bin"
            path.write_bytes(inputs)
            argv += ["-append", str(path)]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout,
                                  stdin=subprocess.DEVNULL, cwd=tmp)
        except subprocess.TimeoutExpired as exc:
            raise TflmSwapError(f"{elf.name} did not finish under QEMU within {timeout:.0f} s") from exc
    return proc.returncode, proc.stdout + proc.stderr


def run_project(project, inputs: Sequence[np.ndarray] | None = None, *, board_name: str = DEFAULT_BOARD,
                arena_size: int | None = None, timeout: float = 900, kernels: str = "reference") -> McuRun:
    """Build `project` (a TflmProject or its directory) for the board and run it under QEMU, one
    inference per element of `inputs` (values of input 0; None: one inference on zeros).
    `arena_size` overrides the header's arena; `kernels`: TFLM's "reference" or "cmsis-nn" kernels
    (CMSIS-NN keeps scratch buffers in the arena: measure it with `measure_arena(..., kernels=)`).
    Raises NativeToolError when the toolchain or the archives are missing and TflmSwapError when the
    run fails (the message carries its output)."""
    from .host import io_specs

    files = read_project(getattr(project, "out_dir", project))
    blob = None
    if inputs is not None:
        shape, dtype = io_specs(files.graph, "inputs")[0]
        try:
            blob = b"".join(np.ascontiguousarray(x, dtype=dtype).reshape(shape).tobytes() for x in inputs)
        except ValueError as exc:
            raise TflmSwapError(f"input 0 of {files.directory} has shape {shape}: {exc}") from exc
    elf = build_firmware(files, board_name, arena_size, kernels)
    status, stdout = run_firmware(elf, files.image, blob, board_name, timeout)
    if status != 0 or re.search(r"^(error:|FAULT)", stdout, re.MULTILINE):
        raise TflmSwapError(f"{files.directory} failed on {board_name} (exit status {status}): {stdout[-2000:]}")
    return parse_run(stdout, io_specs(files.graph, "outputs"), elf)


def parse_run(stdout: str, specs, elf: Path) -> McuRun:
    """Parse the example's output: per inference `output N: ...` lines and `invoke_ticks: T`, then
    `arena_used_bytes`, `flash_bytes_read` and (from the startup code) `main_ticks`."""
    outputs: list[list[np.ndarray]] = []
    for line in stdout.splitlines():
        found = re.match(r"output (\d+):(.*)$", line)
        if found is None:
            continue
        n = int(found.group(1))
        if n == 0:
            outputs.append([])
        if not outputs or n != len(outputs[-1]) or n >= len(specs):
            raise TflmSwapError(f"unexpected line in the firmware's output: {line[:200]}")
        shape, dtype = specs[n]
        outputs[-1].append(_values(found.group(2).split(), shape, dtype))
    figures = {}
    for key in ("arena_used_bytes", "flash_bytes_read", "main_ticks"):
        found = re.search(rf"^{key}: (\d+)$", stdout, re.MULTILINE)
        if found is None:
            raise TflmSwapError(f"the firmware printed no {key}: {stdout[-2000:]}")
        figures[key] = int(found.group(1))
    ticks = [int(t) for t in re.findall(r"^invoke_ticks: (\d+)$", stdout, re.MULTILINE)]
    if not outputs or len(ticks) != len(outputs) or any(len(o) != len(specs) for o in outputs):
        raise TflmSwapError(f"the firmware printed {len(outputs)} inferences' outputs and {len(ticks)} "
                            f"timings: {stdout[-2000:]}")
    return McuRun(outputs, ticks, figures["arena_used_bytes"], figures["flash_bytes_read"], figures["main_ticks"],
                  elf, stdout)


def _values(words: list[str], shape, dtype) -> np.ndarray:
    if dtype == np.float32:
        values = np.array([float(w) for w in words], np.float32)
    elif dtype == np.int8:
        values = np.array([int(w) for w in words], np.int8)
    else:
        values = np.frombuffer(bytes(int(w) for w in words), dtype)
    if values.size != int(np.prod(shape, dtype=np.int64)):
        raise TflmSwapError(f"an output has {values.size} values, expected shape {shape}")
    return values.reshape(shape)


def measure_arena(project, board_name: str = DEFAULT_BOARD, start: int | None = None,
                  kernels: str = "reference") -> int:
    """The smallest arena (a multiple of ARENA_ALIGNMENT) the project runs with on the board.

    One inference on zeros with `start` bytes (else the header's; doubled until it runs) gives
    `arena_used_bytes`; rounded up to ARENA_ALIGNMENT that is the answer when it runs, which it does
    for the rewritten MLPerf Tiny models. TFLM's temporary allocations while it sets up can need more
    than it keeps (the stock ad01 model): then the smallest size that runs is searched by bisection
    between the two."""
    align = ARENA_ALIGNMENT
    size = -(-int(start or getattr(project, "arena_size", 0) or 1 << 16) // align) * align
    for _ in range(6):
        used = _try_arena(project, board_name, size, kernels)
        if used is not None:
            break
        size *= 2
    else:
        raise TflmSwapError(f"{getattr(project, 'out_dir', project)}: no arena up to {size} bytes ran on {board_name}")
    low, high = -(-used // align) * align - align, size  # low: does not run (below what TFLM keeps); high runs
    candidate = low + align
    while high - low > align:
        if _try_arena(project, board_name, candidate, kernels) is not None:
            high = candidate
        else:
            low = candidate
        candidate = (low + high) // (2 * align) * align
        candidate = max(candidate, low + align)
    return high


def _try_arena(project, board_name: str, size: int, kernels: str) -> int | None:
    """arena_used_bytes of one inference with a `size`-byte arena; None when the arena is too small."""
    try:
        return run_project(project, None, board_name=board_name, arena_size=size, kernels=kernels).arena_used_bytes
    except NativeToolError:
        raise
    except TflmSwapError as exc:
        if "arena too small" not in str(exc):
            raise
        return None


# ------------------------------------------------------------------------------------- C unit tests


def run_unit_tests(board_name: str = DEFAULT_BOARD) -> tuple[int, str]:
    """The C core's unit tests (delegates/micro/tests/test_tswap_micro.c, with the file flash driver
    on semihosted file I/O) built for the board, strictly (-Wall -Wextra -Werror), and run under
    QEMU; returns (exit status = failures, output)."""
    b, tools, sources = board(board_name), toolchain(), extract_sources()
    root = native_sources()
    srcs = [root / "micro" / "tests" / "test_tswap_micro.c", root / "micro" / "tswap_micro.c",
            root / "common" / "tswap_crc32.c", root / "micro" / "tswap_file_flash.c", root / MCU_DIR / "startup.c"]
    cmd = [*_flags(tools, b, sources, cxx=False), "-Wall", "-Wextra", "-Werror",
           f'-DCMSIS_DEVICE_HEADER="{b.device}.h"',
           f"-I{root / 'micro'}", f"-I{root / 'common'}", f"-I{root / MCU_DIR}", "--specs=rdimon.specs", "-T",
           str(root / MCU_DIR / b.linker_script), "-Wl,--gc-sections", *map(str, srcs)]
    with tempfile.TemporaryDirectory(prefix="tswap_mcu_tests_") as tmp:
        elf = Path(tmp) / "test_tswap_micro.elf"
        proc = subprocess.run([*cmd, "-o", str(elf)], capture_output=True, text=True, errors="replace")
        if proc.returncode != 0:
            raise NativeToolError(f"building the C unit tests for {b.name} failed:\n{proc.stderr[-4000:]}")
        run = subprocess.run([tools.qemu, "-M", b.name, "-semihosting", "-icount", "shift=0", "-nographic",
                              "-monitor", "none", "-kernel", str(elf), "-append", str(Path(tmp) / "scratch.bin")],
                             capture_output=True, text=True, errors="replace", timeout=120,
                             stdin=subprocess.DEVNULL, cwd=tmp)
    return run.returncode, run.stdout + run.stderr
