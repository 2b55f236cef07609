"""`tflm-swap cascade build|eval|run` on a tiny digits file (real training, LiteRT and TFLM)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("keras", reason="cascades train Keras models (pip install .[convert])")
pytest.importorskip("sklearn", reason="cascades cluster classes with scikit-learn (pip install .[convert])")

from tflm_swap.cascade import CascadeBundle  # noqa: E402
from tflm_swap.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from sklearn.datasets import load_digits

    d = load_digits()
    tmp = tmp_path_factory.mktemp("cascade_cli")
    x = (d.images * 255 / 16).astype(np.uint8)[:500]  # uint8 [N, 8, 8]: scaled and given a channel axis
    np.savez(tmp / "digits.npz", x=x, y=d.target[:500])
    bundle = tmp / "digits.cascade"
    assert main(["cascade", "build", "--data", str(tmp / "digits.npz"), "-o", str(bundle), "--n-test", "100",
                 "--n-groups", "2", "--epochs", "3", "--router-epochs", "3", "--sparsity-epochs", "1",
                 "--finetune-epochs", "1", "--threshold", "auto", "--target-share", "0.6", "--quiet"]) == 0
    return tmp, bundle


def test_build_writes_a_bundle_and_evaluates(files, capsys):
    tmp, bundle = files
    assert bundle.stat().st_size > 0
    choice = CascadeBundle.load(bundle).stats["threshold_choice"]  # --threshold auto
    assert choice["target_share"] == 0.6 and choice["threshold"] == CascadeBundle.load(bundle).threshold
    assert choice["threshold"] == 0.0 or choice["expected_weight_share"] <= 0.6
    assert main(["cascade", "eval", str(bundle), "--data", str(tmp / "digits.npz"), "--last", "100",
                 "--json", str(tmp / "eval.json"), "--plot", str(tmp / "tradeoff.png")]) == 0
    out = capsys.readouterr().out
    assert "| cascade top-1 |" in out and "| router top-1 (groups) |" in out and "| params:" in out
    assert (tmp / "tradeoff.png").stat().st_size > 0
    figures = json.loads((tmp / "eval.json").read_text())
    assert figures["n"] == 100 and figures["n_groups"] == 2 and 0 <= figures["cascade_top1"] <= 1


@pytest.mark.parametrize("backend", ["litert", "tflm"])
def test_run_reports_bytes_loaded(files, capsys, backend):
    if backend == "tflm":
        pytest.importorskip("tflite_micro", reason="needs the TFLite Micro interpreter")
    tmp, bundle = files
    assert main(["cascade", "run", str(bundle), "--data", str(tmp / "digits.npz"), "--limit", "8",
                 "--backend", backend, "--prefetch", "--cache", "lfu"]) == 0
    out = capsys.readouterr().out
    assert out.count("loaded ") == 8 and '"inferences": 8' in out


def test_cli_errors_are_clear(files, capsys, tmp_path):
    tmp, bundle = files
    (tmp_path / "bad.cascade").write_bytes(b"garbage")
    assert main(["cascade", "eval", str(tmp_path / "bad.cascade"), "--data", str(tmp / "digits.npz")]) == 2
    assert "not a cascade bundle" in capsys.readouterr().err
    assert main(["cascade", "run", str(bundle), "--data", str(tmp / "digits.npz"), "--ram-budget", "1KiB"]) == 2
    assert "too small" in capsys.readouterr().err
    np.savez(tmp_path / "nolabels.npz", images=np.zeros((3, 8, 8)))
    assert main(["cascade", "eval", str(bundle), "--data", str(tmp_path / "nolabels.npz")]) == 2
    assert "lacks arrays" in capsys.readouterr().err
