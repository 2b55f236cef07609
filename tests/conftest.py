"""Shared fixtures: where the shared models live (the repository's sibling directory `shared/`)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
MLPERF_DIR = SHARED_DIR / "models" / "mlperf_tiny"


def require_model(name: str) -> Path:
    """Path of an MLPerf Tiny model (`name` without `.tflite`); skips the test when it is absent."""
    path = MLPERF_DIR / f"{name}.tflite"
    if not path.is_file():
        pytest.skip(f"MLPerf Tiny model {path} not found (tests need the shared models next to the repo)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data directory next to the repository; skips when it is missing."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data directory {SHARED_DIR} not found (expected next to the repository)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def mlperf_models(shared_dir: Path) -> list[Path]:
    """Every MLPerf Tiny `.tflite` in the shared directory, sorted; skips when there are none."""
    models = sorted((shared_dir / "models" / "mlperf_tiny").glob("*.tflite"))
    if not models:
        pytest.skip(f"no MLPerf Tiny .tflite models under {shared_dir / 'models' / 'mlperf_tiny'}")
    return models
