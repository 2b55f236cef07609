"""Refactorings change no output byte: what the converters write for the MLPerf Tiny models matches
the fingerprints recorded before (tests/data/golden_artifacts.json; see golden_artifacts.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import require_model
from golden_artifacts import MODELS, bundle_artifact, model_artifacts

pytestmark = pytest.mark.native  # builds or runs native code: left out of `-m "not native"`

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden_artifacts.json").read_text())


@pytest.mark.parametrize("name", MODELS)
def test_model_artifacts_unchanged(name: str, tmp_path: Path) -> None:
    pytest.importorskip("tflite_micro", reason="TFLM projects size their arena with tflite-micro when "
                                                "the host TFLM is missing")
    assert model_artifacts(require_model(name), tmp_path) == GOLDEN[name]


def test_bundle_members_unchanged() -> None:
    assert bundle_artifact() == GOLDEN["bundle"]
