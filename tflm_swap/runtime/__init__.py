"""Runtimes: the interpreters tflm_swap drives (LiteRT, TFLite Micro)."""

from .backends import litert_interpreter, resolve_backend, tflm_arena, tflm_interpreter
from .swap import SwapInterpreter, min_ram_budget

__all__ = ["SwapInterpreter", "litert_interpreter", "min_ram_budget", "resolve_backend", "tflm_arena",
           "tflm_interpreter"]
