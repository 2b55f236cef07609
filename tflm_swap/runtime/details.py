"""LiteRT's Interpreter surface computed from the graph: tensor details, signatures, and the
SignatureRunner, for SwapInterpreter (which has no single interpreter to ask)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..format.model import Model, numpy_dtype
from ..format.schema import text

if TYPE_CHECKING:
    from .interpreter import SwapInterpreter


def tensor_details(model: Model, t: int) -> dict:
    """LiteRT's tensor details for tensor `t` of the (main subgraph of the) model."""
    tensor = model.tensors[t]
    q = tensor.quantization
    scales = np.asarray(q.scale if q is not None and q.scale is not None else [], dtype=np.float32)
    zeros = np.asarray(q.zeroPoint if q is not None and q.zeroPoint is not None else [], dtype=np.int32)
    shape = np.asarray(tensor.shape if tensor.shape is not None else [], dtype=np.int32)
    signature = tensor.shapeSignature if tensor.shapeSignature is not None else shape
    return {
        "name": model.tensor_name(t),
        "index": t,
        "shape": shape,
        "shape_signature": np.asarray(signature, dtype=np.int32),
        "dtype": numpy_dtype(tensor.type),
        "quantization": (float(scales[0]), int(zeros[0])) if len(scales) == 1 else (0.0, 0),
        "quantization_parameters": {
            "scales": scales, "zero_points": zeros,
            "quantized_dimension": int(q.quantizedDimension) if q is not None else 0,
        },
        "sparsity_parameters": {},
    }


def signatures(model: Model) -> dict[str, tuple[dict[str, int], dict[str, int]]]:
    """Signature key -> (input name -> tensor, output name -> tensor), main subgraph only."""
    result = {}
    for sig in model.fb.signatureDefs or []:
        if sig.subgraphIndex != 0:
            continue
        names = lambda maps: {text(m.name): int(m.tensorIndex) for m in maps or []}  # noqa: E731
        result[text(sig.signatureKey)] = (names(sig.inputs), names(sig.outputs))
    return result


class SwapSignatureRunner:
    """LiteRT's SignatureRunner surface on a SwapInterpreter: `runner(name=array)` -> {name: array}."""

    def __init__(self, interpreter: SwapInterpreter, inputs: dict[str, int], outputs: dict[str, int]):
        self._interpreter, self._inputs, self._outputs = interpreter, inputs, outputs

    def get_input_details(self) -> dict[str, dict]:
        return {name: self._interpreter._details(t) for name, t in self._inputs.items()}

    def get_output_details(self) -> dict[str, dict]:
        return {name: self._interpreter._details(t) for name, t in self._outputs.items()}

    def __call__(self, **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        unknown = sorted(set(kwargs) - set(self._inputs))
        missing = sorted(set(self._inputs) - set(kwargs))
        if unknown or missing:
            raise ValueError(f"signature inputs are {sorted(self._inputs)}; unknown {unknown}, missing {missing}")
        if not self._interpreter._templates:
            self._interpreter.allocate_tensors()
        for name, value in kwargs.items():
            self._interpreter.set_tensor(self._inputs[name], value)
        self._interpreter.invoke()
        return {name: self._interpreter.get_tensor(t) for name, t in self._outputs.items()}
