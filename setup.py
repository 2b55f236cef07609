"""Build the native LiteRT delegate (delegates/litert) together with the Python package.

The delegate is a plain C shared library loaded with ``load_delegate``; it is built as a
setuptools extension so that ``pip install``, ``pip install -e`` and wheel builds compile it with
no extra step. It declares the TFLite C ABI itself (delegates/litert/tswap_tflite_abi.h), so the
build needs only a C compiler. Metadata lives in setup.cfg.
"""

from setuptools import Extension, setup

DELEGATE_SOURCES = [
    "delegates/litert/tswap_delegate.c",
    "delegates/litert/tswap_kernels.c",
    "delegates/litert/tswap_reader.c",
    "delegates/litert/tswap_table.c",
    "delegates/litert/tswap_crc32_fast.c",
    "delegates/litert/tswap_pager.c",
    "delegates/common/tswap_crc32.c",
]

delegate = Extension(
    "tflm_swap._litert_delegate",
    sources=DELEGATE_SOURCES,
    depends=["delegates/litert/tswap_tflite_abi.h", "delegates/litert/tswap_kernels.h",
             "delegates/litert/tswap_reader.h", "delegates/litert/tswap_table.h", "delegates/litert/tswap_crc32_fast.h",
             "delegates/common/tswap_crc32.h"],
    # -ffp-contract=off: no fused multiply-add, so float sums round exactly like TFLite's kernels
    extra_compile_args=["-std=c11", "-O3", "-ffp-contract=off", "-fno-fast-math", "-fvisibility=hidden",
                        "-pthread"],
    extra_link_args=["-pthread"],
    libraries=["m"],
)

setup(ext_modules=[delegate])
