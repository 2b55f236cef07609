"""The delegate's `load_delegate` options, loading it, and reading its counters."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DelegateError
from ..native import delegate_library
from .rounding import detect_rounding, rounding_option
from .tile_table import DEFAULT_TILE_BYTES, build_tile_table

SUPPORTED_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")


@dataclass(frozen=True)
class DelegateStats:
    """Counters kept by a live delegate (see `delegate_stats`)."""

    claimed_nodes: int
    node_invocations: int
    tiles_read: int
    bytes_read: int
    wait_seconds: float  # time the interpreter thread waited for tiles
    slot_bytes: int  # size of each tile buffer
    slots: int  # 2 with prefetch, 1 without
    mapped_bytes: int = 0  # encoded (TFLM_DECODE) bytes decoded from the mapped graph, not read from segments

    @property
    def buffer_bytes(self) -> int:
        """Bytes of tile buffers the delegate holds (the weight memory it needs)."""
        return self.slot_bytes * self.slots


def delegate_options(
    model_path: str | Path,
    *,
    tile_bytes: int = DEFAULT_TILE_BYTES,
    prefetch: bool = True,
    ops: Iterable[str] = SUPPORTED_OPS,
    min_weight_bytes: int = 0,
    table_path: str | Path | None = None,
    rounding: str | dict[str, str] = "auto",
) -> dict[str, str]:
    """Build (or reuse) the tile table and return the `load_delegate` options for `model_path`.

    `tile_bytes`: bytes per streamed tile (two tiles are resident with prefetch); `prefetch`: read the
    next tile in a background thread; `ops`: operator types to claim; `min_weight_bytes`: leave
    operators with smaller weights to the interpreter; `rounding`: how int8 results are requantised to
    match the runtime's kernels, 'single', 'double', a dict per operator, or 'auto' = `detect_rounding()`
    (the installed LiteRT's reference kernels).
    """
    rounding = rounding_option(detect_rounding() if rounding == "auto" else rounding)
    ops = [str(op).upper() for op in ops]
    unknown = sorted(set(ops) - set(SUPPORTED_OPS))
    if unknown or not ops:
        raise DelegateError(f"ops={ops!r}: choose one or more of {', '.join(SUPPORTED_OPS)}")
    if isinstance(min_weight_bytes, bool) or not isinstance(min_weight_bytes, int) or min_weight_bytes < 0:
        raise DelegateError(f"min_weight_bytes={min_weight_bytes!r} must be a non-negative integer")
    model_path = Path(model_path).resolve()
    if not model_path.is_file():
        raise DelegateError(f"weights file {model_path} does not exist")
    table = build_tile_table(model_path, tile_bytes, table_path)
    return {
        "weights": str(model_path),
        "table": str(Path(table).resolve()),
        "tile_bytes": str(tile_bytes),
        "prefetch": "true" if prefetch else "false",
        "ops": ",".join(ops),
        "min_weight_bytes": str(min_weight_bytes),
        "rounding": rounding,
    }


def load_delegate(model_path: str | Path, backend: str = "ai_edge_litert", **options):
    """`load_delegate(delegate_library(), delegate_options(model_path, **options))` of `backend`."""
    if backend == "ai_edge_litert":
        from ai_edge_litert.interpreter import load_delegate as load
    elif backend == "tflite_runtime":
        from tflite_runtime.interpreter import load_delegate as load
    else:
        raise DelegateError(f"backend={backend!r}: use 'ai_edge_litert' or 'tflite_runtime'")
    return load(delegate_library(), delegate_options(model_path, **options))


def delegate_stats(delegate) -> DelegateStats:
    """Counters of a delegate returned by `load_delegate` (claimed nodes, tiles and bytes read, ...)."""
    lib = ctypes.CDLL(delegate_library())
    fn = lib.tflm_swap_delegate_stats
    fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64), ctypes.c_int]
    fn.restype = ctypes.c_int
    out = (ctypes.c_uint64 * 8)()
    if fn(delegate._get_native_delegate_pointer(), out, 8) != 8:
        raise DelegateError("not a tflm_swap delegate")
    v = list(out)
    return DelegateStats(v[0], v[1], v[2], v[3], v[4] / 1e9, v[5], v[6], v[7])
