"""The LiteRT weight-streaming delegate on the real LiteRT interpreter: claims, bit-exact outputs
against TFLite's reference kernels, option errors at load_delegate time, corrupt tiles."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import load_delegate

import tflm_swap
from tflm_swap import Model, SegmentIntegrityError, read_manifest, segment_model
from tflm_swap.converters import synthetic as m
from tflm_swap.delegate import (
    DelegateError,
    build_tile_table,
    default_table_path,
    delegate_library,
    delegate_options,
    delegate_stats,
    detect_rounding,
    read_tile_table,
)
from tflm_swap.interpreters import litert_interpreter, random_inputs, run_litert


def write_model(tmp_path: Path, name: str, shape, layers, dtype="float32", per_channel=True, seed=0) -> Path:
    """Build, segment and save a model; returns its path."""
    raw = m.build_model(shape, layers, dtype, per_channel=per_channel, seed=seed)
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(segment_model(Model.from_bytes(raw)))
    return path


def outputs(path: Path, delegate=None, n: int = 3, reference: bool = True, seed: int = 1):
    """Outputs of `n` seeded random inferences, with or without the delegate."""
    kwargs = {"reference_kernels": True} if reference else {"default_delegates": False}
    interpreter = litert_interpreter(model_path=str(path), delegates=[delegate] if delegate else None, **kwargs)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(seed)
    return [run_litert(interpreter, random_inputs(interpreter.get_input_details(), rng)) for _ in range(n)]


def assert_same(a, b) -> None:
    for i, (xs, ys) in enumerate(zip(a, b)):
        for x, y in zip(xs, ys):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert x.tobytes() == y.tobytes(), f"inference {i}: delegated outputs differ (max |d| = " \
                f"{np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))})"


def claimed_ops(path: Path, delegate) -> list[str]:
    """Names of the original operators the delegate replaced (one DELEGATE node per claimed operator)."""
    interpreter = litert_interpreter(model_path=str(path), delegates=[delegate], reference_kernels=True)
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()  # every node: the originals, then the DELEGATE nodes replacing some
    originals = [op for op in ops if op["op_name"] != "DELEGATE"]
    claimed = [op for op in ops if op["op_name"] == "DELEGATE"]
    names = [next(o["op_name"] for o in originals if list(o["inputs"]) == list(d["inputs"])) for d in claimed]
    assert len(names) == delegate_stats(delegate).claimed_nodes
    return sorted(names)


CASES = {
    "fc_f32_relu": ([3, 700], [m.fc(300, "RELU"), m.fc(50, "NONE")], "float32", True),
    "fc_f32_relu6_nobias": ([1, 1000], [m.fc(130, "RELU6", bias=False), m.fc(33, "RELU_N1_TO_1")], "float32", True),
    "fc_i8_per_tensor": ([2, 900], [m.fc(257, "RELU"), m.fc(40, "RELU6")], "int8", False),
    "fc_i8_per_channel": ([1, 1200], [m.fc(200, "NONE"), m.fc(64, "RELU_N1_TO_1", bias=False)], "int8", True),
    "conv_f32": ([1, 15, 13, 12], [m.conv(24, (3, 3), (2, 2), "SAME", "RELU6"),
                                   m.conv(16, (2, 3), (1, 2), "VALID", "RELU", dilation=(2, 1))], "float32", True),
    "conv_i8": ([2, 11, 9, 16], [m.conv(32, (3, 3), (1, 1), "SAME", "RELU"), m.conv(20, (1, 1))], "int8", True),
    "conv_i8_per_tensor": ([1, 9, 9, 24], [m.conv(48, (3, 3), (2, 2), "VALID", "RELU6")], "int8", False),
    "dw_f32": ([1, 14, 12, 64], [m.depthwise(2, (3, 3), (1, 1), "SAME", "RELU6"),
                                 m.depthwise(1, (5, 5), (2, 2), "VALID", dilation=(1, 2))], "float32", True),
    "dw_i8_per_tensor": ([1, 9, 9, 64], [m.depthwise(2, (3, 3), (1, 1), "VALID", "RELU6", dilation=(2, 2))],
                         "int8", False),
    "dw_i8": ([1, 10, 10, 96], [m.depthwise(2, (3, 3), (2, 1), "SAME", "RELU"), m.fc(20)], "int8", True),
    # rows / filters / taps wider than a 4096-byte tile: partial sums carried across tiles
    "fc_f32_deep": ([2, 3000], [m.fc(64, "RELU")], "float32", True),
    "fc_i8_deep": ([1, 9000], [m.fc(16, "RELU6")], "int8", True),
    "conv_f32_wide": ([1, 6, 6, 512], [m.conv(8, (3, 3), (1, 1), "SAME", "RELU")], "float32", True),
    "dw_f32_wide": ([1, 6, 6, 1100], [m.depthwise(1, (3, 3), (1, 1), "SAME")], "float32", True),
    "fc_keep_num_dims": ([2, 3, 400], [m.fc(300, "RELU", keep_num_dims=True), m.fc(20, keep_num_dims=True)],
                         "float32", True),
    "fc_i8_3d_flatten": ([2, 3, 400], [m.fc(260, "RELU")], "int8", True),
    "mixed_f32": ([1, 12, 12, 8], [m.conv(32, (3, 3)), m.relu(), m.depthwise(3, (3, 3)), m.fc(40, "RELU")],
                  "float32", True),
}


@pytest.mark.parametrize("tile_bytes", [4096, 1 << 20])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bit_identical_to_reference_kernels(tmp_path, case, tile_bytes):
    shape, layers, dtype, per_channel = CASES[case]
    path = write_model(tmp_path, case, shape, layers, dtype, per_channel)
    delegate = load_delegate(delegate_library(), delegate_options(path, tile_bytes=tile_bytes))
    assert_same(outputs(path), outputs(path, delegate))
    stats = delegate_stats(delegate)
    assert stats.claimed_nodes >= 1
    assert stats.bytes_read > 0 and stats.slot_bytes <= tile_bytes


def test_without_prefetch_one_slot(tmp_path):
    shape, layers, dtype, per_channel = CASES["fc_i8_per_channel"]
    path = write_model(tmp_path, "noprefetch", shape, layers, dtype, per_channel)
    delegate = load_delegate(delegate_library(), delegate_options(path, tile_bytes=4096, prefetch=False))
    assert_same(outputs(path), outputs(path, delegate))
    stats = delegate_stats(delegate)
    assert stats.slots == 1 and stats.buffer_bytes == 4096


def test_weights_never_touched_through_tensor_data(tmp_path):
    """Claimed weights are streamed from the file: every tile of every claimed tensor is read per invoke."""
    path = write_model(tmp_path, "reads", [1, 2000], [m.fc(500), m.fc(10)])
    delegate = load_delegate(delegate_library(), delegate_options(path, tile_bytes=65536))
    outputs(path, delegate, n=2)
    stats = delegate_stats(delegate)
    weights = (2000 * 500 + 500 * 10) * 4
    assert stats.claimed_nodes == 2
    assert stats.bytes_read == 2 * weights  # weights only; biases are read (and checked) once when prepared
    assert stats.tiles_read == 2 * (-(-2000 * 500 * 4 // 65536) + 1)


_RESIDENT = r"""
import json, sys
from pathlib import Path
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType, load_delegate
spec = json.loads(sys.argv[1])
delegates = [load_delegate(spec["library"], spec["options"])] if spec["options"] else []
it = Interpreter(model_path=spec["model"], experimental_delegates=delegates,
                 experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
it.allocate_tensors()
d = it.get_input_details()[0]
it.set_tensor(d["index"], np.ones(d["shape"], np.float32))
it.invoke()
rss, inside = 0, False
for line in Path("/proc/self/smaps").read_text().splitlines():
    if "-" in line.split(" ")[0] and len(line.split()) >= 5:
        inside = line.endswith(spec["model"])
    elif inside and line.startswith("Rss:"):
        rss += int(line.split()[1]) * 1024
print(rss)
"""


def test_claimed_weights_are_never_faulted_in(tmp_path):
    """Resident pages of the interpreter's mmap of the model: all weights without the delegate, ~none with it."""
    path = write_model(tmp_path, "resident", [1, 2048], [m.fc(2048, "RELU"), m.fc(1024)])  # 24 MiB of weights
    weights = (2048 * 2048 + 2048 * 1024) * 4

    def resident(options) -> int:
        spec = {"library": delegate_library(), "options": options, "model": str(path)}
        proc = subprocess.run([sys.executable, "-c", _RESIDENT, json.dumps(spec)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return int(proc.stdout.strip().splitlines()[-1])

    assert resident(None) >= weights
    assert resident(delegate_options(path, tile_bytes=1 << 20)) < weights // 8


def test_unclaimed_ops_stay_with_the_interpreter(tmp_path):
    # the RELU op and the small (inline) FC weights are not the delegate's; ops= and min_weight_bytes= exclude more
    layers = [m.conv(32, (3, 3)), m.relu(), m.depthwise(1, (3, 3)), m.fc(300), m.fc(3)]
    path = write_model(tmp_path, "mixed", [1, 8, 8, 16], layers)
    everything = load_delegate(delegate_library(), delegate_options(path, tile_bytes=4096))
    # depthwise weights (1152 B) and fc(3) (3600 B) are segments too (>= 1024 B); RELU never is claimed
    assert claimed_ops(path, everything) == ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "FULLY_CONNECTED"]
    only_fc = load_delegate(delegate_library(), delegate_options(path, tile_bytes=4096, ops=["FULLY_CONNECTED"]))
    assert claimed_ops(path, only_fc) == ["FULLY_CONNECTED", "FULLY_CONNECTED"]
    big = load_delegate(delegate_library(), delegate_options(path, tile_bytes=4096, min_weight_bytes=100_000))
    assert claimed_ops(path, big) == ["FULLY_CONNECTED"]
    small = write_model(tmp_path, "inline", [1, 8, 8, 16], [m.conv(2, (1, 1)), m.fc(1)])  # < 1024 B: inline
    assert claimed_ops(small, load_delegate(delegate_library(), delegate_options(small, tile_bytes=4096))) == []
    for d in (everything, only_fc, big):
        assert_same(outputs(path), outputs(path, d))


@pytest.mark.parametrize("op", ["FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D"])
def test_rounding_mode_matters_and_is_detected(tmp_path, op):
    """Per operator, the installed LiteRT's reference kernels requantise one way; the other mode differs."""
    from tflm_swap.delegate.rounding import _ROUNDING_PROBES

    mode = detect_rounding()[op]
    other = "double" if mode == "single" else "single"
    shape, ((kind, n),), per_channel = _ROUNDING_PROBES[op]
    layer = {"fc": m.fc(n), "conv": m.conv(n, (1, 1)), "dw": m.depthwise(n, (3, 3))}[kind]
    path = write_model(tmp_path, "rounding", shape, [layer], "int8", per_channel=per_channel, seed=7)
    ref = outputs(path, n=1, seed=0)
    same = load_delegate(delegate_library(), delegate_options(path, rounding={op: mode}))
    wrong = load_delegate(delegate_library(), {**delegate_options(path), "rounding": f"{op}={other}"})
    assert_same(ref, outputs(path, same, n=1, seed=0))
    assert ref[0][0].tobytes() != outputs(path, wrong, n=1, seed=0)[0][0].tobytes()


# ---------------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("delegate_small")
    path = write_model(tmp, "small", [1, 600], [m.fc(100, "RELU"), m.fc(10)])
    build_tile_table(path, 4096)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weights": None}, "option 'weights'"),
        ({"color": "blue"}, "unknown option 'color'"),
        ({"tile_bytes": "4097"}, "tile_bytes='4097' must be a multiple of 16"),
        ({"tile_bytes": "-4096"}, "tile_bytes='-4096'"),
        ({"tile_bytes": "8192"}, "was built with 4096-byte tiles"),
        ({"prefetch": "maybe"}, "prefetch='maybe'"),
        ({"ops": "FULLY_CONNECTED,SOFTMAX"}, "unknown operator 'SOFTMAX'"),
        ({"ops": ""}, "ops is empty"),
        ({"min_weight_bytes": "1e6"}, "min_weight_bytes='1e6'"),
        ({"rounding": "nearest"}, "rounding='nearest' must be 'single', 'double' or a list"),
        ({"rounding": "CONV_2D=single,SOFTMAX=double"}, "rounding='CONV_2D=single,SOFTMAX=double' must be"),
        ({"weights": "/nonexistent/model.tflite"}, "cannot open weights file '/nonexistent/model.tflite'"),
        ({"weights": "/tmp"}, "weights '/tmp' is not a regular file"),
        ({"table": "/nonexistent/model.tiles"}, "cannot open tile table '/nonexistent/model.tiles'"),
    ],
)
def test_invalid_options_fail_at_load_delegate(small_model, change, message):
    options = {"weights": str(small_model), "tile_bytes": "4096"}
    for key, value in change.items():
        if value is None:
            options.pop(key)
        else:
            options[key] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_delegate(delegate_library(), options)


def test_interpreter_on_another_model_is_refused(tmp_path, small_model):
    """Same architecture, different weights: the delegate refuses instead of streaming the wrong file."""
    other = write_model(tmp_path, "twin", [1, 600], [m.fc(100, "RELU"), m.fc(10)], seed=9)
    delegate = load_delegate(delegate_library(), delegate_options(small_model, tile_bytes=4096))
    with pytest.raises((RuntimeError, ValueError), match="interpreter's model is not .*small.tflite"):
        litert_interpreter(model_path=str(other), delegates=[delegate], reference_kernels=True).allocate_tensors()
    plain = tmp_path / "plain.tflite"
    plain.write_bytes(m.build_model([1, 600], [m.fc(100, "RELU"), m.fc(10)]))
    with pytest.raises((RuntimeError, ValueError), match="has no tflm_swap manifest"):
        litert_interpreter(model_path=str(plain), delegates=[delegate], reference_kernels=True).allocate_tensors()


def test_table_of_another_model_is_refused(tmp_path, small_model):
    other = write_model(tmp_path, "other", [1, 600], [m.fc(100, "RELU"), m.fc(10)], seed=5)
    with pytest.raises(ValueError, match="does not belong to this weights file|was built for a"):
        load_delegate(delegate_library(), {"weights": str(other), "table": str(default_table_path(small_model))})


@pytest.mark.parametrize(
    "change",
    [{"offset": 10**12}, {"size": 0}, {"offset": 16}],  # past the end, empty, inside the graph
    ids=["past_end", "empty", "in_graph"],
)
def test_inconsistent_table_records_are_refused(tmp_path, small_model, change):
    """A well-formed (CRC-valid) table whose records point outside the segments is refused by the C reader."""
    from tflm_swap.delegate.tile_table import _encode_table

    header, records = read_tile_table(default_table_path(small_model))
    first = records[0]
    size = change.get("size", first.size)
    tiles = -(-size // header["tile_bytes"])
    crcs = (tuple(first.tile_crcs) + (0,) * tiles)[:tiles]
    records[0] = dataclasses.replace(first, offset=change.get("offset", first.offset), size=size, tile_crcs=crcs)
    table = tmp_path / "bad.tiles"
    table.write_bytes(_encode_table(records, header["tile_bytes"], header["file_size"], header["graph_bytes"],
                                    header["graph_crc"], header["manifest_header"]))
    with pytest.raises(ValueError, match="record 0 .* is inconsistent"):
        load_delegate(delegate_library(), {"weights": str(small_model), "table": str(table)})


def test_truncated_table_and_model_are_refused(tmp_path, small_model):
    table = tmp_path / "short.tiles"
    table.write_bytes(default_table_path(small_model).read_bytes()[:-9])
    with pytest.raises(ValueError, match="is corrupt|describes"):
        load_delegate(delegate_library(), {"weights": str(small_model), "table": str(table)})
    short = tmp_path / "short.tflite"
    short.write_bytes(small_model.read_bytes()[:-100])
    with pytest.raises(ValueError, match="was built for a .*-byte model file"):
        load_delegate(delegate_library(), {"weights": str(short), "table": str(default_table_path(small_model))})


def test_corrupt_table_is_refused(tmp_path, small_model):
    table = tmp_path / "bad.tiles"
    data = bytearray(default_table_path(small_model).read_bytes())
    data[70] ^= 0xFF
    table.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="tile table .* is corrupt"):
        load_delegate(delegate_library(), {"weights": str(small_model), "table": str(table)})


def test_corrupt_tile_fails_the_invoke(tmp_path, small_model):
    path = tmp_path / "corrupt.tflite"
    shutil.copy(small_model, path)
    options = delegate_options(path, tile_bytes=4096)  # table from the intact file
    _, records = read_tile_table(options["table"])
    victim = max(records, key=lambda r: r.size)
    data = bytearray(path.read_bytes())
    data[victim.offset + 5 * 4096 + 17] ^= 0x40  # one bit in tile 5 of the big weights
    path.write_bytes(bytes(data))
    delegate = load_delegate(delegate_library(), options)
    interpreter = litert_interpreter(model_path=str(path), delegates=[delegate], reference_kernels=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.ones((1, 600), np.float32))
    with pytest.raises(RuntimeError, match=f"tile 5 of tensor {victim.tensor} .* fails its CRC32 check"):
        interpreter.invoke()
    with pytest.raises(RuntimeError, match="CRC32"):  # and again: the reader recovered, still refuses
        interpreter.invoke()
    with pytest.raises(SegmentIntegrityError, match="fails its CRC32 check"):  # a new table is refused too
        build_tile_table(path, 8192)


@pytest.mark.parametrize("prefetch", [True, False])
def test_corrupt_first_tile_of_a_later_node_fails_the_invoke(tmp_path, prefetch):
    """With prefetch, tile 0 of the next claimed node is read ahead (while the previous node computes)."""
    path = write_model(tmp_path, "later", [1, 600], [m.fc(300, "RELU"), m.fc(200)])
    options = delegate_options(path, tile_bytes=4096, prefetch=prefetch)
    ok = load_delegate(delegate_library(), options)
    assert_same(outputs(path), outputs(path, ok, n=4))  # consecutive invokes reuse the read-ahead tile
    second = Model.from_bytes(path.read_bytes()).op_inputs(1)[1]
    record = next(r for r in read_tile_table(options["table"])[1] if r.tensor == second)
    data = bytearray(path.read_bytes())
    data[record.offset + 100] ^= 0x80
    path.write_bytes(bytes(data))
    interpreter = litert_interpreter(model_path=str(path), reference_kernels=True,
                                     delegates=[load_delegate(delegate_library(), options)])
    interpreter.allocate_tensors()
    with pytest.raises(RuntimeError, match=f"tile 0 of tensor {second} .* fails its CRC32 check"):
        interpreter.invoke()


def test_corrupt_bias_fails_allocate_tensors(tmp_path):
    path = write_model(tmp_path, "corrupt_bias", [1, 300], [m.fc(400)])  # 1600-byte bias: in a segment
    options = delegate_options(path, tile_bytes=4096)
    model = Model.from_bytes(path.read_bytes())
    bias = model.op_inputs(0)[2]
    record = next(r for r in read_tile_table(options["table"])[1] if r.tensor == bias)
    data = bytearray(path.read_bytes())
    data[record.offset + 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match=f"tensor {bias} .the bias.*fails its CRC32 check"):
        # the delegate's kernels are prepared when it is applied (and again on allocate_tensors)
        interpreter = litert_interpreter(model_path=str(path), reference_kernels=True,
                                         delegates=[load_delegate(delegate_library(), options)])
        interpreter.allocate_tensors()


def test_python_option_errors(small_model):
    with pytest.raises(DelegateError, match="tile_bytes=100"):
        delegate_options(small_model, tile_bytes=100)
    with pytest.raises(DelegateError, match="ops="):
        delegate_options(small_model, ops=["RELU"])
    with pytest.raises(DelegateError, match="min_weight_bytes"):
        delegate_options(small_model, min_weight_bytes=-1)
    with pytest.raises(DelegateError, match="rounding="):
        delegate_options(small_model, rounding="up")
    with pytest.raises(DelegateError, match="rounding="):
        delegate_options(small_model, rounding={"SOFTMAX": "single"})
    assert delegate_options(small_model, rounding="CONV_2D=double")["rounding"] == "CONV_2D=double"
    with pytest.raises(DelegateError, match="does not exist"):
        delegate_options(small_model.with_name("missing.tflite"))


def test_table_contents_and_reuse(tmp_path):
    path = write_model(tmp_path, "table", [1, 1000], [m.fc(300), m.fc(20)])
    table = build_tile_table(path, 4096)
    mtime = table.stat().st_mtime_ns
    header, records = read_tile_table(table)
    manifest = read_manifest(path.read_bytes())
    entries = {e.buffer: (manifest.image_offset + s.offset + e.offset, e.size)
               for s in manifest.segments for e in s.entries}
    assert header["tile_bytes"] == 4096 and header["file_size"] == path.stat().st_size
    assert {(r.offset, r.size) for r in records} == set(entries.values())
    for r in records:
        assert len(r.tile_crcs) == -(-r.size // 4096)
    assert build_tile_table(path, 4096) == table and table.stat().st_mtime_ns == mtime  # reused
    build_tile_table(path, 8192)
    assert read_tile_table(table)[0]["tile_bytes"] == 8192


def test_public_api_exports():
    assert tflm_swap.delegate_library() == delegate_library()
    assert Path(delegate_library()).is_file()
    assert tflm_swap.delegate_options is delegate_options


_CRC_CHECK = """
import ctypes, sys, zlib
import numpy as np
crc = ctypes.CDLL(sys.argv[1]).tflm_swap_crc32
crc.restype, crc.argtypes = ctypes.c_uint32, [ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t]
data = np.random.default_rng(0).integers(0, 256, 70000, dtype=np.uint8).tobytes()
for start in range(9):
    for length in (0, 1, 7, 8, 9, 15, 16, 63, 64, 65, 79, 80, 128, 1000, 4096, 4097, 65536):
        chunk = data[start : start + length]
        for init in (0, 0xDEADBEEF):
            assert crc(init, chunk, len(chunk)) == zlib.crc32(chunk, init), (start, length, init)
print("ok")
"""


@pytest.mark.parametrize("pclmul", ["default", "disabled"])
def test_tile_crc_matches_zlib(pclmul):
    """The delegate's CRC32 (PCLMULQDQ folding, or slice-by-8) equals zlib.crc32 for any length and alignment."""
    env = {**os.environ, "TFLM_SWAP_NO_PCLMUL": "1"} if pclmul == "disabled" else dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", _CRC_CHECK, delegate_library()], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_cli_delegate_prints_loadable_options(tmp_path, capsys):
    from tflm_swap.cli import main

    path = write_model(tmp_path, "cli", [1, 600], [m.fc(100)])
    assert main(["delegate", str(path), "--tile-bytes", "8192", "--rounding", "double"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["library"] == delegate_library() and printed["options"]["tile_bytes"] == "8192"
    delegate = load_delegate(printed["library"], printed["options"])
    assert_same(outputs(path), outputs(path, delegate))
    assert main(["delegate", str(tmp_path / "missing.tflite")]) == 2
    plain = tmp_path / "plain.tflite"
    plain.write_bytes(m.build_model([1, 8], [m.fc(4)]))
    assert main(["delegate", str(plain)]) == 2
    assert "no 'tflm_swap' manifest" in capsys.readouterr().err


def test_load_delegate_shortcut_and_stats_errors(tmp_path, small_model):
    from tflm_swap.delegate import load_delegate as load

    delegate = load(small_model, tile_bytes=4096, rounding="single")
    assert_same(outputs(small_model), outputs(small_model, delegate))
    assert delegate_stats(delegate).claimed_nodes == 2  # both FCs: fc(10)'s 4000-byte weights are a segment too
    with pytest.raises(DelegateError, match="backend="):
        load(small_model, backend="onnx")
