"""The stages of a conversion hand each other parsed models: `convert --target tflm` parses each
distinct model (the input, the segmented model, the rewritten graph) once, not once per stage."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections import Counter
from pathlib import Path

from conftest import require_model

from tflm_swap.cli import main
from tflm_swap.format.model import Model


def test_convert_to_tflm_parses_each_model_once(tmp_path: Path, monkeypatch) -> None:
    parsed: Counter[str] = Counter()
    real = Model.from_bytes.__func__

    def counting(cls, data, *args, **kwargs):
        parsed[hashlib.sha256(bytes(data)).hexdigest()] += 1
        return real(cls, data, *args, **kwargs)

    monkeypatch.setattr(Model, "from_bytes", classmethod(counting))
    with contextlib.redirect_stdout(io.StringIO()):
        status = main(["convert", str(require_model("kws_ref_model")), "--target", "tflm", "--arena-size", "40000",
                       "-o", str(tmp_path / "project")])
    assert status == 0
    assert len(parsed) == 3, f"expected the input, the segmented model and the rewritten graph: {parsed}"
    assert max(parsed.values()) == 1, f"a model was parsed more than once: {sorted(parsed.values())}"
