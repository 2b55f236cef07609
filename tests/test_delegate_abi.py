"""The delegate's own declaration of TFLite's C ABI against TFLite's headers, and the delegate on a
second runtime: tflite-runtime 2.14 in a cached clean virtual environment with numpy < 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from upstream_decode import upstream_decode_layout

import tflm_swap
from tflm_swap import Model, segment_model
from tflm_swap.converters import synthetic as m
from tflm_swap.delegate import delegate_library, delegate_options
from tflm_swap.delegate.rounding import _ROUNDING_PROBES

pytestmark = pytest.mark.native  # builds or runs native code: left out of `-m "not native"`

REPO = Path(__file__).resolve().parents[1]
LITERT_SRC = REPO / "delegates" / "litert"
CACHE = Path(os.environ.get("TFLM_SWAP_CACHE", Path.home() / ".cache" / "tflm_swap"))
TFLITE_RUNTIME = "tflite-runtime==2.14.0"
VENV = CACHE / f"venv-tflite-runtime-2.14-py{sys.version_info.major}{sys.version_info.minor}"


def _compiler() -> str:
    for name in ((sysconfig.get_config_var("CC") or "").split()[:1] + ["cc", "gcc", "clang"]):
        if name and shutil.which(name):
            return name
    pytest.skip("no C compiler found")


def _layout(tmp_path: Path, name: str, *flags: str) -> str:
    exe = tmp_path / name
    subprocess.run([_compiler(), "-std=c11", "-Wall", "-Werror", f"-I{LITERT_SRC}", *flags, "-o", str(exe),
                    str(LITERT_SRC / "abi_layout.c")], check=True, capture_output=True, text=True)
    return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout


def test_abi_layout_matches_tflite_headers(tmp_path):
    """Every offset, size and enum value the delegate uses equals TFLite's (headers shipped by xmos-ai-tools)."""
    xmos = pytest.importorskip("xmos_ai_tools", reason="xmos-ai-tools (it ships TFLite C headers) is not installed")
    include = Path(xmos.__file__).parent / "runtime" / "include"
    if not (include / "tensorflow" / "lite" / "core" / "c" / "common.h").is_file():
        pytest.skip(f"no tensorflow/lite/core/c/common.h under {include}")
    ours = _layout(tmp_path, "ours")
    theirs = _layout(tmp_path, "tflite", "-DTSWAP_USE_TFLITE_HEADERS", f"-I{include}")
    assert ours.count("\n") > 100
    # xmos-ai-tools' TFLM fork adds IsVariableTensor and IsConstantTensor to TfLiteContext before
    # GetModelMetadata; upstream TFLite (LiteRT, tflite-runtime) has GetModelMetadata right after
    # GetEvalTensor. Our header follows upstream; the runtime tests exercise that member for real.
    key = "TfLiteContext.GetModelMetadata"
    ours_md, theirs_md = _member(ours, key), _member(theirs, key)
    assert ours_md == (_member(ours, "TfLiteContext.GetEvalTensor")[0] + 8, 8)
    assert theirs_md == (ours_md[0] + 16, 8)
    assert _without(ours, key) == _without(theirs, key)


def _member(layout: str, key: str) -> tuple[int, int]:
    line = next(row for row in layout.splitlines() if row.split()[0] == key)
    return int(line.split()[1]), int(line.split()[2])


def _without(layout: str, key: str) -> list[str]:
    return [row for row in layout.splitlines() if row.split()[0] != key]


# --------------------------------------------------------------------- tflite-runtime 2.14
def _venv_python() -> Path:
    """The cached venv's python with numpy<2 and tflite-runtime 2.14 (created on first use)."""
    python = VENV / "bin" / "python"
    ready = VENV / ".tflm_swap_ready"
    if ready.is_file() and python.is_file():
        return python
    shutil.rmtree(VENV, ignore_errors=True)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    made = subprocess.run([sys.executable, "-m", "venv", str(VENV)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.fail(f"cannot create a virtual environment at {VENV} (python -m venv): {made.stderr[-1000:]}")
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "numpy<2",
                          TFLITE_RUNTIME], capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        shutil.rmtree(VENV, ignore_errors=True)
        text = pip.stderr + pip.stdout
        if any(s in text for s in ("No matching distribution", "Could not find a version", "NewConnectionError",
                                   "Temporary failure in name resolution", "Network is unreachable",
                                   "ProxyError", "Max retries exceeded")):
            pytest.skip(f"pip cannot fetch {TFLITE_RUNTIME} and numpy<2 here: {text.strip().splitlines()[-1]}")
        pytest.fail(f"installing {TFLITE_RUNTIME} into {VENV} failed:\n{text}")
    ready.write_text(TFLITE_RUNTIME)
    return python


# Runs inside the venv: only numpy + tflite_runtime there, never tflm_swap.
_CHILD = r"""
import json, sys
import numpy as np
import tflite_runtime
from tflite_runtime.interpreter import Interpreter, OpResolverType, load_delegate
job = json.load(open(sys.argv[1]))
def run(path, delegate=None):
    it = Interpreter(model_path=path, experimental_delegates=[delegate] if delegate else None,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    rng = np.random.default_rng(1)
    outs = []
    for _ in range(3):
        for d in it.get_input_details():
            if d["dtype"] == np.int8:
                x = rng.integers(-128, 128, size=d["shape"]).astype(np.int8)
            else:
                x = rng.standard_normal(d["shape"]).astype(np.float32)
            it.set_tensor(d["index"], x)
        it.invoke()
        outs.append(b"".join(it.get_tensor(d["index"]).tobytes() for d in it.get_output_details()))
    return outs
result = {"version": tflite_runtime.__version__, "numpy": np.__version__, "cases": {}}
for name, case in job["cases"].items():
    stock = run(case.get("reference", case["path"]))  # a DECODE-layout model: its decoded reference
    result["cases"][name] = {mode: run(case["path"], load_delegate(job["library"], {**case["options"],
                             "rounding": mode})) == stock for mode in ("single", "double")}
try:  # the delegate reads the model's metadata through TfLiteContext.GetModelMetadata
    first = next(iter(job["cases"].values()))
    Interpreter(model_path=job["other_model"], experimental_delegates=[load_delegate(job["library"], first["options"])])
    result["other_model_error"] = None
except (RuntimeError, ValueError) as exc:
    result["other_model_error"] = str(exc)
try:
    load_delegate(job["library"], {"weights": "/nonexistent.tflite"})
    result["missing_weights_error"] = None
except ValueError as exc:
    result["missing_weights_error"] = str(exc)
print(json.dumps(result))
"""


def test_delegate_on_tflite_runtime_214(tmp_path):
    """Loads in tflite-runtime 2.14 and matches its reference kernels bit for bit (float and int8, and a
    DECODE-layout model against its decoded reference)."""
    python = _venv_python()
    cases = {
        "fc_f32": ([2, 700], [m.fc(300, "RELU"), m.fc(50)], "float32", True),
        "fc_i8": ([8, 64], [m.fc(2048, "RELU6")], "int8", False),
        "conv_dw_f32": ([1, 12, 10, 8], [m.conv(32, (3, 3), (2, 2)), m.depthwise(2, (3, 3), activation="RELU")],
                        "float32", True),
        "conv_dw_i8": ([1, 12, 10, 16], [m.conv(32, (3, 3), (1, 1), "SAME", "RELU"), m.depthwise(2, (3, 3))],
                       "int8", True),
    }
    makers = {"fc": m.fc, "conv": lambda n: m.conv(n, (1, 1)), "dw": lambda n: m.depthwise(n, (3, 3))}
    for op, (shape, ((kind, n),), per_channel) in _ROUNDING_PROBES.items():  # one int8 op, many rounding ties
        cases[f"probe_{op}"] = (shape, [makers[kind](n)], "int8", per_channel)
    job = {"library": delegate_library(), "cases": {}}
    for name, (shape, layers, dtype, per_channel) in cases.items():
        path = tmp_path / f"{name}.tflite"
        raw = m.build_model(shape, layers, dtype, per_channel=per_channel, seed=7 if name.startswith("probe") else 3)
        path.write_bytes(segment_model(Model.from_bytes(raw)))
        job["cases"][name] = {"path": str(path), "options": delegate_options(path, tile_bytes=4096, rounding="double")}
    reference = tflm_swap.compress(m.build_model(*cases["conv_dw_i8"][:3], per_channel=True, seed=3), 3,
                                   per_channel=False)
    (tmp_path / "reference.tflite").write_bytes(reference)
    path = tmp_path / "decode.tflite"
    path.write_bytes(segment_model(upstream_decode_layout(reference, 3, per_channel=True)))
    job["cases"]["decode_i8"] = {"path": str(path), "reference": str(tmp_path / "reference.tflite"),
                                 "options": delegate_options(path, tile_bytes=4096, rounding="double")}
    job["other_model"] = str(tmp_path / "fc_f32_other.tflite")
    raw = m.build_model(*cases["fc_f32"][:3], per_channel=True, seed=4)
    Path(job["other_model"]).write_bytes(segment_model(Model.from_bytes(raw)))
    (tmp_path / "job.json").write_text(json.dumps(job))
    proc = subprocess.run([str(python), "-c", _CHILD, str(tmp_path / "job.json")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["version"].startswith("2.14") and result["numpy"].startswith("1.")
    assert result["cases"]["fc_f32"] == {"single": True, "double": True}
    assert result["cases"]["conv_dw_f32"] == {"single": True, "double": True}
    # tflite-runtime 2.14's reference kernels use gemmlowp double rounding for all three operators
    # (LiteRT 2.3: single rounding for FULLY_CONNECTED)
    assert result["cases"]["fc_i8"] == {"single": False, "double": True}
    assert result["cases"]["conv_dw_i8"]["double"] is True
    assert result["cases"]["decode_i8"]["double"] is True  # TFLM_DECODE pairs, claimed and decoded there too
    for op in _ROUNDING_PROBES:
        assert result["cases"][f"probe_{op}"] == {"single": False, "double": True}, op
    assert "cannot open weights file '/nonexistent.tflite'" in (result["missing_weights_error"] or "")
    assert "interpreter's model is not" in (result["other_model_error"] or "")
