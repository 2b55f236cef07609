"""The scripts in examples/ run end to end with small settings and check what they claim.

Each example is imported from its file (examples/ is not a package) and its `main([...])` is called
in-process; the examples import helpers from each other, so examples/ goes on sys.path.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from conftest import require_model, require_tflm_arena_tools

import tflm_swap

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def examples(monkeypatch):
    """A loader of example modules by name (examples/NAME.py)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module


def _needs_training() -> None:
    pytest.importorskip("keras", reason="the example trains a Keras model (pip install .[convert])")
    pytest.importorskip("sklearn", reason="the example uses scikit-learn's digits (pip install .[convert])")


def _result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


def test_keras_to_budget_runs_bit_identical_below_the_whole_weights(examples, tmp_path):
    _needs_training()
    assert examples("keras_to_budget").main(["--out", str(tmp_path), "--epochs", "3", "--samples", "40"]) == 0
    r = _result(tmp_path)
    assert r["bit_identical"]
    assert r["peak_weight_bytes"] <= r["ram_budget"] < r["weights_bytes"]
    assert r["stages"] > 1
    manifest = tflm_swap.verify((tmp_path / "digits_int8.swap.tflite").read_bytes())
    assert manifest.external_bytes == r["weights_bytes"]
    assert (tmp_path / "digits_int8.tflite").is_file()


def _check_runs(out: Path) -> dict:
    r = _result(out)
    runs = [run for run in r["runs"].values() if not run.get("xnnpack_paged")]
    assert [run["bit_identical"] for run in runs] == [True, True]
    for run in runs:
        assert run["peak_weight_bytes"] <= run["ram_budget"] < r["weights_bytes"]
    assert runs[1]["ram_budget"] <= runs[0]["ram_budget"]  # the minimum is at most 50%
    return r


def _check_paged_run(r: dict) -> None:
    """The XNNPACK run with paged stages: bit-identical to stock XNNPACK, within its one-copy
    budget (XNNPACK's int8 packing holds up to 8% more than the raw weights it was planned as)."""
    paged = r["runs"]["XNNPACK, paged stages, minimum budget"]
    assert paged["xnnpack_paged"] and paged["bit_identical"]
    assert 0 < paged["peak_weight_bytes"] <= paged["ram_budget"] * 1.1


def test_run_existing_tflite_on_vww(examples, tmp_path):
    vww = require_model("vww_96_int8")
    assert examples("run_existing_tflite").main([str(vww), "--out", str(tmp_path), "--invokes", "4"]) == 0
    r = _check_runs(tmp_path)
    _check_paged_run(r)
    assert r["runs"]["50% of the weights"]["ram_budget"] == r["weights_bytes"] // 2
    tflm_swap.verify((tmp_path / "vww_96_int8.swap.tflite").read_bytes())


def test_run_existing_tflite_falls_back_to_digits_without_shared(examples, tmp_path, monkeypatch):
    _needs_training()
    module = examples("run_existing_tflite")
    monkeypatch.setattr(module, "SHARED_MODELS", tmp_path / "no_shared_here")
    assert module.main(["--out", str(tmp_path), "--invokes", "4"]) == 0
    r = _check_runs(tmp_path)
    _check_paged_run(r)
    assert Path(r["model"]) == tmp_path / "digits_int8.tflite"


def _host_toolchain() -> bool:
    from tflm_swap.micro.toolchain import NativeToolError, compiler, host_tflm

    try:
        compiler("gcc"), compiler("g++"), host_tflm()
    except NativeToolError:
        return False
    return True


def test_tflm_project_generates_builds_and_runs_kws(examples, tmp_path):
    require_tflm_arena_tools()
    kws = require_model("kws_ref_model")
    assert examples("tflm_project").main([str(kws), "--out", str(tmp_path), "--prefix", "net"]) == 0
    project = tmp_path / "project"
    for name in ("net_model_data.cc", "net_model_data.h", "net_tswap.h", "net_image.bin", "main.cc",
                 "tswap/tswap_micro.c", "tswap/tswap_tflm.cc"):
        assert (project / name).is_file(), name
    r = _result(tmp_path)
    assert f"#define NET_ARENA_SIZE {r['arena_size']}u" in (project / "net_tswap.h").read_text()
    assert r["built"] == _host_toolchain()
    if r["built"]:
        assert r["arena_used_bytes"] <= r["arena_size"]
        assert r["flash_bytes_read"] == r["flash_bytes_per_inference"]
        assert r["bit_identical"]  # the generated example matches the same TFLM on the original model


def test_cascade_digits_builds_a_smaller_router_and_a_bundle(examples, tmp_path):
    _needs_training()
    assert examples("cascade_digits").main(["--out", str(tmp_path), "--epochs", "4", "--specialist-epochs", "1",
                                            "--n-groups", "2", "--train-samples", "700"]) == 0
    from tflm_swap.cascade import CascadeBundle

    bundle = CascadeBundle.load(tmp_path / "digits.cascade")  # checks members, CRCs and groups
    r = _result(tmp_path)
    assert len(r["groups"]) == 2 and sorted(c for g in r["groups"] for c in g) == list(range(10))
    assert bundle.groups == r["groups"]
    figures = r["results"]["digits (LiteRT)"]
    assert figures["router_weight_pct"] <= 10.0
    assert figures["used_pct"] < 100.0
    assert figures["cascade_top1"] > 0.5  # far above chance (0.1) even after a few epochs


def test_dense_layers_in_tiles_runs_below_the_untiled_minimum(examples, tmp_path):
    pytest.importorskip("keras", reason="the example builds a Keras model (pip install .[convert])")
    main = examples("dense_layers_in_tiles").main
    assert main(["--out", str(tmp_path), "--width", "128", "--tile-kib", "64", "--samples", "5"]) == 0
    r = _result(tmp_path)
    assert r["tiled_layers"] == 4 and r["tiled_min_budget"] < r["untiled_min_budget"] / 3
    for run in r["runs"].values():
        assert run["bit_identical"] and run["peak_weight_bytes"] <= run["ram_budget"]
