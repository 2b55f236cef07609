"""Cascades: a tiny router picks one of several slimmed specialist submodels, loaded on demand.

    tflm_swap.cascade.build(fn_or_model, x, y, ...)        -> CascadeBuilder (fitted); .bundle_
    tflm_swap.cascade.CascadeBuilder(n_groups=None, ...).fit(fn_or_model, x, y)
    tflm_swap.cascade.CascadeBundle.load(path)              one-file bundle (zip + JSON manifest)
    tflm_swap.cascade.CascadeInterpreter(bundle, ram_budget=..., cache="lru", backend="litert")

Nothing imported here needs TensorFlow; training modules import it lazily.
"""

from .bundle import BUNDLE_VERSION, CascadeBundle, CascadeBundleError, MemberInfo
from .interpreter import CascadeInterpreter

__all__ = ["BUNDLE_VERSION", "CascadeBuilder", "CascadeBundle", "CascadeBundleError", "CascadeInterpreter",
           "MemberInfo", "build"]


def __getattr__(name: str):
    """Lazy access to the (TensorFlow-using) builder."""
    if name in ("CascadeBuilder", "build"):
        from . import builder as _builder

        return getattr(_builder, name)
    raise AttributeError(name)
