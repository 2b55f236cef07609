"""Shared fixtures: where the shared models live (the repository's sibling directory `shared/`).

Tests that need `../shared` skip when it is missing, unless TFLM_SWAP_REQUIRE_SHARED=1 (set by CI),
in which case they fail. Tests that need an optional extra (Keras/TensorFlow, scikit-learn,
tflite-micro, xmos-ai-tools) skip with a reason when it is not installed; to check that they do,
run with those packages hidden: `TFLM_SWAP_HIDE_MODULES=keras,tensorflow,tflite_micro python -m pytest`.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

import pytest

# A None entry in sys.modules makes `import name` fail and importlib.util.find_spec(name) return
# None, exactly as when the package is not installed.
for _name in os.environ.get("TFLM_SWAP_HIDE_MODULES", "").split(","):
    if _name.strip():
        sys.modules[_name.strip()] = None


class _CheckoutConverters(importlib.abc.MetaPathFinder):
    """Tests test the tree they sit in: `tflm_swap.converters` is this checkout's converters/
    whenever this checkout's tflm_swap/ is the one imported (an editable install of another
    checkout, e.g. a git worktree's main, would map it elsewhere)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tflm_swap.converters" or not path or Path(path[0]).resolve() != _REPO / "tflm_swap":
            return None
        init = _REPO / "converters" / "__init__.py"
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


_REPO = Path(__file__).resolve().parents[1]
sys.meta_path.insert(0, _CheckoutConverters())


class _CheckoutConverters(importlib.abc.MetaPathFinder):
    """Tests test the tree they sit in: `tflm_swap.converters` is this checkout's converters/
    whenever this checkout's tflm_swap/ is the one imported (an editable install of another
    checkout, e.g. a git worktree's main, would map it elsewhere)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tflm_swap.converters" or not path or Path(path[0]).resolve() != _REPO / "tflm_swap":
            return None
        init = _REPO / "converters" / "__init__.py"
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


_REPO = Path(__file__).resolve().parents[1]
sys.meta_path.insert(0, _CheckoutConverters())

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
MLPERF_DIR = SHARED_DIR / "models" / "mlperf_tiny"


def missing_shared(reason: str) -> None:
    """Skip the current test because shared data is missing (fail instead when CI requires it)."""
    if os.environ.get("TFLM_SWAP_REQUIRE_SHARED", "") not in ("", "0"):
        pytest.fail(f"{reason} (TFLM_SWAP_REQUIRE_SHARED is set)")
    pytest.skip(reason)


def require_model(name: str) -> Path:
    """Path of an MLPerf Tiny model (`name` without `.tflite`); skips the test when it is absent."""
    path = MLPERF_DIR / f"{name}.tflite"
    if not path.is_file():
        missing_shared(f"MLPerf Tiny model {path} not found (the shared models belong next to the repo)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data directory next to the repository; skips when it is missing."""
    if not SHARED_DIR.is_dir():
        missing_shared(f"shared data directory {SHARED_DIR} not found (expected next to the repository)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def mlperf_models(shared_dir: Path) -> list[Path]:
    """Every MLPerf Tiny `.tflite` in the shared directory, sorted; skips when there are none."""
    models = sorted((shared_dir / "models" / "mlperf_tiny").glob("*.tflite"))
    if not models:
        missing_shared(f"no MLPerf Tiny .tflite models under {shared_dir / 'models' / 'mlperf_tiny'}")
    return models


def require_tflm_arena_tools() -> None:
    """Skip unless the TFLM target can size an arena: the host TFLM (xmos-ai-tools) measures it,
    else the tflite-micro interpreter's figures feed the planner's prediction."""
    import importlib.util

    if importlib.util.find_spec("xmos_ai_tools") is None and importlib.util.find_spec("tflite_micro") is None:
        pytest.skip("sizing a TFLM arena needs xmos-ai-tools or tflite-micro (pip install .[micro])")


@pytest.fixture(scope="session")
def mcu():
    """tflm_swap.micro.mcu once the Cortex-M toolchain and the pinned archives are known to be here
    (skips without them; without the toolchain fails under CI)."""
    from tflm_swap.micro import mcu as module
    from tflm_swap.micro.toolchain import NativeToolError

    os.environ.setdefault("TFLM_SWAP_VENDOR", str(SHARED_DIR / "vendor"))
    try:
        module.vendor_dir()
    except NativeToolError as exc:
        missing_shared(str(exc))
    try:
        module.toolchain()
    except NativeToolError as exc:
        if os.environ.get("CI") or os.environ.get("TFLM_SWAP_REQUIRE_SHARED", "") not in ("", "0"):
            pytest.fail(f"the Cortex-M toolchain is required in CI: {exc}")
        pytest.skip(str(exc))
    return module
