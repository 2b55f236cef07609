"""Member probabilities from int8 logits, computed so that a C implementation gives the same bits.

A softmax over dequantized logits calls `exp` at run time, whose last bit differs between numpy's
SIMD code, glibc and an MCU's libm. For an int8 output with scale s, `exp(z_i - max z)` is
`exp(-(max q - q_i) * s)`: one of 256 values per member. `exp_table(s)` computes them once (the
generated C code carries the same table as hex floats), and `int8_softmax` sums them in order and
divides, double precision: the C cascade (`delegates/micro/tswap_cascade.cc`) does the same.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

EXP_TABLE_SIZE = 256


@lru_cache(maxsize=64)
def _table(scale: float) -> np.ndarray:
    table = np.exp(-scale * np.arange(EXP_TABLE_SIZE, dtype=np.float64))
    table.flags.writeable = False
    return table


def exp_table(scale: float) -> np.ndarray:
    """exp(-k * scale) for k = 0..255 (float64, read-only)."""
    return _table(float(scale))


def int8_softmax(q: np.ndarray, scale: float) -> np.ndarray:
    """Softmax (float64) of int8 logits `q` whose quantization scale is `scale`."""
    q = np.asarray(q).reshape(-1).astype(np.int64)
    e = exp_table(scale)[q.max() - q]
    total = 0.0
    for v in e:  # in order, as the C code sums (numpy's sum is pairwise)
        total += float(v)
    return e / total


def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax (float64) of real-valued logits (float members)."""
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    e = np.exp(z - z.max())
    return e / e.sum()


def probabilities(y: np.ndarray, detail: dict) -> np.ndarray:
    """A member's output tensor `y` (with its details: dtype, quantization) as probabilities."""
    if np.dtype(detail["dtype"]) == np.int8:
        return int8_softmax(y, detail["quantization"][0])
    from ..interpreters import dequantize_output

    return softmax(dequantize_output(y, detail))
