"""The LiteRT weight-streaming delegate: where its library is, and the options it needs.

The delegate (C, `delegates/litert/`, built by `pip install`) claims FULLY_CONNECTED, CONV_2D and
DEPTHWISE_CONV_2D nodes whose weights sit in the segments of a tflm_swap model and streams those
weights from the file in CRC-checked tiles, double-buffered, so that peak weight memory is about two
tiles. Typical use::

    from ai_edge_litert.interpreter import Interpreter, load_delegate
    import tflm_swap

    options = tflm_swap.delegate_options("model.tflite", tile_bytes=1 << 20)   # writes model.tflite.tiles
    delegate = load_delegate(tflm_swap.delegate_library(), options)
    interpreter = Interpreter(model_path="model.tflite", experimental_delegates=[delegate])

A filter decoded by upstream TFLite Micro's TFLM_DECODE operator (the DECODE layout) is claimed with
that operator and decoded tile by tile, so it never exists whole.

`delegate_options` writes the *tile table* (docs/DELEGATE.md): for every segment-resident tensor its
file offset and size and the CRC32 of each tile. It reads the file once and checks every segment
against the manifest's CRC32 first, so a table is only ever built from intact weights.
"""

from ..errors import DelegateError
from ..native import delegate_library, native_library
from .options import SUPPORTED_OPS, DelegateStats, delegate_options, delegate_stats, load_delegate
from .rounding import ROUNDINGS, detect_rounding, rounding_option
from .tile_table import (
    DEFAULT_TILE_BYTES,
    MAX_TILE_BYTES,
    MIN_TILE_BYTES,
    TABLE_SUFFIX,
    TileRecord,
    build_tile_table,
    default_table_path,
    read_tile_table,
)

__all__ = [
    "DEFAULT_TILE_BYTES", "MAX_TILE_BYTES", "MIN_TILE_BYTES", "ROUNDINGS", "SUPPORTED_OPS", "TABLE_SUFFIX",
    "DelegateError", "DelegateStats", "TileRecord", "build_tile_table", "default_table_path",
    "delegate_library", "delegate_options", "delegate_stats", "detect_rounding", "load_delegate",
    "native_library", "read_tile_table", "rounding_option",
]
