"""Build a generated project with its own CMakeLists.txt, as a user would, for the host or a board.

    cmake_arguments(project, board)   the -D options naming TFLM (built from the pinned sources) and,
                                      for a Cortex-M board, the toolchain file and our board files
    build_with_cmake(project, board)  configure and build; returns the example executable / ELF

The project's CMakeLists.txt takes TFLM as a prebuilt library (TFLM_LIBRARY, TFLM_INCLUDE_DIRS,
TFLM_DEFINITIONS) and the board as sources, definitions and link options (docs/TFLM.md). Here TFLM is
the library `mcu.tflm_library` builds from ../shared/vendor for the same board, so the CMake build
is checked against the Makefile-free build `mcu.run_project` uses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from . import mcu
from .codegen import TOOLCHAIN_FILE
from .toolchain import NativeToolError, native_sources


def cmake_arguments(project: str | Path, board_name: str = mcu.HOST_BOARD.name) -> list[str]:
    """`cmake -S project` options building it for `board_name` ("host", or a board of `mcu.BOARDS`)."""
    files = mcu.read_project(Path(project))
    b, sources = mcu.build_target(board_name), mcu.extract_sources()
    library = mcu.tflm_library(files.resolver_methods(), board_name)
    args = [f"-DTFLM_LIBRARY={library}", f"-DTFLM_INCLUDE_DIRS={_list(sources.include_dirs(b.device))}",
            f"-DTFLM_DEFINITIONS={_list(mcu.TFLM_DEFINES)}", "-DCMAKE_BUILD_TYPE=Release"]
    if b is mcu.HOST_BOARD:
        return args
    board_dir = native_sources() / mcu.MCU_DIR
    definitions = ["TSWAP_SEMIHOSTING", f'CMSIS_DEVICE_HEADER="{b.device}.h"',
                   f"TSWAP_MCU_IMAGE_BASE={b.image_base:#x}u", f"TSWAP_MCU_IMAGE_SIZE={b.image_max}u",
                   *(["TSWAP_MCU_DEFERRED_FLASH"] if files.prefetch else [])]
    return [*args, f"-DCMAKE_TOOLCHAIN_FILE={Path(project) / TOOLCHAIN_FILE}",
            f"-DTSWAP_CPU_FLAGS={' '.join(b.cpu_flags)}", "-DTSWAP_BOARD_FLASH=ON",
            f"-DTSWAP_BOARD_SOURCES={_list(board_dir / f for f in ('startup.c', 'board_flash.c', 'micro_time.cc'))}",
            f"-DTSWAP_BOARD_INCLUDE_DIRS={board_dir}", f"-DTSWAP_BOARD_DEFINITIONS={_list(definitions)}",
            f"-DTSWAP_BOARD_LINK_OPTIONS={_list(['--specs=rdimon.specs', '-T', board_dir / b.linker_script])}"]


def build_with_cmake(project: str | Path, build_dir: str | Path, board_name: str = mcu.HOST_BOARD.name) -> Path:
    """Configure and build `project` in `build_dir` with CMake; returns `{prefix}_example`. Raises
    NativeToolError with CMake's output when a step fails."""
    tool = shutil.which("cmake")
    if tool is None:
        raise NativeToolError("cmake not found on PATH (Debian: apt-get install cmake)")
    files, build = mcu.read_project(Path(project)), Path(build_dir)
    _run([tool, "-S", str(files.directory), "-B", str(build), *cmake_arguments(project, board_name)], "configuring")
    _run([tool, "--build", str(build), "--parallel", str(os.cpu_count() or 1)], "building")
    exe = build / f"{files.prefix}_example"
    if not exe.is_file():
        raise NativeToolError(f"building {files.directory} with CMake made no {exe.name}")
    return exe


def _list(items) -> str:
    return ";".join(str(i) for i in items)


def _run(command: list[str], step: str) -> None:
    proc = subprocess.run(command, capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        raise NativeToolError(f"{step} with CMake failed: {' '.join(command[:4])} ...\n"
                              f"{(proc.stdout + proc.stderr)[-3000:]}")
