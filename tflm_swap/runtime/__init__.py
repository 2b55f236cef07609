"""The LiteRT stage runtime: `SwapInterpreter` runs a segmented model within a RAM budget for its
weights, stage by stage (docs/RUNTIME.md).

    interpreter     SwapInterpreter, min_ram_budget
    details         LiteRT's details/signature surface computed from the graph
    paging          futures of loads (paged stages, no-prefetch executor)
    compiled        XNNPACK stages built once, their packed weights paged in and out
    stage_files     stage sub-models exported for a budget (Edge TPU), checked on load
    process_memory  madvise, in-place bytes, glibc heap control, huge-page hints
    crc             CRC32 through the native library

The stock interpreters it drives are made by `tflm_swap.interpreters` (re-exported here).
"""

from ..interpreters import litert_interpreter, resolve_backend, tflm_arena, tflm_interpreter
from .interpreter import SwapInterpreter, min_ram_budget

__all__ = ["SwapInterpreter", "litert_interpreter", "min_ram_budget", "resolve_backend", "tflm_arena",
           "tflm_interpreter"]
