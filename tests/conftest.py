"""Shared fixtures: where the shared models live (the repository's sibling directory `shared/`).

Tests that need `../shared` skip when it is missing, unless TFLM_SWAP_REQUIRE_SHARED=1 (set by CI),
in which case they fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
