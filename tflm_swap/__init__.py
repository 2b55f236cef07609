"""tflm_swap: run TFLite / TFLite Micro models whose weights do not fit in RAM.

Public API::

    tflm_swap.convert(model, ...)      Keras / SavedModel / .tflite -> SegmentedModel
    tflm_swap.compress(model, bits)    weight sharing (optimal 1-D clustering) of int8 filters -> .tflite bytes
    tflm_swap.Model                    a parsed .tflite
    tflm_swap.segment_model(model)     segmented .tflite bytes
    tflm_swap.read_manifest(data)      the manifest of a segmented model
    tflm_swap.verify(data)             check alignment and CRCs of every segment
    tflm_swap.split(data) / join(...)  (graph, flash image) pair and back
    tflm_swap.plan_model(model)        per-operator memory plan with lower bounds
    tflm_swap.delegate_library()       path of the LiteRT weight-streaming delegate (load_delegate)
    tflm_swap.delegate_options(path)   its options for a segmented model (builds the tile table)
    tflm_swap.cascade                  router + slimmed specialists loaded on demand (build, CascadeInterpreter)
"""

from .converters.compress import compress
from .converters.convert import SegmentedModel, convert
from .converters.keras import to_tflite
from .converters.segment import segment_model
from .delegate import delegate_library, delegate_options
from .errors import (
    BudgetError,
    MalformedModelError,
    ManifestError,
    SegmentIntegrityError,
    TflmSwapError,
    UnsupportedModelError,
)
from .format.manifest import Manifest, read_manifest
from .format.model import Model
from .format.segments import join, split, verify
from .moved import install as _install_moved_modules
from .planner import Plan, estimate_latency, plan_model

__version__ = "0.1.0"

_install_moved_modules()  # module paths from before docs/ARCHITECTURE.md keep working, with a warning

__all__ = [
    "BudgetError", "MalformedModelError", "Manifest", "ManifestError", "Model", "Plan",
    "SegmentIntegrityError", "SegmentedModel", "TflmSwapError", "UnsupportedModelError",
    "compress", "convert", "delegate_library", "delegate_options", "estimate_latency", "join", "plan_model",
    "read_manifest", "segment_model", "split", "to_tflite", "verify",
]
