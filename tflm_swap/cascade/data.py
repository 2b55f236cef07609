"""Dataset helpers shared by the CLI, the demo and the benchmarks (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import TflmSwapError


def prepare_images(x: np.ndarray) -> np.ndarray:
    """Images as the default models take them: float32 [N, H, W, C]; uint8 is scaled to [0, 1]
    and a missing channel axis is added. Works for any image size and channel count."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise TflmSwapError(f"expected images [N, H, W] or [N, H, W, C], got shape {x.shape}")
    if x.dtype == np.uint8:
        return (x.astype(np.float32) / 255.0).astype(np.float32)
    return x.astype(np.float32)


def load_npz(path: str | Path, x_key: str = "x", y_key: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) from an .npz holding arrays `x` and `y` (images prepared by `prepare_images`)."""
    path = Path(path)
    if not path.is_file():
        raise TflmSwapError(f"{path}: no such dataset file")
    with np.load(path) as data:
        missing = [k for k in (x_key, y_key) if k not in data]
        if missing:
            raise TflmSwapError(f"{path} lacks arrays {missing} (it has {sorted(data.files)})")
        return prepare_images(data[x_key]), np.asarray(data[y_key]).astype(np.int64).reshape(-1)


def split_by_order(x: np.ndarray, y: np.ndarray, n_test: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): the last `n_test` samples are the test set."""
    if not 0 < n_test < len(x):
        raise TflmSwapError(f"cannot hold out {n_test} of {len(x)} samples for testing")
    return x[:-n_test], y[:-n_test], x[-n_test:], y[-n_test:]
