"""Exceptions raised by tflm_swap. Every error names the offending model part."""


class TflmSwapError(ValueError):
    """Base class of all errors raised by tflm_swap on bad input."""


class MalformedModelError(TflmSwapError):
    """The bytes are not a well-formed TFLite flatbuffer (truncated, corrupt, wrong file)."""


class UnsupportedModelError(TflmSwapError):
    """The model is valid TFLite but uses something tflm_swap does not handle."""


class ManifestError(TflmSwapError):
    """The tflm_swap manifest is missing, corrupt, or of an unknown version."""


class SegmentIntegrityError(TflmSwapError):
    """A weight segment is truncated, misplaced or fails its CRC32 check."""


class BudgetError(TflmSwapError):
    """A RAM budget is too small for the model under every strategy."""


class DelegateError(TflmSwapError):
    """The package's native library is missing, or the delegate's options are invalid."""
