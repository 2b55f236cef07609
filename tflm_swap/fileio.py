"""File helpers: outputs are planned before anything is written, written atomically, never over an
input or over one another, and honour the umask.

- `plan_outputs(outputs, inputs)`: refuse (before the first byte is written) any output that is the
  same file as an input or as another output, or that is an existing directory.
- `write_atomic(path, data, inputs)`: one file, via a temporary sibling file renamed into place.
- `write_files({path: data}, inputs)`: several files in different places: every temporary file is
  written first, then all are renamed; on failure no temporary file is left.
- `staged_directory(target, inputs)`: a multi-file output (a project or stage directory) is written
  into a temporary sibling directory and moved into place whole, or not at all.

Temporary names start with a dot and end in `.tmp`; they are removed when a write fails or is
interrupted (KeyboardInterrupt included). Only a killed process can leave one behind.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .errors import TflmSwapError

PathLike = str | os.PathLike
_FILE_MODE = 0o666  # before the umask, as open() creates files
_DIR_MODE = 0o777


class OutputError(TflmSwapError):
    """An output path is unusable: an input, another output, or a directory where a file goes."""


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether `a` and `b` name the same file: the same inode when both exist, else the same
    resolved path (symbolic links and `..` followed)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def plan_outputs(outputs: Iterable[PathLike | None], inputs: Iterable[PathLike | None] = ()) -> list[Path]:
    """Check file outputs before anything is written; return them as Paths (None entries dropped).

    Raises OutputError when an output is the same file as one of `inputs` or as an earlier output,
    or is an existing directory."""
    outs = [Path(o) for o in outputs if o is not None]
    ins = [Path(i) for i in inputs if i is not None]
    for n, out in enumerate(outs):
        for src in ins:
            if same_file(out, src):
                raise OutputError(f"{out}: refusing to overwrite the input file {src}; choose another output path")
        for other in outs[:n]:
            if same_file(out, other):
                raise OutputError(f"{out}: the same file is given for two outputs; choose different paths")
        if out.is_dir():
            raise OutputError(f"{out}: is a directory; give a file path for this output")
    return outs


def refuse_inputs(paths: Iterable[PathLike], inputs: tuple[PathLike, ...] = ()) -> None:
    """Raise OutputError if any of `paths` is (the same file as) one of `inputs` or repeats another;
    check all outputs with it before writing the first, so that a refused write leaves nothing half done."""
    plan_outputs(paths, inputs)


def write_atomic(path: PathLike, data: bytes, inputs: tuple[PathLike, ...] = ()) -> Path:
    """Write `data` to `path` via a temporary file and rename; refuse to overwrite any of `inputs`."""
    (path,) = plan_outputs([path], inputs)
    created = _make_parents(path)
    tmp = None
    try:
        tmp = _write_temp(path, data)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        _remove_dirs(created)
        raise
    return path


def write_files(files: Mapping[PathLike, bytes], inputs: Iterable[PathLike | None] = ()) -> list[Path]:
    """Write several files (e.g. a split graph and image) all or none: check every destination,
    write every temporary file, then rename them all; temporary files are removed on failure."""
    paths = plan_outputs(files, inputs)
    temps: list[tuple[Path, Path]] = []
    created: list[Path] = []
    try:
        for path, data in zip(paths, files.values()):
            created += _make_parents(path)
            temps.append((_write_temp(path, data), path))
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        _remove_dirs(created)
        raise
    return paths


@contextmanager
def staged_directory(target: PathLike, inputs: Iterable[PathLike | None] = ()) -> Iterator[Path]:
    """Yield a temporary sibling directory of `target` to write a multi-file output into; on success
    its files are moved into `target` (the whole directory renamed into place when `target` does not
    exist; else file by file, undone if a move fails), on failure it is removed and `target` is left
    as it was. Files in `target` that the output does not write are kept. No file is moved over one
    of `inputs` (checked before anything in `target` changes)."""
    target = Path(target)
    inputs = [i for i in inputs if i is not None]
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target}: exists and is not a directory; this output is a directory")
    for src in inputs:
        if same_file(target, src):
            raise OutputError(f"{target}: refusing to overwrite the input {src}; choose another output directory")
    created = _make_parents(target)
    stage = None
    try:
        stage = _temp_dir(target)
        try:
            yield stage
        except OSError as exc:  # e.g. a full disk: name the output
            if exc.filename is None:
                raise type(exc)(exc.errno, exc.strerror or str(exc), str(target)) from exc
            raise
        _commit_directory(stage, target, inputs)
    except BaseException:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        _remove_dirs(created)
        raise
    shutil.rmtree(stage, ignore_errors=True)  # emptied by the commit (renamed away when `target` was new)


# -------------------------------------------------------------------------------------- internals
def _make_parents(path: Path) -> list[Path]:
    """Create the missing parent directories of `path` (mode 0777 less the umask); return those
    created, outermost first, so that a failed write can remove them again."""
    missing = []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    created = []
    for d in reversed(missing):
        try:
            os.mkdir(d, _DIR_MODE)
        except FileExistsError:
            continue
        created.append(d)
    return created


def _remove_dirs(created: list[Path]) -> None:
    """Remove directories `_make_parents` created (innermost first), where they are still empty."""
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            pass


def _temp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"


def _write_temp(path: Path, data: bytes) -> Path:
    """Write `data` to a new temporary sibling of `path` (mode 0666 less the umask), synced."""
    while True:
        tmp = _temp_name(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), _FILE_MODE)
        except FileExistsError:
            continue
        break
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # e.g. a full disk: name the output
            raise type(exc)(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    return tmp


def _temp_dir(path: Path) -> Path:
    """A new empty temporary sibling directory of `path` (mode 0777 less the umask)."""
    while True:
        tmp = _temp_name(path)
        try:
            os.mkdir(tmp, _DIR_MODE)
        except FileExistsError:
            continue
        return tmp


def _staged_files(stage: Path) -> list[Path]:
    """Files under `stage`, relative to it, sorted."""
    return sorted(p.relative_to(stage) for p in stage.rglob("*") if not p.is_dir())


def _commit_directory(stage: Path, target: Path, inputs: list[PathLike]) -> None:
    files = _staged_files(stage)
    plan_outputs([target / rel for rel in files], inputs)
    if not target.exists():
        os.rename(stage, target)
        return
    backup = _temp_dir(target)
    moved: list[tuple[Path, Path | None]] = []  # (destination, its previous file kept in `backup`)
    created: list[Path] = []
    try:
        for n, rel in enumerate(files):
            dest = target / rel
            for parent in reversed(rel.parents[:-1]):
                if not (target / parent).exists():
                    (target / parent).mkdir(_DIR_MODE)
                    created.append(target / parent)
            kept = None
            if dest.exists():
                kept = backup / str(n)
                os.rename(dest, kept)
            moved.append((dest, kept))
            os.rename(stage / rel, dest)
    except BaseException:
        _undo(moved, created)
        raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)


def _undo(moved: list[tuple[Path, Path | None]], created: list[Path]) -> None:
    """Put back what `_commit_directory` replaced, and remove the directories it created."""
    for dest, kept in reversed(moved):
        if kept is not None and kept.exists():
            os.replace(kept, dest)
        elif kept is None:
            dest.unlink(missing_ok=True)
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            pass


# ------------------------------------------------------------------------------------- data files
def file_sha256(path: PathLike) -> str:
    """The SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_npy(path: PathLike):
    """The array of an `.npy` file; TflmSwapError naming the file when it is not a plain numeric
    `.npy` (pickles refused) or declares more data than it holds (checked before allocating)."""
    import numpy as np

    path = Path(path)
    with _data_errors(path):
        with open(path, "rb") as f:
            _check_npy_header(f, path.stat().st_size, path.name)
        return np.load(path, allow_pickle=False)


def read_npz(path: PathLike, required: Iterable[str] = ()) -> dict:
    """The arrays of an `.npz` file as a dict; TflmSwapError naming the file when it is not an
    `.npz` of plain numeric arrays, declares more data than it holds, or lacks one of `required`."""
    import zipfile

    import numpy as np

    path = Path(path)
    with _data_errors(path):
        with zipfile.ZipFile(path) as z:
            infos = {i.filename.removesuffix(".npy"): i for i in z.infolist()}
            missing = [k for k in required if k not in infos]
            if missing:
                raise TflmSwapError(f"{path}: lacks arrays {missing} (it has {sorted(infos)})")
            for key, info in infos.items():
                with z.open(info) as f:
                    _check_npy_header(f, info.file_size, key)
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}


def _check_npy_header(f, available: int, name: str) -> None:
    import numpy as np

    fmt = np.lib.format
    version = fmt.read_magic(f)
    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _, dtype = read(f)
    if dtype.hasobject:
        raise TflmSwapError(f"array {name!r} holds Python objects; only numeric arrays are read")
    count = 1
    for d in shape:
        count *= int(d)
    if count * dtype.itemsize > available:
        raise TflmSwapError(f"array {name!r} declares shape {shape} ({count * dtype.itemsize} bytes) "
                            f"but its file holds {available} bytes")


@contextmanager
def _data_errors(path: Path) -> Iterator[None]:
    """Turn what numpy and zipfile raise on a bad data file into one TflmSwapError naming it."""
    import pickle
    import zipfile
    import zlib

    try:
        yield
    except TflmSwapError as exc:
        message = str(exc)
        raise TflmSwapError(message if message.startswith(f"{path}:") else f"{path}: {message}") from exc
    except OSError as exc:
        raise TflmSwapError(f"{path}: cannot read data file: {exc.strerror or exc}") from exc
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError, KeyError,
            MemoryError) as exc:
        raise TflmSwapError(f"{path}: not a readable numpy data file ({type(exc).__name__}: {exc})") from exc
