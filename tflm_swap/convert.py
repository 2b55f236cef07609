"""Keras / SavedModel / .tflite in, segmented model out.

TensorFlow is imported only when a Keras model or SavedModel has to be converted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TflmSwapError
from .fileio import write_atomic
from .manifest import Manifest, read_manifest
from .model import Model
from .segment import DEFAULT_MIN_SEGMENT_BYTES, DEFAULT_PAGE_SIZE, segment_model, split
from .tiling import TiledLayer, tile_fully_connected, verify_tiling

QUANTIZATIONS = ("float32", "dynamic", "int8")
REPRESENTATIVE_SAMPLES = 200


@dataclass
class SegmentedModel:
    """The result of `convert`: the original `.tflite` and its segmented form."""

    original: bytes
    data: bytes
    manifest: Manifest
    tiled: list[TiledLayer] = field(default_factory=list)  # layers split by `tile_bytes`

    def save(self, path: str | Path, inputs: tuple[str | Path, ...] = ()) -> Path:
        """Write the single-file segmented model atomically (never over one of `inputs`)."""
        return write_atomic(path, self.data, inputs)

    def split(self) -> tuple[bytes, bytes]:
        """(graph flatbuffer, flash image) with image-relative segment offsets."""
        return split(self.data)


def convert(
    model: Any,
    *,
    representative_data: np.ndarray | Callable[[], Iterable] | None = None,
    quantization: str | None = None,
    int8_io: bool = True,
    page_size: int = DEFAULT_PAGE_SIZE,
    min_segment_bytes: int = DEFAULT_MIN_SEGMENT_BYTES,
    tile_bytes: int | None = None,
) -> SegmentedModel:
    """Convert (if needed) and segment a model.

    `model` is a Keras model, a SavedModel directory, a `.tflite` path, or `.tflite` bytes.
    `quantization` is 'float32', 'dynamic' or 'int8'; by default int8 when `representative_data` is
    given, float32 otherwise. It applies only to Keras/SavedModel input. With `tile_bytes`,
    fully-connected layers with more weights are split into tiles of output rows holding at most
    that many (`tiling.tile_fully_connected`), so that the runtime can stream them in smaller
    pieces; `SegmentedModel.tiled` lists them. The tiled model is checked to give bit-identical
    outputs on LiteRT here (`tiling.verify_tiling`).
    """
    tflite = to_tflite(model, representative_data=representative_data, quantization=quantization,
                       int8_io=int8_io)
    source = str(model) if isinstance(model, (str, Path)) else "<model>"
    parsed, tiled = Model.from_bytes(tflite, source=source), []
    if tile_bytes is not None:
        parsed, tiled = tile_fully_connected(parsed, tile_bytes)
        if tiled:
            verify_tiling(tflite, bytes(parsed.raw), source)
    data = segment_model(parsed, page_size, min_segment_bytes, source=tflite)
    return SegmentedModel(original=tflite, data=data, manifest=read_manifest(data), tiled=tiled)


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
