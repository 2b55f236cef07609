"""The main job (the README's first command) end to end, with one training epoch."""

from __future__ import annotations

import pytest

pytest.importorskip("keras", reason="the demo trains a Keras model (pip install .[convert])")
pytest.importorskip("sklearn", reason="the demo uses scikit-learn's digits (pip install .[convert])")


def test_demo_runs_end_to_end(tmp_path, capsys):
    from tflm_swap.demo import run_demo

    result = run_demo(tmp_path, epochs=1)
    assert result["float32"]["bit_identical"] and result["int8"]["bit_identical"]
    assert result["int8"]["accuracy"] > 0.5  # one epoch on digits already learns a lot
    for name in ("digits_int8.swap.tflite", "digits_int8.memory.png", "digits_int8.graph.tflite",
                 "digits_int8.image.bin", "digits_float32.tflite"):
        assert (tmp_path / name).stat().st_size > 0
    out = capsys.readouterr().out
    assert "planner predicts" in out and "lower bound" in out
    assert "stages streamed" in out and "bit-identical on 50 inputs: True" in out
