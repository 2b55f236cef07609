"""Keras / SavedModel / .tflite in, segmented model out: bit-identical on LiteRT."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import assert_bit_identical

import tflm_swap
from tflm_swap import TflmSwapError, read_manifest

keras = pytest.importorskip("keras", reason="conversion tests need TensorFlow/Keras (pip install .[convert])")


def conv_model():
    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Conv2D(48, 3, activation="relu"),
        keras.layers.DepthwiseConv2D(3, activation="relu6"),
        keras.layers.Conv2D(64, 1),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])


def dense_model():
    keras.utils.set_random_seed(2)
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(128, activation="tanh"),
        keras.layers.Dense(128),
        keras.layers.Dense(8, activation="softmax"),
    ])


def _calibration(model, n=32):
    return np.random.default_rng(0).standard_normal((n, *model.input_shape[1:])).astype(np.float32)


@pytest.mark.parametrize("build", [conv_model, dense_model], ids=["conv", "dense"])
@pytest.mark.parametrize("quantization", ["float32", "dynamic", "int8"])
def test_keras_models_convert_and_stay_bit_identical(build, quantization):
    model = build()
    data = _calibration(model) if quantization == "int8" else None
    result = tflm_swap.convert(model, representative_data=data, quantization=quantization)
    m = tflm_swap.verify(result.data)
    assert len(m.segments) >= 2, "expected several weight segments"
    assert m.source_sha256 == __import__("hashlib").sha256(result.original).hexdigest()
    assert_bit_identical(result.original, result.data, n=20)
    types = {d["dtype"] for d in _input_details(result.data)}
    assert types == ({np.int8} if quantization == "int8" else {np.float32})


def _input_details(data):
    from tflm_swap.interpreters import litert_interpreter

    return litert_interpreter(data).get_input_details()


def test_int8_is_the_default_when_data_is_given():
    model = dense_model()
    result = tflm_swap.convert(model, representative_data=_calibration(model))
    assert {d["dtype"] for d in _input_details(result.original)} == {np.int8}
    assert {d["dtype"] for d in _input_details(tflm_swap.convert(model).original)} == {np.float32}


def test_savedmodel_and_keras_file_inputs(tmp_path):
    model = dense_model()
    model.export(str(tmp_path / "saved"), verbose=False)
    model.save(tmp_path / "m.keras")
    from_saved = tflm_swap.convert(tmp_path / "saved")
    from_file = tflm_swap.convert(tmp_path / "m.keras")
    assert_bit_identical(from_saved.original, from_saved.data)
    assert_bit_identical(from_file.original, from_file.data)
    with pytest.raises(TflmSwapError, match="SavedModel"):
        tflm_swap.convert(tmp_path)  # a directory without saved_model.pb
    with pytest.raises(TflmSwapError, match="int8 quantization needs"):
        tflm_swap.convert(model, quantization="int8")
    with pytest.raises(TflmSwapError, match="cannot convert"):
        tflm_swap.convert(12345)


def test_save_is_atomic_and_never_overwrites_the_input(tmp_path, mlperf_models):
    src = tmp_path / "kws.tflite"
    src.write_bytes(next(p for p in mlperf_models if p.name == "kws_ref_model.tflite").read_bytes())
    result = tflm_swap.convert(src)
    with pytest.raises(TflmSwapError, match="overwrite"):
        result.save(src, inputs=(src,))
    assert src.read_bytes() == result.original
    out = result.save(tmp_path / "out" / "kws.swap.tflite", inputs=(src,))
    assert out.read_bytes() == result.data
    assert sorted(p.name for p in out.parent.iterdir()) == ["kws.swap.tflite"]
    graph, image = result.split()
    assert read_manifest(graph).image_size == len(image)


def test_tflite_path_needs_no_tensorflow(mlperf_models):
    """Working on an existing .tflite must not import TensorFlow (runtime path invariant)."""
    path = next(p for p in mlperf_models if p.name == "kws_ref_model.tflite")
    code = textwrap.dedent(f"""
        import sys
        import tflm_swap
        from tflm_swap.interpreters import litert_interpreter
        r = tflm_swap.convert({str(path)!r})
        tflm_swap.plan_model(tflm_swap.Model.from_bytes(r.data))
        litert_interpreter(r.data).allocate_tensors()
        assert "tensorflow" not in sys.modules, sorted(m for m in sys.modules if "tensorflow" in m)[:5]
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
