"""The package's layers (docs/ARCHITECTURE.md): each module imports only modules of its own layer or
of layers below it, lazy imports inside functions included. Read from the sources, so a new
import that runs back up the layers fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Bottom to top. A module belongs to the first layer one of whose prefixes it starts with.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("tflm_swap.errors", "tflm_swap.fileio", "tflm_swap.moved", "tflm_swap.native", "tflm_swap.units")),
    ("format", ("tflm_swap.format", "tflm_swap.interpreters")),
    ("planner", ("tflm_swap.planner",)),
    ("converters", ("tflm_swap.converters",)),
    ("runtimes", ("tflm_swap.runtime", "tflm_swap.delegate", "tflm_swap.micro")),
    ("cascade", ("tflm_swap.cascade",)),
    ("front", ("tflm_swap.cli", "tflm_swap.demo", "tflm_swap.report", "tflm_swap.profiling",
               "tflm_swap.__main__", "tflm_swap")),
]


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def module_files() -> dict[str, Path]:
    """Module name -> source file, for the package and the converters folder installed inside it."""
    files = {}
    for root, package in ((REPO / "tflm_swap", "tflm_swap"), (REPO / "converters", "tflm_swap.converters")):
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            name = ".".join([package] + [p for p in parts if p != "__init__"])
            files[name] = path
    return files


def imported_modules(name: str, path: Path) -> set[str]:
    """Every tflm_swap module `path` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    files = module_files()
    return {m for m in found if m.startswith("tflm_swap") and m in files}


MODULES = module_files()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_stay_within_lower_layers(name: str) -> None:
    own = layer_of(name)
    upward = sorted(m for m in imported_modules(name, MODULES[name]) if layer_of(m) > own)
    assert not upward, f"{name} ({LAYERS[own][0]}) imports higher layers: {upward}"


def test_converters_never_import_a_runtime() -> None:
    runtimes = LAYERS[4][1]
    for name, path in MODULES.items():
        if name.startswith("tflm_swap.converters"):
            bad = sorted(m for m in imported_modules(name, path) if m.startswith(runtimes))
            assert not bad, f"{name} imports runtimes: {bad}"


def test_the_layer_check_sees_lazy_imports(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from .cli import main\n    from . import demo\n")
    assert imported_modules("tflm_swap.probe", source) >= {"tflm_swap.cli", "tflm_swap.demo"}


@pytest.mark.parametrize("old", sorted(__import__("tflm_swap.moved").moved.MOVED))
def test_moved_module_paths_still_import_with_a_warning(old: str) -> None:
    import importlib
    import sys

    from tflm_swap.moved import MOVED

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=MOVED[old]):
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])


def test_a_moved_path_leaves_the_module_as_it_was() -> None:
    import importlib
    import sys
    import warnings

    import tflm_swap.format.model as model

    sys.modules.pop("tflm_swap.model", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        importlib.import_module("tflm_swap.model")
    assert model.__spec__.name == "tflm_swap.format.model" and model.__name__ == "tflm_swap.format.model"
    import tflm_swap

    assert callable(tflm_swap.convert)  # `tflm_swap.convert` stays the function
