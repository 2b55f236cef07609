"""The real interpreters tflm_swap runs on: LiteRT (three packagings) and the official TFLite Micro.

LiteRT is tried as `ai_edge_litert`, then `tflite_runtime` (whose 2.14 wheels need numpy < 2), then
`tf.lite` as a last resort. Nothing here imports TensorFlow unless the other two are missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import tempfile
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from .errors import TflmSwapError, UnsupportedModelError
from .format.model import Model

BACKENDS = ("ai_edge_litert", "tflite_runtime", "tensorflow")


class BackendUnavailableError(TflmSwapError):
    """The requested interpreter package is not installed or cannot run here."""


def _interpreter_module(backend: str) -> ModuleType:
    if backend == "ai_edge_litert":
        return importlib.import_module("ai_edge_litert.interpreter")
    if backend == "tflite_runtime":
        if importlib.util.find_spec("tflite_runtime") is None:
            raise BackendUnavailableError("tflite-runtime is not installed (pip install tflite-runtime 'numpy<2')")
        if int(np.__version__.split(".")[0]) >= 2:
            import importlib.metadata as md

            version = md.version("tflite-runtime")
            if tuple(int(p) for p in version.split(".")[:2]) < (2, 15):
                raise BackendUnavailableError(
                    f"tflite-runtime {version} is built for numpy < 2 but numpy {np.__version__} is "
                    "installed; use ai-edge-litert, or a virtual environment with 'numpy<2'"
                )
        return importlib.import_module("tflite_runtime.interpreter")
    if backend == "tensorflow":
        return importlib.import_module("tensorflow").lite
    raise BackendUnavailableError(f"unknown backend {backend!r}; choose one of {BACKENDS} or 'auto'")


def resolve_backend(backend: str = "auto") -> tuple[str, ModuleType]:
    """Return (name, module exposing `Interpreter`) for `backend`, or the first usable one for 'auto'."""
    candidates = BACKENDS if backend == "auto" else (backend,)
    reasons = []
    for name in candidates:
        try:
            return name, _interpreter_module(name)
        except Exception as exc:  # a broken wheel can fail to import in many ways; report each
            reasons.append(f"{name}: {exc}")
    raise BackendUnavailableError("no usable LiteRT interpreter: " + "; ".join(reasons))


def litert_interpreter(
    model_content: bytes | None = None,
    model_path: str | None = None,
    *,
    backend: str = "auto",
    reference_kernels: bool = False,
    default_delegates: bool = True,
    num_threads: int | None = None,
    delegates: list | None = None,
    preserve_all_tensors: bool = False,
):
    """Create a LiteRT `Interpreter` (tensors not yet allocated).

    `reference_kernels=True` selects TFLite's reference kernels (BUILTIN_REF), which compute int8
    exactly as TFLite Micro does; the default path (XNNPACK) may differ from TFLM by a few LSB.
    `default_delegates=False` keeps the optimised builtin kernels but not XNNPACK, which otherwise
    packs a second copy of the weights when tensors are allocated. `preserve_all_tensors` keeps
    every intermediate tensor readable after `invoke` (no arena sharing).
    """
    _, module = resolve_backend(backend)
    kwargs: dict = {"model_content": model_content, "model_path": model_path}
    if num_threads is not None:
        kwargs["num_threads"] = num_threads
    if delegates:
        kwargs["experimental_delegates"] = delegates
    if preserve_all_tensors:
        kwargs["experimental_preserve_all_tensors"] = True
    if reference_kernels:
        kwargs["experimental_op_resolver_type"] = module.OpResolverType.BUILTIN_REF
    elif not default_delegates:
        kwargs["experimental_op_resolver_type"] = module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return module.Interpreter(**kwargs)


def random_inputs(details: list[dict], rng: np.random.Generator) -> list[np.ndarray]:
    """Random tensors matching interpreter input details (full range for integers)."""
    arrays = []
    for d in details:
        dtype, shape = np.dtype(d["dtype"]), tuple(int(s) for s in d["shape"])
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            lo, hi = max(info.min, -(2**31)), min(info.max, 2**31 - 1)
            arrays.append(rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype))
        elif dtype == np.bool_:
            arrays.append(rng.integers(0, 2, size=shape).astype(bool))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """Real values `x` as the input tensor of `detail` takes them: float32 as they are, integers
    through the tensor's (scale, zero point), rounded and clipped to the type's range."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return x.astype(np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    """An output tensor of `detail` as real values (float64, flattened)."""
    y = np.asarray(y).reshape(-1)
    if np.dtype(detail["dtype"]) == np.float32:
        return y.astype(np.float64)
    scale, zero = detail["quantization"]
    return (y.astype(np.float64) - zero) * scale


def run_litert(interpreter, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Set inputs, invoke, return copies of all outputs."""
    for d, x in zip(interpreter.get_input_details(), inputs):
        interpreter.set_tensor(d["index"], x)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]).copy() for d in interpreter.get_output_details()]


# ------------------------------------------------------------------------------- TFLite Micro
@dataclass
class TflmArena:
    """Arena use reported by TFLM's RecordingMicroAllocator."""

    total: int
    head: int  # non-persistent: activations and scratch, laid out by TFLM's greedy planner
    tail: int  # persistent: tensor structs, node data, kernel buffers
    sections: dict[str, int] = field(default_factory=dict)


def ensure_tflm_compatible(model: bytes | Model) -> None:
    """Refuse a model that TFLM would run wrongly: TFLM ignores Buffer.offset and reads zeros/NaN.
    `model`: the file's bytes, or the `Model` parsed from them."""
    model = model if isinstance(model, Model) else Model.from_bytes(model)
    external = [i for i, b in enumerate(model.fb.buffers) if b.offset > 1]
    if external:
        raise UnsupportedModelError(
            f"{len(external)} buffers keep their data outside the flatbuffer (Buffer.offset); TFLite "
            "Micro ignores that field and would compute garbage. Use the TFLM target or the original model."
        )


def tflm_interpreter(model_bytes: bytes, arena_size: int | None = None):
    """The official TFLite Micro Python interpreter for `model_bytes` (checked for compatibility)."""
    ensure_tflm_compatible(model_bytes)
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as exc:
        raise BackendUnavailableError("tflite-micro is not installed (pip install tflite-micro)") from exc
    return runtime.Interpreter.from_bytes(bytes(model_bytes), arena_size=arena_size or 8 * 2**20)


def tflm_arena(model_bytes: bytes, seed: int = 0) -> TflmArena:
    """Run one inference on TFLM and return the arena use its RecordingMicroAllocator prints."""

    interpreter = tflm_interpreter(model_bytes)
    rng = np.random.default_rng(seed)
    for index in range(len(Model.from_bytes(model_bytes).inputs)):
        details = interpreter.get_input_details(index)
        interpreter.set_input(random_inputs([details], rng)[0], index)
    interpreter.invoke()
    text = _capture_fd(2, interpreter.print_allocations)
    return _parse_allocations(text)


def _capture_fd(fd: int, fn) -> str:
    """Run fn() with the OS-level file descriptor `fd` sent to a temporary file; return what it wrote."""
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            fn()
        finally:
            os.dup2(saved, fd)
            os.close(saved)
        tmp.seek(0)
        return tmp.read().decode(errors="replace")


def _parse_allocations(text: str) -> TflmArena:
    def grab(pattern: str) -> int:
        m = re.search(pattern, text)
        if not m:
            raise BackendUnavailableError(f"unexpected TFLM allocation report: {text[:500]!r}")
        return int(m.group(1))

    sections = {
        name: int(used)
        for name, used in re.findall(r"'([^']+)' used (\d+) bytes", text)
    }
    return TflmArena(
        total=grab(r"Arena allocation total (\d+) bytes"),
        head=grab(r"Arena allocation head (\d+) bytes"),
        tail=grab(r"Arena allocation tail (\d+) bytes"),
        sections=sections,
    )
