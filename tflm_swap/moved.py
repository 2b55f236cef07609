"""Module paths from before the layout of docs/ARCHITECTURE.md keep importing, with a
DeprecationWarning naming the new home: `import tflm_swap.model` gives `tflm_swap.format.model`
itself (the same module object, so patching either patches both)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

MOVED = {
    "tflm_swap.manifest": "tflm_swap.format.manifest",
    "tflm_swap.micro.image": "tflm_swap.format.flash_image",
    "tflm_swap.micro.native": "tflm_swap.micro.toolchain",
    "tflm_swap.micro.rewrite": "tflm_swap.converters.tflm",
    "tflm_swap.model": "tflm_swap.format.model",
    "tflm_swap.delegate.models": "tflm_swap.converters.synthetic",
    "tflm_swap.runtime.backends": "tflm_swap.interpreters",
    "tflm_swap.runtime.pages": "tflm_swap.runtime.process_memory",
    "tflm_swap.runtime.swap": "tflm_swap.runtime.interpreter",
    "tflm_swap.schema": "tflm_swap.format.schema",
    "tflm_swap.segment": "tflm_swap.format.segments",
    "tflm_swap.submodel": "tflm_swap.converters.submodel",
    "tflm_swap.tiling": "tflm_swap.converters.tiling",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self.spec  # the import system stamped the old path's spec on it: undo


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves an old module path to the module that now holds its code."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        warnings.warn(f"{fullname} moved to {new}; import it from there", DeprecationWarning, stacklevel=3)
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Put the finder on sys.meta_path once."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
