"""The C core of the TFLM target on the host: unit tests (ASan/UBSan) and a brief libFuzzer run."""

from __future__ import annotations

import os
import subprocess
import zlib

import numpy as np
import pytest

from tflm_swap.converters.flash_image import build_container
from tflm_swap.errors import SegmentIntegrityError, TflmSwapError
from tflm_swap.format import palette
from tflm_swap.format.flash_image import TileEntry, parse_container
from tflm_swap.micro import build_image, parse_image
from tflm_swap.micro.toolchain import NativeToolError, build_fuzzer, build_unit_tests

pytestmark = pytest.mark.native  # builds or runs native code: left out of `-m "not native"`


def native_or_skip(builder):
    """Build a native binary; skip when a tool is missing, except under CI (then fail)."""
    try:
        return builder()
    except NativeToolError as exc:
        if os.environ.get("CI") or os.environ.get("TFLM_SWAP_REQUIRE_SHARED", "") not in ("", "0"):
            pytest.fail(f"native toolchain required in CI: {exc}")
        pytest.skip(str(exc))


def test_c_core_unit_tests_pass_under_sanitizers(tmp_path):
    binary = native_or_skip(build_unit_tests)
    proc = subprocess.run([str(binary), str(tmp_path / "image.bin")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok: 0 failure(s)" in proc.stdout


def test_fuzz_image_reader_briefly(tmp_path):
    binary = native_or_skip(build_fuzzer)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    image, _ = build_image([bytes(range(40)), b"\x07" * 7, bytes(300)])
    (corpus / "valid").write_bytes(image)
    (corpus / "empty_table").write_bytes(build_image([])[0])
    values = np.resize(np.arange(-3, 3, dtype=np.int8), 200)  # 4 channels of 50: one table per channel
    (corpus / "palette").write_bytes(build_image([palette.encode(values, 4, 50), bytes(40)], alignment=4)[0])
    (corpus / "tiled").write_bytes(build_image([bytes(range(40)), b"\x07" * 7, bytes(30)],
                                               tiles=[TileEntry(0, 2, 7, 4), TileEntry(2, 1, 3, 3)])[0])
    (corpus / "container").write_bytes(build_container([("router", image, b"graph"),
                                                        ("specialist_0", build_image([b"\x05" * 20])[0], b"g2")])[0])
    # The target allocates nothing; libFuzzer's corpus and ASan's quarantine make the process RSS.
    # Bounding input length and quarantine keeps that well under the limit on a loaded machine.
    env = {**os.environ, "ASAN_OPTIONS": "quarantine_size_mb=32:malloc_context_size=5"}
    proc = subprocess.run([str(binary), "-max_total_time=20", "-timeout=5", "-max_len=4096",
                           "-rss_limit_mb=2048", str(corpus)],
                          capture_output=True, text=True, errors="replace", timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done" in proc.stderr


def test_python_image_round_trip_and_rejections():
    payloads = [b"a" * 33, b"", b"\x01\x02\x03"]
    image, table = build_image(payloads, alignment=64)
    assert [s.size for s in parse_image(image)] == [33, 0, 3]
    assert all(s.offset % 64 == 0 for s in table)
    assert all(zlib.crc32(image[s.offset : s.offset + s.size]) == s.crc32 for s in table)
    with pytest.raises(SegmentIntegrityError, match="shorter than"):
        parse_image(image[:10])
    with pytest.raises(SegmentIntegrityError, match="truncated"):
        parse_image(image[:-1])
    flipped = bytearray(image)
    flipped[table[0].offset] ^= 1
    with pytest.raises(SegmentIntegrityError, match="segment 0 fails its CRC32"):
        parse_image(bytes(flipped))
    flipped = bytearray(image)
    flipped[40] ^= 1
    with pytest.raises(SegmentIntegrityError, match="table CRC"):
        parse_image(bytes(flipped))
    with pytest.raises(SegmentIntegrityError, match="magic"):
        parse_image(b"XXXX" + image[4:])


def test_c_core_compiles_freestanding_for_cortex_m4(tmp_path):
    """The core builds for a 32-bit MCU (Cortex-M4, freestanding) with -Wconversion -Werror and
    needs no data or bss; string.h is declared by a shim since no ARM libc is installed here."""
    from tflm_swap.micro.toolchain import compiler, native_sources

    clang = native_or_skip(lambda: compiler("clang"))
    (tmp_path / "string.h").write_text("#include <stddef.h>\nvoid* memcpy(void*, const void*, size_t);\n"
                                       "void* memset(void*, int, size_t);\n"
                                       "int memcmp(const void*, const void*, size_t);\n")
    root = native_sources()
    for src in (root / "micro" / "tswap_micro.c", root / "common" / "tswap_crc32.c"):
        obj = tmp_path / (src.stem + ".o")
        proc = subprocess.run([clang, "--target=thumbv7em-none-eabi", "-mcpu=cortex-m4", "-ffreestanding",
                               "-std=c99", "-Os", "-Wall", "-Wextra", "-Wconversion", "-Wcast-align", "-Werror",
                               "-pedantic", "-isystem", str(tmp_path), f"-I{root / 'micro'}",
                               f"-I{root / 'common'}", "-c", str(src), "-o", str(obj)],
                              capture_output=True, text=True, errors="replace")
        assert proc.returncode == 0, proc.stderr
        assert obj.stat().st_size > 0


def test_python_container_round_trip_and_rejections():
    one, _ = build_image([b"a" * 33, b"\x01\x02\x03"])
    two, _ = build_image([bytes(range(100))], tiles=[TileEntry(0, 1, 4, 4)])
    image, table = build_container([("router", one, b"graph one"), ("specialist_1", two, b"graph two")], alignment=64)
    assert parse_container(image) == table
    assert [(m.name, m.size, m.graph_size) for m in table] == [("router", len(one), 9), ("specialist_1", len(two), 9)]
    assert all(m.offset % 64 == 0 and image[m.offset : m.offset + m.size] == data
               for m, data in zip(table, (one, two)))
    assert table[0].graph_crc32 == zlib.crc32(b"graph one")
    with pytest.raises(SegmentIntegrityError, match="parse_container"):
        parse_image(image)
    with pytest.raises(SegmentIntegrityError, match="not a tflm_swap cascade container"):
        parse_container(one)
    bad = bytearray(image)
    bad[table[1].offset + table[1].size - 1] ^= 1  # the last byte of member 1's only segment
    with pytest.raises(SegmentIntegrityError, match=r"member 1 \(specialist_1\): segment 0 fails its CRC32"):
        parse_container(bytes(bad))
    bad = bytearray(image)
    bad[48 + 32 + 16] = ord("-")  # a name character outside [A-Za-z0-9_]
    with pytest.raises(SegmentIntegrityError, match="CRC mismatch"):  # the table CRC catches it first
        parse_container(bytes(bad))
    with pytest.raises(SegmentIntegrityError, match="shorter than"):
        parse_container(image[:20])
    with pytest.raises(SegmentIntegrityError, match="inconsistent"):
        parse_container(image[:-1])
    for names in (["router", "router"], ["a-b", "c"], ["x" * 16, "y"]):
        with pytest.raises(TflmSwapError, match="unique"):
            build_container([(n, one, b"") for n in names])
