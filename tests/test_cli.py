"""The command line, run in-process and as `python -m tflm_swap`."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib

import pytest

from tflm_swap import read_manifest
from tflm_swap.cli import main


@pytest.fixture()
def kws(mlperf_models, tmp_path):
    src = tmp_path / "kws.tflite"
    src.write_bytes(next(p for p in mlperf_models if p.name == "kws_ref_model.tflite").read_bytes())
    return src


def test_convert_verify_manifest_split_join(kws, tmp_path, capsys):
    out = tmp_path / "kws.swap.tflite"
    assert main(["convert", str(kws), "-o", str(out), "--graph", str(tmp_path / "g.tflite"),
                 "--image", str(tmp_path / "i.bin")]) == 0
    assert main(["verify", str(out)]) == 0
    assert "CRC32 match" in capsys.readouterr().out
    assert main(["manifest", str(out)]) == 0
    dumped = json.loads(capsys.readouterr().out)
    assert dumped["format"] == "tflm_swap" and dumped == read_manifest(out.read_bytes()).to_dict()
    assert main(["join", str(tmp_path / "g.tflite"), str(tmp_path / "i.bin"), "-o", str(tmp_path / "j.tflite")]) == 0
    assert (tmp_path / "j.tflite").read_bytes() == out.read_bytes()
    assert main(["split", str(out), "--graph", str(tmp_path / "g2"), "--image", str(tmp_path / "i2")]) == 0
    assert (tmp_path / "g2").read_bytes() == (tmp_path / "g.tflite").read_bytes()


def test_inspect_prints_tables_and_writes_a_plot(kws, tmp_path, capsys):
    times = tmp_path / "times.json"
    times.write_text(json.dumps([1e-3] * 13))
    plot = tmp_path / "mem.png"
    assert main(["inspect", str(kws), "--op-times", str(times), "--plot", str(plot),
                 "--ram-budget", "40KiB", "--flash-bandwidth", "20MB/s"]) == 0
    text = capsys.readouterr().out
    for needle in ("lower bound", "prefetch_1", "DEPTHWISE_CONV_2D", "with overlap", "20.0 MB/s"):
        assert needle in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_fits_or_names_the_minimum(kws, capsys):
    assert main(["plan", str(kws), "--ram-budget", "1MiB"]) == 0
    assert "fits in 1.0 MiB with strategy 'resident'" in capsys.readouterr().out
    assert main(["plan", str(kws), "--ram-budget", "1KiB"]) == 1
    out = capsys.readouterr().out
    assert "does not fit" in out and "minimum" in out


def test_errors_are_clear_and_inputs_are_safe(kws, tmp_path, capsys):
    original = kws.read_bytes()
    assert main(["convert", str(kws), "-o", str(kws)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert kws.read_bytes() == original
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"this is not a model at all")
    assert main(["inspect", str(junk), "--no-latency", "--no-plot"]) == 2
    assert "not a TFLite flatbuffer" in capsys.readouterr().err
    assert main(["manifest", str(kws)]) == 2
    assert "no 'tflm_swap' manifest" in capsys.readouterr().err
    assert main(["plan", str(kws), "--ram-budget", "lots"]) == 2
    assert "cannot read size" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "tflm_swap", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("convert", "inspect", "plan", "manifest", "verify", "split", "join", "demo"):
        assert command in out.stdout


def test_run_and_stages_commands(kws, tmp_path, capsys):
    seg = tmp_path / "kws.swap.tflite"
    assert main(["convert", str(kws), "-o", str(seg)]) == 0
    assert main(["run", str(seg), "--ram-budget", "18KiB", "--invokes", "5"]) == 0
    out = capsys.readouterr().out
    assert "bit-identical to stock LiteRT on 5 random inputs: True" in out and "stage 1:" in out
    assert main(["run", str(seg), "--ram-budget", "1KiB"]) == 2
    assert "minimum budget" in capsys.readouterr().err
    assert main(["stages", str(seg), "--ram-budget", "9KiB", "--out", str(tmp_path / "st")]) == 0
    index = json.loads((tmp_path / "st" / "stages.json").read_text())["stages"]
    assert len(index) > 1 and all((tmp_path / "st" / s["file"]).stat().st_size > 0 for s in index)
    assert index[0]["ops"][0] == 0 and index[-1]["ops"][1] == 12
    for stage in index:  # size and CRC32 recorded, to check copies of the stage files
        data = (tmp_path / "st" / stage["file"]).read_bytes()
        assert stage["bytes"] == len(data) and stage["crc32"] == zlib.crc32(data)
    available = set(index[0]["inputs"])  # stages chain by tensor name
    for stage in index:
        assert set(stage["inputs"]) <= available
        available |= set(stage["outputs"])
    capsys.readouterr()
    assert main(["run", str(seg), "--stage-files", str(tmp_path / "st"), "--invokes", "3"]) == 0
    out = capsys.readouterr().out
    assert f"stages: {len(index)} " in out and "bit-identical to stock LiteRT on 3 random inputs: True" in out
