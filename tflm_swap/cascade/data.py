"""Dataset helpers shared by the CLI, the demo and the benchmarks (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import TflmSwapError
from ..fileio import read_npy, read_npz
from .bundle import MAX_CLASSES


def prepare_images(x: np.ndarray) -> np.ndarray:
    """Images as the default models take them: float32 [N, H, W, C]; uint8 is scaled to [0, 1]
    and a missing channel axis is added. Works for any image size and channel count."""
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.issubdtype(x.dtype, np.complexfloating):
        raise TflmSwapError(f"expected numeric images, got an array of {x.dtype}")
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
    data = read_npz(path, (x_key, y_key))
    try:
        x, y = prepare_images(data[x_key]), check_labels(data[y_key])
    except TflmSwapError as exc:
        raise TflmSwapError(f"{path}: {exc}") from exc
    if len(x) != len(y):
        raise TflmSwapError(f"{path}: {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise TflmSwapError(f"{path}: holds no samples")
    return x, y


def load_images(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, labels or None) from an .npy of images or an .npz with `x` (and optionally `y`)."""
    path = Path(path)
    if path.suffix == ".npy":
        arrays = {"x": read_npy(path)}
    else:
        arrays = read_npz(path, ("x",))
    try:
        x = prepare_images(arrays["x"])
        y = check_labels(arrays["y"]) if "y" in arrays else None
    except TflmSwapError as exc:
        raise TflmSwapError(f"{path}: {exc}") from exc
    if y is not None and len(y) != len(x):
        raise TflmSwapError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y


def check_labels(y: np.ndarray, n_classes: int = MAX_CLASSES) -> np.ndarray:
    """Labels as int64 [N]; TflmSwapError unless they are whole numbers in 0..n_classes-1."""
    y = np.asarray(y).reshape(-1)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == np.bool_):
        raise TflmSwapError(f"labels must be integers, got an array of {y.dtype}")
    as_float = y.astype(np.float64)
    if not np.all(np.isfinite(as_float)) or np.any(as_float % 1 != 0):
        raise TflmSwapError("labels must be whole numbers")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise TflmSwapError(f"labels must be class ids in 0..{n_classes - 1}, found {int(y.min())}..{int(y.max())}")
    return y.astype(np.int64)


def split_by_order(x: np.ndarray, y: np.ndarray, n_test: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): the last `n_test` samples are the test set."""
    if not 0 < n_test < len(x):
        raise TflmSwapError(f"cannot hold out {n_test} of {len(x)} samples for testing")
    return x[:-n_test], y[:-n_test], x[-n_test:], y[-n_test:]
