"""Keras / SavedModel / .tflite in, segmented model out (`convert`).

TensorFlow is imported only when a Keras model or SavedModel has to be converted (`keras.to_tflite`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tflm_swap.errors import TflmSwapError
from tflm_swap.fileio import write_atomic
from tflm_swap.format.manifest import Manifest, read_manifest
from tflm_swap.format.model import Model
from tflm_swap.format.segments import DEFAULT_MIN_SEGMENT_BYTES, DEFAULT_PAGE_SIZE, split

from .compress import compress
from .decode_layout import expand
from .finetune import finetune_clustered
from .keras import to_tflite
from .segment import segment_model
from .tiling import TiledLayer, tile_fully_connected, verify_tiling


@dataclass
class SegmentedModel:
    """The result of `convert`: the original `.tflite` and its segmented form."""

    original: bytes  # with compress_bits: the compressed (clustered) model, the outputs' reference
    data: bytes
    manifest: Manifest
    tiled: list[TiledLayer] = field(default_factory=list)  # layers split by `tile_bytes`

    @functools.cached_property
    def model(self) -> Model:
        """`data` parsed (once, on first use), for the next converter to take as it is."""
        return Model.from_bytes(self.data)

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
    compress_bits: int | None = None,
    per_channel: bool = True,
    data: tuple[np.ndarray, np.ndarray] | np.ndarray | None = None,
) -> SegmentedModel:
    """Convert (if needed) and segment a model.

    `model` is a Keras model, a SavedModel directory, a `.tflite` path, or `.tflite` bytes.
    `quantization` is 'float32', 'dynamic' or 'int8'; by default int8 when `representative_data` is
    given, float32 otherwise. It applies only to Keras/SavedModel input. With `tile_bytes`,
    fully-connected layers with more weights are split into tiles of output rows holding at most
    that many (`tiling.tile_fully_connected`), so that the runtime can stream them in smaller
    pieces; `SegmentedModel.tiled` lists them. The tiled model is checked to give bit-identical
    outputs on LiteRT here (`tiling.verify_tiling`). With `compress_bits`, the int8 filters are
    first clustered to at most 2**compress_bits values per channel (`per_channel`) or per tensor
    (`compress.compress`) and stored palette-encoded where that is smaller; `original` is then the
    clustered model, to which the segmented file decodes byte for byte. `data` with `compress_bits`:
    (x, y) with a compiled Keras model fine-tunes it first with its kernels tied to their clusters
    (`finetune.finetune_clustered`; `x` is then the default representative data); inputs x (or
    (x, y)) with any other model calibrate a bias correction after clustering (`compress.compress`).
    A model compressed by upstream TFLM (TFLM_DECODE operators) is read as the model it decodes to
    (`decode_layout.expand`) and its filters are stored palette-encoded with upstream's tables and
    bitstring.
    """
    if data is not None and compress_bits is None:
        raise TflmSwapError("fine-tuning or calibration data is for compression: give compress_bits too")
    fine_tune = data is not None and hasattr(model, "layers")
    if fine_tune:
        model = finetune_clustered(model, data, compress_bits, per_channel)
        representative_data = np.asarray(data[0]) if representative_data is None else representative_data
    tflite = to_tflite(model, representative_data=representative_data, quantization=quantization,
                       int8_io=int8_io)
    source = str(model) if isinstance(model, (str, Path)) else "<model>"
    parsed, tiled = expand(Model.from_bytes(tflite, source=source)), []
    upstream = parsed  # read from upstream TFLM's DECODE layout when it has transcoded entries
    encode = compress_bits is not None or bool(upstream.transcoded)
    if upstream.transcoded:
        tflite = bytes(parsed.raw)  # the model it decodes to
    if compress_bits is not None:
        tflite = compress(parsed, compress_bits, per_channel, data=None if fine_tune else data)
        parsed = Model.from_bytes(tflite, source=source)
        parsed.transcoded = {b: blob for b, blob in upstream.transcoded.items()
                             if parsed.buffers[b] == upstream.buffers[b]}  # still the values upstream encoded
    if tile_bytes is not None:
        parsed, tiled = tile_fully_connected(parsed, tile_bytes)
        if tiled:
            verify_tiling(tflite, bytes(parsed.raw), source)
    data = segment_model(parsed, page_size, min_segment_bytes, source=tflite, encode=encode)
    return SegmentedModel(original=tflite, data=data, manifest=read_manifest(data), tiled=tiled)
