"""The TFLite flatbuffer schema bindings, taken from whichever runtime package is installed.

LiteRT (`ai_edge_litert`), TFLite Micro (`tflite_micro`) and TensorFlow each ship the generated
object-API bindings of the same schema; we never vendor our own copy.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_CANDIDATES = (
    "ai_edge_litert.schema_py_generated",
    "tflite_micro.tensorflow.lite.micro.python.schema_py_generated",
    "tensorflow.lite.python.schema_py_generated",
)


def _load() -> ModuleType:
    errors = []
    for name in _CANDIDATES:
        try:
            return importlib.import_module(name)
        except ImportError as exc:  # try the next provider
            errors.append(f"{name}: {exc}")
    raise ImportError(
        "No TFLite schema bindings found; install ai-edge-litert (pip install ai-edge-litert). Tried: "
        + "; ".join(errors)
    )


tfl = _load()
FILE_IDENTIFIER = b"TFL3"

BUILTIN_NAMES: dict[int, str] = {
    value: name for name, value in vars(tfl.BuiltinOperator).items() if not name.startswith("_")
}
TENSOR_TYPE_NAMES: dict[int, str] = {
    value: name for name, value in vars(tfl.TensorType).items() if not name.startswith("_")
}


def text(value: bytes | str | None) -> str:
    """A flatbuffer string as `str` (the object API gives bytes; None is ""; bad UTF-8 replaced)."""
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
