"""Which int8 requantisation (single or double rounding) the installed LiteRT's reference kernels
use, per operator, found by running probe models: the delegate must round the same way."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from ..errors import DelegateError
from ..native import delegate_library

ROUNDINGS = ("single", "double")
_OPERATORS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")  # the delegate's SUPPORTED_OPS


_ROUNDING_PROBES = {  # op: (input shape, layers, per-channel); tens of thousands of outputs, several on ties
    "FULLY_CONNECTED": ([8, 64], [("fc", 2048)], False),
    "CONV_2D": ([4, 16, 16, 64], [("conv", 64)], True),
    "DEPTHWISE_CONV_2D": ([2, 16, 16, 64], [("dw", 2)], False),
}


@functools.cache
def detect_rounding(backend: str = "auto") -> dict[str, str]:
    """{operator: 'single' or 'double'}: the int8 requantisation of `backend`'s reference kernels (BUILTIN_REF).

    TFLite builds choose between single-rounding and gemmlowp double-rounding MultiplyByQuantizedMultiplier
    at compile time (TFLITE_SINGLE_ROUNDING), and LiteRT 2.3 differs per kernel (FULLY_CONNECTED single,
    convolutions double). For each operator this runs an int8 probe model on the reference kernels and
    on the delegate in both modes, and keeps the mode that matches.
    """
    from ..converters import synthetic as models
    from ..converters.segment import segment_model
    from ..format.model import Model
    from ..interpreters import litert_interpreter, random_inputs, resolve_backend, run_litert
    from .options import delegate_options

    name, module = resolve_backend(backend)
    load = getattr(module, "load_delegate", None) or module.experimental.load_delegate  # tf.lite: experimental
    makers = {"fc": models.fc, "conv": lambda n: models.conv(n, (1, 1)), "dw": lambda n: models.depthwise(n, (3, 3))}
    found = {}
    with tempfile.TemporaryDirectory(prefix="tflm_swap_probe_") as tmp:
        for op, (shape, layers, per_channel) in _ROUNDING_PROBES.items():
            path = Path(tmp) / f"{op}.tflite"
            raw = models.build_model(shape, [makers[k](n) for k, n in layers], "int8", per_channel=per_channel, seed=7)
            path.write_bytes(segment_model(Model.from_bytes(raw)))
            inputs = random_inputs(litert_interpreter(model_path=str(path), backend=name).get_input_details(),
                                   __import__("numpy").random.default_rng(0))

            def run(delegate=None, path=path, inputs=inputs) -> bytes:
                interpreter = litert_interpreter(model_path=str(path), backend=name, reference_kernels=True,
                                                 delegates=[delegate] if delegate else None)
                interpreter.allocate_tensors()
                return run_litert(interpreter, inputs)[0].tobytes()

            stock = run()
            base = delegate_options(path, tile_bytes=1 << 20, rounding="single")
            matches = [mode for mode in ROUNDINGS if run(load(delegate_library(), {**base, "rounding": mode})) == stock]
            if len(matches) != 1:
                raise DelegateError(f"cannot tell the int8 rounding of {op} on {name} (modes matching: {matches})")
            found[op] = matches[0]
    return found


def rounding_option(rounding: str | dict[str, str]) -> str:
    """The `rounding` option string: 'single', 'double' or 'FULLY_CONNECTED=single,CONV_2D=double,...'."""
    if isinstance(rounding, str) and rounding in ROUNDINGS:
        return rounding
    if isinstance(rounding, str) and "=" in rounding:  # already in option form
        pairs = [item.partition("=") for item in rounding.split(",")]
        rounding = {op: mode for op, _, mode in pairs} if all(sep for _, sep, _ in pairs) else rounding
    if isinstance(rounding, dict) and rounding and set(rounding) <= set(_OPERATORS) \
            and set(rounding.values()) <= set(ROUNDINGS):
        return ",".join(f"{op}={mode}" for op, mode in rounding.items())
    raise DelegateError(f"rounding={rounding!r}: use 'auto', 'single', 'double' or {{operator: 'single'|'double'}}")
