"""Converters: everything that writes model files (installed as `tflm_swap.converters`).

    keras        Keras model / SavedModel / .tflite -> .tflite bytes (tf.lite.TFLiteConverter)
    convert      convert(): to .tflite, optionally tile, then segment -> SegmentedModel
    segment      segment_model(): weights into page-aligned segments with the manifest
    tiling       large FULLY_CONNECTED layers split into tiles of output rows
    tflm         rewrite_for_tflm(): load operators for TFLite Micro + the flash image
    flash_image  build_image(): the TFLM target's flash image
    submodel     stage sub-models of the LiteRT stage runtime
    compress     k-means weight sharing of int8 filters; which filters are palette-encoded
    decode_layout  upstream TFLM's compressed layout (TFLM_DECODE): read (expand) and written
    synthetic    small seeded models built from a list of layers (tests, probes)
    graph        the one graph-editing surface the editors above share

A converter imports the format layer and the stock interpreters (to check its own result), never a
runtime.
"""

from .convert import SegmentedModel, convert
from .keras import to_tflite
from .segment import segment_model

__all__ = ["SegmentedModel", "convert", "segment_model", "to_tflite"]
