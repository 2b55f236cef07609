"""File helpers: outputs are written atomically and never over an input."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import TflmSwapError


def write_atomic(path: str | Path, data: bytes, inputs: tuple[str | Path, ...] = ()) -> Path:
    """Write `data` to `path` via a temporary file and rename; refuse to overwrite any of `inputs`."""
    path = Path(path)
    refuse_inputs([path], inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def refuse_inputs(paths: Iterable[str | Path], inputs: tuple[str | Path, ...] = ()) -> None:
    """Raise TflmSwapError if any of `paths` is (the same file as) one of `inputs`; check all
    outputs with it before writing the first, so that a refused write leaves nothing half done."""
    for path in paths:
        for src in inputs:
            if Path(src).exists() and Path(path).exists() and os.path.samefile(src, path):
                raise TflmSwapError(f"refusing to overwrite the input file {src}; choose another output path")
