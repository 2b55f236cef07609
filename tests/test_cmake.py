"""The generated project's build files: CMakeLists.txt (host and Cortex-M), the ESP-IDF component.

The CMake builds use TFLM built from the pinned sources in ../shared/vendor for the same target
(`tflm_swap.micro.cmake`); their executables must print what the host TFLM and the QEMU run of the
Makefile-free build print, bit for bit.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import require_model

from tflm_swap.micro import export_project, run_host_tflm
from tflm_swap.micro.host import io_specs

pytestmark = pytest.mark.native

N_INPUTS = 3


def _inputs(graph: bytes) -> list[np.ndarray]:
    (shape, dtype), = io_specs(graph, "inputs")
    rng = np.random.default_rng(7)
    return [rng.integers(-128, 128, size=shape).astype(dtype) for _ in range(N_INPUTS)]


def _outputs(stdout: str, graph: bytes) -> list[np.ndarray]:
    (shape, dtype), = io_specs(graph, "outputs")
    lines = re.findall(r"^output 0:(.*)$", stdout, re.MULTILINE)
    return [np.array([int(v) for v in line.split()], dtype).reshape(shape) for line in lines]


@pytest.fixture(scope="module")
def ad01_project(tmp_path_factory):
    path = require_model("ad01_int8")
    return path.read_bytes(), export_project(path, tmp_path_factory.mktemp("ad01") / "proj", arena_board=None)


def test_project_carries_cmake_and_esp_idf_files(ad01_project):
    _, project = ad01_project
    cmake = (project.out_dir / "CMakeLists.txt").read_text()
    assert "add_library(ad01_int8_tswap STATIC" in cmake and "add_executable(ad01_int8_example main.cc" in cmake
    assert "idf_component_register(SRCS ${TSWAP_SOURCES}" in cmake and "ad01_int8_model_data.cc" in cmake
    assert "espressif/esp-tflite-micro" in (project.out_dir / "idf_component.yml").read_text()
    assert "arm-none-eabi-g++" in (project.out_dir / "cmake" / "arm-none-eabi.cmake").read_text()


def test_cmake_without_tflm_names_what_to_set(ad01_project, tmp_path):
    tool = shutil.which("cmake")
    if tool is None:
        pytest.skip("cmake is not installed")
    _, project = ad01_project
    proc = subprocess.run([tool, "-S", str(project.out_dir), "-B", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "set TFLM_LIBRARY and TFLM_INCLUDE_DIRS" in proc.stderr


def test_cmake_host_build_matches_host_tflm(mcu, ad01_project, tmp_path):
    from tflm_swap.micro.cmake import build_with_cmake

    graph, project = ad01_project
    inputs = _inputs(graph)
    exe = build_with_cmake(project.out_dir, tmp_path / "build")
    (tmp_path / "in.bin").write_bytes(b"".join(x.tobytes() for x in inputs))
    proc = subprocess.run([str(exe), str(project.image_path), str(tmp_path / "in.bin")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    host = run_host_tflm(graph, None, [[x] for x in inputs])
    got = _outputs(proc.stdout, graph)
    assert len(got) == N_INPUTS and all(np.array_equal(a, b[0]) for a, b in zip(got, host.outputs))


@pytest.mark.parametrize("prefetch", [False, True], ids=["blocking", "prefetch"])
def test_cmake_cortex_m_build_runs_under_qemu_bit_exact(mcu, tmp_path, prefetch):
    from tflm_swap.micro.cmake import build_with_cmake

    path = require_model("kws_ref_model")
    graph = path.read_bytes()
    project = export_project(path, tmp_path / "proj", prefetch=prefetch, arena_board=None)
    inputs = _inputs(graph)
    elf = build_with_cmake(project.out_dir, tmp_path / "build", "mps2-an386")
    status, stdout = mcu.run_firmware(elf, project.image_path, b"".join(x.tobytes() for x in inputs))
    assert status == 0, stdout[-2000:]
    run = mcu.parse_run(stdout, io_specs(project.micro.graph, "outputs"), elf)
    host = run_host_tflm(graph, None, [[x] for x in inputs])
    assert len(run.outputs) == N_INPUTS
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(run.outputs, host.outputs))
    assert run.flash_bytes_read == N_INPUTS * project.flash_bytes_per_inference
