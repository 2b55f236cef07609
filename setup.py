"""Build the package's C library, tflm_swap._native, together with the Python package.

One shared library holds the LiteRT delegate (delegates/litert, loaded with ``load_delegate``) and
the native helpers of the LiteRT stage runtime (delegates/runtime: fast CRC32, the pager; called
through ctypes). It is built as a setuptools extension so that ``pip install``, ``pip install -e``
and wheel builds compile it with no extra step. The delegate declares the TFLite C ABI itself
(delegates/litert/tswap_tflite_abi.h), so the build needs only a C compiler. Metadata lives in
setup.cfg.
"""

from setuptools import Extension, setup

NATIVE_SOURCES = [
    "delegates/litert/tswap_decode.c",
    "delegates/litert/tswap_delegate.c",
    "delegates/litert/tswap_geometry.c",
    "delegates/litert/tswap_options.c",
    "delegates/litert/tswap_kernels.c",
    "delegates/litert/tswap_reader.c",
    "delegates/litert/tswap_table.c",
    "delegates/runtime/tswap_crc32_fast.c",
    "delegates/runtime/tswap_pager.c",
    "delegates/common/tswap_crc32.c",
]

native = Extension(
    "tflm_swap._native",
    sources=NATIVE_SOURCES,
    depends=["delegates/litert/tswap_tflite_abi.h", "delegates/litert/tswap_decode.h",
             "delegates/litert/tswap_delegate.h",
             "delegates/litert/tswap_geometry.h", "delegates/litert/tswap_options.h",
             "delegates/litert/tswap_kernels.h", "delegates/litert/tswap_reader.h",
             "delegates/litert/tswap_table.h", "delegates/runtime/tswap_crc32_fast.h",
             "delegates/common/tswap_crc32.h"],
    # -ffp-contract=off: no fused multiply-add, so float sums round exactly like TFLite's kernels
    extra_compile_args=["-std=c11", "-O3", "-ffp-contract=off", "-fno-fast-math", "-fvisibility=hidden",
                        "-pthread"],
    extra_link_args=["-pthread"],
    libraries=["m"],
)

setup(ext_modules=[native])
