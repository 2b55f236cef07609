"""Keras model / SavedModel / .tflite path or bytes -> `.tflite` bytes (`tf.lite.TFLiteConverter`).

TensorFlow is imported only when a Keras model or SavedModel has to be converted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tflm_swap.errors import TflmSwapError

QUANTIZATIONS = ("float32", "dynamic", "int8")
REPRESENTATIVE_SAMPLES = 200


def to_tflite(
    model: Any,
    *,
    representative_data: np.ndarray | Callable[[], Iterable] | None = None,
    quantization: str | None = None,
    int8_io: bool = True,
) -> bytes:
    """Return `.tflite` bytes for a Keras model, SavedModel directory, `.tflite` path or bytes."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.is_dir():
            if not (path / "saved_model.pb").exists():
                raise TflmSwapError(f"{path} is a directory without saved_model.pb; not a SavedModel")
            return _convert_with_tf("saved_model", str(path), representative_data, quantization, int8_io)
        if not path.exists():
            raise TflmSwapError(f"{path}: no such model file")
        if path.suffix in (".keras", ".h5"):
            import keras

            return _convert_with_tf("keras", keras.models.load_model(path), representative_data,
                                    quantization, int8_io)
        return path.read_bytes()
    if hasattr(model, "layers") and hasattr(model, "predict"):
        return _convert_with_tf("keras", model, representative_data, quantization, int8_io)
    raise TflmSwapError(
        f"cannot convert a {type(model).__name__}: pass a Keras model, a SavedModel directory, "
        "a .tflite path or .tflite bytes"
    )


def _convert_with_tf(kind, model, representative_data, quantization, int8_io) -> bytes:
    import tensorflow as tf

    quantization = quantization or ("int8" if representative_data is not None else "float32")
    if quantization not in QUANTIZATIONS:
        raise TflmSwapError(f"quantization {quantization!r} is not one of {QUANTIZATIONS}")
    if kind == "keras":
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    else:
        converter = tf.lite.TFLiteConverter.from_saved_model(model)
    if quantization in ("dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "int8":
        if representative_data is None:
            raise TflmSwapError("int8 quantization needs representative_data (sample inputs)")
        converter.representative_dataset = _representative(representative_data)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def _representative(data) -> Callable[[], Iterable]:
    if callable(data):
        return data
    samples = np.asarray(data, dtype=np.float32)

    def generate():
        for x in samples[:REPRESENTATIVE_SAMPLES]:
            yield [x[np.newaxis]]

    return generate
