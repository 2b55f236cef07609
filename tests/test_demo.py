"""The main job (the README's first command) end to end, with two training epochs per phase."""

from __future__ import annotations

import pytest

pytest.importorskip("keras", reason="the demo trains a Keras model (pip install .[convert])")
pytest.importorskip("sklearn", reason="the demo uses scikit-learn's digits (pip install .[convert])")


def test_demo_runs_end_to_end(tmp_path, capsys):
    from tflm_swap.cascade import CascadeBundle
    from tflm_swap.demo import run_demo

    result = run_demo(tmp_path, epochs=2, cascade_epochs=2)
    assert result["float32"]["bit_identical"] and result["int8"]["bit_identical"]
    assert result["int8"]["accuracy"] > 0.5  # two epochs on digits already learn a lot
    for name in ("digits_int8.swap.tflite", "digits_int8.memory.png", "digits_int8.graph.tflite",
                 "digits_int8.image.bin", "digits_float32.tflite", "digits.cascade"):
        assert (tmp_path / name).stat().st_size > 0
    out = capsys.readouterr().out
    assert "planner predicts" in out and "lower bound" in out
    assert "stages streamed" in out and "bit-identical on 50 inputs: True" in out
    cascade = result["cascade"]
    bundle = CascadeBundle.load(tmp_path / "digits.cascade")
    assert cascade["groups"] == bundle.groups and cascade["cascade_top1"] > 0.3
    assert cascade["router_weight_pct"] <= 10.0 and cascade["router_macs_pct"] <= 10.0
    assert "| cascade top-1 |" in out and "weights used per inference" in out
    if "TFLite Micro cascade run skipped" not in out:
        assert abs(cascade["tflm_cascade_top1"] - cascade["cascade_top1"]) <= 0.02
