"""The format layer: what a (segmented) `.tflite` is, read and checked (docs/FORMAT.md).

    schema       the TFLite flatbuffer bindings shipped with LiteRT/TFLM, one string decoder
    model        Model: a parsed, validated `.tflite` (tensors, buffers, operators, external buffers)
    manifest     the tflm_swap manifest inside a segmented model
    segments     segment layout, CRC verification, split into (graph, flash image) and join
    flash_image  the TFLM target's flash image ("TSWI") and its parser

Writing these files is the converters' job (`tflm_swap.converters`).
"""

from .manifest import Manifest, read_manifest
from .model import Model
from .segments import join, split, verify

__all__ = ["Manifest", "Model", "join", "read_manifest", "split", "verify"]
