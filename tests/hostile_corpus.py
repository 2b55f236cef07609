"""A corpus of hostile cases for tflm_swap: malformed, truncated, bit-flipped and forged models,
flash images and cascade bundles, bad data files, bad arguments for every subcommand, outputs aimed
at inputs, and writes that fail (disk full) or are interrupted, run through the CLI (in-process,
`tflm_swap.cli.main`) and the public loaders.

Every case must end in a clear error: the CLI returns 2 (1 for a failed check) with one line on
stderr and no traceback; a loader raises a TflmSwapError. Around every case the sandbox is watched:
no file may appear anywhere in it (so nothing is written outside a target, and no artifact is
written from corrupt input), no input may change, and the case must finish within TIMEOUT seconds.

    python tests/hostile_corpus.py            # run the corpus, print the table
    python tests/hostile_corpus.py --table    # ... and write it into docs/RELIABILITY.md

tests/test_hostile.py runs the same corpus under pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import struct
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python tests/hostile_corpus.py` from anywhere
    sys.path.insert(0, str(ROOT))

import tflm_swap  # noqa: E402
from tflm_swap import Model, TflmSwapError, segment_model  # noqa: E402
from tflm_swap.cascade.bundle import CascadeBundle  # noqa: E402
from tflm_swap.cli import main as cli_main  # noqa: E402
from tflm_swap.format.manifest import MANIFEST_NAME, Manifest, find_metadata, read_manifest  # noqa: E402

MLPERF_DIR = ROOT.parent / "shared" / "models" / "mlperf_tiny"
MODELS = ("kws_ref_model", "pretrainedResnet_quant")
SEED = 16
TIMEOUT = 30.0  # seconds per case
RELIABILITY = ROOT / "docs" / "RELIABILITY.md"
TABLE_BEGIN, TABLE_END = "<!-- hostile-corpus-table:begin -->", "<!-- hostile-corpus-table:end -->"


@dataclass
class Case:
    """One hostile case: a CLI command (`argv`) or a loader call (`call`), with the hostile files
    it reads (written into the sandbox's `in/` before it runs)."""

    group: str
    name: str
    argv: list[str] | None = None
    call: Callable[[], object] | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    status: tuple[int, ...] = (2,)
    patch: Callable[[], contextlib.AbstractContextManager] | None = None


@dataclass
class Result:
    case: Case
    problem: str | None  # None: a clear error, nothing written, no input changed
    seconds: float


@dataclass
class Sandbox:
    """The watched directory: `in/` holds the inputs, `out/` is where outputs would go."""

    root: Path
    inputs: Path
    out: Path
    originals: dict[str, bytes]
    seg: dict[str, bytes]  # model name -> segmented bytes
    bundle: bytes

    def p(self, name: str) -> str:
        """Path of an input file, as a string for argv."""
        return str(self.inputs / name)

    def o(self, name: str) -> str:
        """Path of an output, as a string for argv."""
        return str(self.out / name)


# ------------------------------------------------------------------------------------- fixtures
def _rng(label: str) -> np.random.Generator:
    return np.random.default_rng([SEED, zlib.crc32(label.encode())])


def synthetic_bundle(seed: int = 0) -> bytes:
    """A small valid cascade bundle (int8 FC models; no training): 4 classes in 2 groups."""
    from tflm_swap.converters.synthetic import build_model, fc

    def member(units: int, s: int) -> bytes:
        return segment_model(Model.from_bytes(build_model((1, 8, 8, 1), [fc(32, "RELU"), fc(units)], dtype="int8",
                                                          seed=seed * 10 + s)))

    return CascadeBundle.create([[0, 1], [2, 3]], member(2, 1), [member(2, 2), member(2, 3)],
                                monolithic=member(4, 4)).to_bytes()


def make_sandbox(root: Path) -> Sandbox:
    """Write the valid inputs every case starts from."""
    inputs, out = root / "in", root / "out"
    inputs.mkdir(parents=True)
    originals = {name: (MLPERF_DIR / f"{name}.tflite").read_bytes() for name in MODELS}
    seg = {name: segment_model(Model.from_bytes(data)) for name, data in originals.items()}
    for name in MODELS:
        (inputs / f"{name}.tflite").write_bytes(originals[name])
        (inputs / f"{name}.swap.tflite").write_bytes(seg[name])
    graph, image = tflm_swap.split(seg["kws_ref_model"])
    (inputs / "kws.graph").write_bytes(graph)
    (inputs / "kws.image").write_bytes(image)
    bundle = synthetic_bundle()
    (inputs / "b.cascade").write_bytes(bundle)
    rng = _rng("data")
    np.savez(inputs / "data.npz", x=rng.random((6, 8, 8, 1), dtype=np.float32), y=np.arange(6) % 4)
    np.save(inputs / "images.npy", rng.random((3, 8, 8, 1), dtype=np.float32))
    np.save(inputs / "kws_inputs.npy", rng.random((4, 49, 10, 1), dtype=np.float32))
    (inputs / "times.json").write_text(json.dumps([1e-3] * 13))
    return Sandbox(root, inputs, out, originals, seg, bundle)


# ------------------------------------------------------------------------------- hostile inputs
def flip(data: bytes, pos: int, bit: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << bit
    return bytes(out)


def segment_spans(seg: bytes) -> list[tuple[int, int, int]]:
    """(segment id, file start, file end) of every segment payload."""
    m = read_manifest(seg)
    return [(s.id, m.image_offset + s.offset, m.image_offset + s.offset + s.size) for s in m.segments]


def malformed_models(box: Sandbox) -> dict[str, bytes]:
    """Foreign, empty, short and truncated model files."""
    rng = _rng("malformed")
    kws, seg = box.originals["kws_ref_model"], box.seg["kws_ref_model"]
    out = {"empty": b"", "seven": bytes(7), "text": b"this is a README, not a model\n" * 40,
           "random": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
           "tfl3-garbage": struct.pack("<I", 999) + b"TFL3" + bytes(200),
           "zip": box.bundle}
    for p in sorted({8, 12, 16, 64, len(kws) // 3, len(kws) // 2, len(kws) - 1, *rng.integers(17, len(kws), 3)}):
        out[f"orig-trunc-{p}"] = kws[: int(p)]
    m = read_manifest(seg)
    marks = {16, m.graph_size // 2, m.graph_size - 1, len(seg) - 1}
    for _, start, end in segment_spans(seg):
        marks |= {start + 1, (start + end) // 2, end - 1}
    for p in sorted(marks):
        out[f"seg-trunc-{p}"] = seg[:p]
    return out


def damaged_weights(box: Sandbox) -> dict[str, bytes]:
    """Segmented models with one bit flipped in a segment payload, or a segment zeroed."""
    out = {}
    for name in MODELS:
        seg = box.seg[name]
        rng = _rng(f"weights-{name}")
        for sid, start, end in segment_spans(seg):
            for pos in sorted({start, end - 1, *(int(x) for x in rng.integers(start, end, 2))}):
                out[f"{name}-s{sid}-flip{pos}"] = flip(seg, pos, int(rng.integers(8)))
            zeroed = bytearray(seg)
            zeroed[start:end] = bytes(end - start)
            if bytes(zeroed) != seg:
                out[f"{name}-s{sid}-zeroed"] = bytes(zeroed)
    return out


def _with_manifest(seg: bytes, edit: Callable[[Manifest], None]) -> bytes | None:
    """`seg` with its manifest edited and re-encoded in place, with a valid CRC (a forgery)."""
    blob = find_metadata(seg, MANIFEST_NAME)
    manifest = Manifest.decode(blob)
    edit(manifest)
    forged = manifest.encode(min_capacity=len(blob) - 16)
    if len(forged) != len(blob):  # the edit does not fit the manifest's padding: no forgery
        return None
    pos = seg.find(blob)
    return seg[:pos] + forged + seg[pos + len(blob):]


def forged_manifests(box: Sandbox) -> dict[str, bytes]:
    """Manifests rewritten with valid CRCs but lying about the segments."""
    seg = box.seg["kws_ref_model"]

    def set_seg(i: int, **values):
        def edit(m: Manifest) -> None:
            for k, v in values.items():
                setattr(m.segments[i], k, v)
        return edit

    n = len(read_manifest(seg).segments)
    edits = {}
    for i in range(n):
        edits[f"crc{i}"] = set_seg(i, crc32=(read_manifest(seg).segments[i].crc32 ^ 1))
        edits[f"size{i}"] = set_seg(i, size=read_manifest(seg).segments[i].size + 16)
        edits[f"offset{i}"] = set_seg(i, offset=read_manifest(seg).segments[i].offset + 4096)
    edits["huge-offset"] = set_seg(0, offset=1 << 31)
    edits["huge-size"] = set_seg(0, size=1 << 31)
    out = {}
    for key, edit in edits.items():
        forged = _with_manifest(seg, edit)
        if forged is not None:
            out[key] = forged
    return out


def damaged_images(box: Sandbox) -> dict[str, bytes]:
    """Flash images (of the split kws model) flipped in a payload or truncated."""
    _, image = tflm_swap.split(box.seg["kws_ref_model"])
    m = read_manifest(box.seg["kws_ref_model"])
    rng = _rng("images")
    out = {}
    for s in m.segments:
        for pos in sorted({s.offset, s.offset + s.size - 1, int(rng.integers(s.offset, s.offset + s.size))}):
            out[f"flip-s{s.id}-{pos}"] = flip(image, pos, int(rng.integers(8)))
    for p in sorted({0, 1, len(image) // 2, len(image) - 1, *(int(x) for x in rng.integers(1, len(image), 4))}):
        out[f"trunc-{p}"] = image[:p]
    out["padded"] = image + bytes(4096)
    return out


def _zip_bundle(manifest: dict, members: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as z:
        z.writestr("cascade.json", json.dumps(manifest))
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def forged_bundles(box: Sandbox) -> dict[str, bytes]:
    """Bundles with member names escaping their directory, absurd sizes and counts, bad manifests,
    truncations and bit flips inside members."""
    good = CascadeBundle.from_bytes(box.bundle)
    base, members = good.manifest(), dict(good.members)
    out: dict[str, bytes] = {}

    def renamed(new: str) -> bytes:
        m = json.loads(json.dumps(base))
        old = m["router"]["member"]
        m["router"]["member"] = new
        kept = {k: v for k, v in members.items() if k != old}
        return _zip_bundle(m, {**kept, new: members[old]} if new else kept)

    for label, name in (("dotdot", "../escaped.tflite"), ("deep-dotdot", "../../tmp/escaped.tflite"),
                        ("absolute", "/tmp/tflm_swap_escaped.tflite"), ("subdir", "sub/router.tflite"),
                        ("backslash", "..\\escaped.tflite"), ("dot", "."), ("dots", ".."), ("hidden", ".router"),
                        ("nul", "router\0.tflite"), ("empty", ""), ("long", "r" * 300 + ".tflite")):
        out[f"name-{label}"] = renamed(name)

    def edited(**values) -> bytes:
        m = json.loads(json.dumps(base))
        m.update(values)
        return _zip_bundle(m, members)

    for label, value in (("huge", 10**12), ("negative", -1), ("zero", 0), ("string", "ten"), ("float", 4.5),
                         ("bool", True), ("mismatch", 5)):
        out[f"classes-{label}"] = edited(n_classes=value)
    for label, groups in (("not-list", "all"), ("huge-ids", [[0, 10**12], [2, 3]]), ("strings", [["a", "b"], [2, 3]]),
                          ("nested", [[[0]], [1, 2, 3]]), ("empty-group", [[], [0, 1, 2, 3]])):
        out[f"groups-{label}"] = edited(groups=groups)
    out["shape-bad"] = edited(input_shape=[8, -8, 1])
    out["shape-string"] = edited(input_shape="8x8")
    out["threshold-string"] = edited(fallback={"policy": "top2", "threshold": "high"})
    out["policy-bad"] = edited(fallback={"policy": "pray"})
    out["version"] = edited(version=99)
    out["format"] = edited(format="zip")
    out["specialists-not-list"] = edited(specialists={"0": 1})
    out["json-bad"] = _zip_bundle(base, members).replace(b'"format"', b'"form\x00t"', 1)
    out["json-array"] = _zip_bundle([], members)  # type: ignore[arg-type]
    out["member-missing"] = _zip_bundle(base, {k: v for k, v in members.items() if k != "router.tflite"})
    corrupt = bytearray(members["router.tflite"])
    corrupt[-9] ^= 0x40
    out["member-corrupt"] = _zip_bundle(base, {**members, "router.tflite": bytes(corrupt)})
    out["not-zip"] = b"PK\x03\x04 but not really a zip" * 10
    out["empty"] = b""
    # a declared uncompressed size of 1 TiB in the router's central-directory and local headers
    out["declared-huge"] = _declare_size(box.bundle, "router.tflite", 1 << 40)
    out["declared-bomb"] = _declare_size(_zip_bundle(base, members, zipfile.ZIP_DEFLATED), "router.tflite", 1 << 33)
    rng = _rng("bundle-flips")
    with zipfile.ZipFile(io.BytesIO(box.bundle)) as z:
        spans = [(i.filename, _data_offset(box.bundle, i), i.compress_size) for i in z.infolist()]
    for member, start, size in spans:
        for pos in sorted({start, start + size - 1, int(rng.integers(start, start + size))}):
            out[f"flip-{member}-{pos}"] = flip(box.bundle, pos, int(rng.integers(8)))
    for p in sorted({1, 22, len(box.bundle) // 2, len(box.bundle) - 1, len(box.bundle) - 22}):
        out[f"trunc-{p}"] = box.bundle[:p]
    return out


def _data_offset(data: bytes, info: zipfile.ZipInfo) -> int:
    """File offset of a member's data (after its local header)."""
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    return info.header_offset + 30 + name_len + extra_len


def _declare_size(data: bytes, member: str, size: int) -> bytes:
    """`data` with `member`'s uncompressed size rewritten (as a zip64 size when it needs one)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = z.getinfo(member)
    out = bytearray(data)
    small = min(size, 0xFFFFFFFE)
    struct.pack_into("<I", out, info.header_offset + 22, small)  # local header
    cd = out.find(b"PK\x01\x02")
    while cd >= 0:
        name_len = struct.unpack_from("<H", out, cd + 28)[0]
        if out[cd + 46: cd + 46 + name_len] == member.encode():
            struct.pack_into("<I", out, cd + 24, small)
            break
        cd = out.find(b"PK\x01\x02", cd + 4)
    return bytes(out)


def bad_data_files(box: Sandbox) -> dict[str, bytes]:
    """Data files that are not what a command needs (as .npz or .npy bytes)."""
    rng = _rng("datafiles")

    def npz(**arrays) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    def npy(array, allow_pickle: bool = False) -> bytes:
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=allow_pickle)
        return buf.getvalue()

    x = rng.random((4, 8, 8, 1), dtype=np.float32)
    good_npz = npz(x=x, y=np.arange(4))
    huge_npy = _npy_with_shape((99999999999,))
    return {
        "text.npz": b"just text\n" * 20, "text.npy": b"just text\n" * 20, "empty.npz": b"", "empty.npy": b"",
        "trunc.npz": good_npz[: len(good_npz) // 2], "trunc.npy": npy(x)[:100],
        "no-y.npz": npz(x=x), "no-x.npz": npz(images=x, y=np.arange(4)),
        "labels-high.npz": npz(x=x, y=np.array([0, 1, 2, 99])),
        "labels-negative.npz": npz(x=x, y=np.array([0, -1, 2, 3])),
        "labels-fraction.npz": npz(x=x, y=np.array([0, 1.5, 2, 3])),
        "labels-nan.npz": npz(x=x, y=np.array([0, np.nan, 2, 3])),
        "labels-huge.npz": npz(x=x, y=np.array([0, 10**15, 2, 3])),
        "labels-short.npz": npz(x=x, y=np.arange(2)),
        "labels-strings.npz": npz(x=x, y=np.array(["a", "b", "c", "d"])),
        "shape-wrong.npz": npz(x=rng.random((4, 5, 5, 1)).astype(np.float32), y=np.arange(4)),
        "rank-wrong.npz": npz(x=rng.random((4, 64)).astype(np.float32), y=np.arange(4)),
        "strings.npz": npz(x=np.array([["a"] * 8] * 8 * 4).reshape(4, 8, 8), y=np.arange(4)),
        "object.npy": npy(np.array([{"a": 1}, None], dtype=object), allow_pickle=True),
        "huge-shape.npy": huge_npy,
        "complex.npz": npz(x=(x + 1j).astype(np.complex64), y=np.arange(4)),
        "zero-images.npz": npz(x=np.zeros((0, 8, 8, 1), np.float32), y=np.zeros(0, np.int64)),
    }


def _npy_with_shape(shape: tuple[int, ...]) -> bytes:
    """An .npy header declaring `shape` of float32, followed by 16 bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(16)


# ----------------------------------------------------------------------------------------- cases
def model_commands(box: Sandbox, f: str, manifest: bool = True) -> list[tuple[str, list[str], tuple]]:
    """(label, argv, statuses) of every subcommand reading model file `f` (verify: a failed check, 1).
    `manifest`: include `manifest`, which prints the manifest and reads no weight."""
    return [
        ("verify", ["verify", f], (1,)),
        *([("manifest", ["manifest", f], (2,))] if manifest else []),
        ("convert", ["convert", f, "-o", box.o("c.tflite")], (2,)),
        ("convert-split", ["convert", f, "-o", box.o("c.tflite"), "--graph", box.o("g"), "--image", box.o("i")], (2,)),
        ("convert-tflm", ["convert", f, "--target", "tflm", "-o", box.o("proj"), "--arena-size", "40000"], (2,)),
        ("split", ["split", f, "--graph", box.o("g"), "--image", box.o("i")], (2,)),
        ("stages", ["stages", f, "--ram-budget", "9KiB", "--out", box.o("st")], (2,)),
        ("run", ["run", f, "--invokes", "1"], (2,)),
        ("plan", ["plan", f, "--ram-budget", "1MiB"], (2,)),
        ("inspect", ["inspect", f, "--no-latency", "--plot", box.o("m.png")], (2,)),
        ("delegate", ["delegate", f, "--table", box.o("t.tiles")], (2,)),
    ]


def model_loaders(box: Sandbox, data: bytes, path: Path) -> list[tuple[str, Callable[[], object]]]:
    """(label, call) of the public loaders on model bytes `data` (stored at `path`)."""
    from tflm_swap.converters.tflm import rewrite_for_tflm
    from tflm_swap.micro import export_project
    from tflm_swap.runtime.interpreter import SwapInterpreter

    def swap():
        with SwapInterpreter(path, ram_budget=None) as s:
            s.allocate_tensors()
            for d in s.get_input_details():
                s.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
            s.invoke()

    return [
        ("Model.load", lambda: Model.load(path)),
        ("verify()", lambda: tflm_swap.verify(data)),
        ("split()", lambda: tflm_swap.split(data)),
        ("convert()", lambda: tflm_swap.convert(data)),
        ("convert(path)", lambda: tflm_swap.convert(path)),
        ("segment_model()", lambda: segment_model(Model.from_bytes(data))),
        ("rewrite_for_tflm()", lambda: rewrite_for_tflm(data)),
        ("export_project()", lambda: export_project(data, box.out / "api", arena_size=40000)),
        ("SwapInterpreter", swap),
    ]


def _file_cases(group: str, box: Sandbox, variants: dict[str, bytes], suffix: str, loaders: bool,
                manifest: bool = True) -> list[Case]:
    cases = []
    for key, data in variants.items():
        name = f"hostile-{zlib.crc32(key.encode()):08x}{suffix}"
        path = box.inputs / name
        for label, argv, status in model_commands(box, str(path), manifest and not _has_manifest(data)):
            cases.append(Case(group, f"{key}: {label}", argv=argv, files={name: data}, status=status))
        if loaders:
            for label, call in model_loaders(box, data, path):
                cases.append(Case(group, f"{key}: {label}", call=call, files={name: data}))
    return cases


def _has_manifest(data: bytes) -> bool:
    """Whether `manifest` can print the manifest (it reads nothing else; a truncated image is no error)."""
    try:
        read_manifest(data)
    except TflmSwapError:
        return False
    return True


def weight_cases(box: Sandbox) -> list[Case]:
    return _file_cases("bit-flipped / zeroed weights", box, damaged_weights(box), ".tflite", loaders=True,
                       manifest=False)


def malformed_cases(box: Sandbox) -> list[Case]:
    cases = _file_cases("malformed / truncated models", box, malformed_models(box), ".tflite", loaders=True)
    # a directory, and a missing file, where a model goes
    for label, f in (("directory", str(box.inputs)), ("missing", box.p("missing.tflite"))):
        for cmd, argv, _ in model_commands(box, f):  # nothing to check: a usage error (2), even for verify
            cases.append(Case("malformed / truncated models", f"{label}: {cmd}", argv=argv))
    return cases


def forged_manifest_cases(box: Sandbox) -> list[Case]:
    return _file_cases("forged manifests", box, forged_manifests(box), ".tflite", loaders=True, manifest=False)


def image_cases(box: Sandbox) -> list[Case]:
    graph = box.p("kws.graph")
    cases = []
    for key, data in damaged_images(box).items():
        name = f"img-{key}.bin"
        path = box.inputs / name
        cases.append(Case("split graph + image", f"{key}: join", argv=["join", graph, str(path), "-o", box.o("j")],
                          files={name: data}))
        cases.append(Case("split graph + image", f"{key}: join()",
                          call=lambda p=path: tflm_swap.join(Path(graph).read_bytes(), p.read_bytes()),
                          files={name: data}))
    g = (box.inputs / "kws.graph").read_bytes() if (box.inputs / "kws.graph").exists() else None
    if g is not None:
        for p in (0, 8, len(g) // 2, len(g) - 1):
            name = f"graph-trunc-{p}.bin"
            cases.append(Case("split graph + image", f"graph truncated at {p}: join",
                              argv=["join", str(box.inputs / name), box.p("kws.image"), "-o", box.o("j")],
                              files={name: g[:p]}))
    return cases


def bundle_cases(box: Sandbox) -> list[Case]:
    from tflm_swap.cascade.interpreter import CascadeInterpreter

    cases = []
    for key, data in forged_bundles(box).items():
        name = f"forged-{zlib.crc32(key.encode()):08x}.cascade"
        path = box.inputs / name

        def interpret(d=data):
            with CascadeInterpreter(d, cache_dir=box.out / "cache") as ci:
                ci.predict(np.zeros((1, 8, 8, 1), np.float32))

        group = "forged bundles"
        cases += [
            Case(group, f"{key}: CascadeBundle.from_bytes", call=lambda d=data: CascadeBundle.from_bytes(d)),
            Case(group, f"{key}: CascadeBundle.load", call=lambda p=path: CascadeBundle.load(p), files={name: data}),
            Case(group, f"{key}: CascadeInterpreter", call=interpret),
            Case(group, f"{key}: cascade run", argv=["cascade", "run", str(path), "--data", box.p("data.npz")],
                 files={name: data}),
            Case(group, f"{key}: cascade eval", argv=["cascade", "eval", str(path), "--data", box.p("data.npz"),
                                                      "--json", box.o("e.json")], files={name: data}),
        ]
    return cases


def data_cases(box: Sandbox) -> list[Case]:
    cases = []
    bundle = box.p("b.cascade")
    for name, data in bad_data_files(box).items():
        f = str(box.inputs / name)
        group = "bad data files"
        cases += [
            Case(group, f"{name}: cascade run", argv=["cascade", "run", bundle, "--data", f], files={name: data})
            if name != "no-y.npz" else None,  # labels are optional for run
            Case(group, f"{name}: cascade eval", argv=["cascade", "eval", bundle, "--data", f, "--json",
                                                       box.o("e.json")], files={name: data}),
            Case(group, f"{name}: cascade build", argv=["cascade", "build", "--data", f, "-o", box.o("b.cascade"),
                                                        "--epochs", "1", "--quiet"], files={name: data})
            if name.endswith(".npz") and _fails_before_training(name) else None,
            Case(group, f"{name}: convert --representative-data",
                 argv=["convert", box.p("kws_ref_model.tflite"), "-o", box.o("c.tflite"), "--representative-data", f],
                 files={name: data}) if name.endswith(".npy") else None,
        ]
    return [c for c in cases if c is not None]


def _fails_before_training(name: str) -> bool:
    """Data files `cascade build` must refuse when loading them (the others would train)."""
    return not name.startswith(("shape-wrong", "rank-wrong", "labels-short-never"))


def argument_cases(box: Sandbox) -> list[Case]:
    """Bad arguments for every subcommand."""
    kws, seg = box.p("kws_ref_model.tflite"), box.p("kws_ref_model.swap.tflite")
    bundle, data = box.p("b.cascade"), box.p("data.npz")
    bad = [
        [], ["nonsense"], ["--version-of-nothing"], ["convert"], ["convert", kws], ["convert", kws, "-o"],
        ["convert", kws, "-o", box.o("c"), "--page-size", "0"],
        ["convert", kws, "-o", box.o("c"), "--page-size", "-4096"],
        ["convert", kws, "-o", box.o("c"), "--page-size", "1099511627776"],
        ["convert", kws, "-o", box.o("c"), "--page-size", "3000"],
        ["convert", kws, "-o", box.o("c"), "--page-size", "4k"],
        ["convert", kws, "-o", box.o("c"), "--min-segment-bytes", "0"],
        ["convert", kws, "-o", box.o("c"), "--min-segment-bytes", "-1"],
        ["convert", kws, "-o", box.o("c"), "--target", "gpu"],
        ["convert", kws, "-o", box.o("c"), "--graph", box.o("g")],
        ["convert", kws, "-o", box.o("c"), "--tile-fc", "lots"], ["convert", kws, "-o", box.o("c"), "--tile-fc", "0"],
        ["convert", kws, "-o", box.o("c"), "--quantization", "int3"],
        ["convert", kws, "--target", "tflm", "-o", box.o("p"), "--prefix", "bad-name"],
        ["convert", kws, "--target", "tflm", "-o", box.o("p"), "--alignment", "3"],
        ["convert", kws, "--target", "tflm", "-o", box.o("p"), "--alignment", str(1 << 40)],
        ["convert", kws, "--target", "tflm", "-o", box.o("p"), "--arena-size", "-5"],
        ["convert", box.p("nowhere/model.keras"), "-o", box.o("c")],
        ["convert", str(box.inputs), "-o", box.o("c")],
        ["inspect", kws, "--ram-budget", "lots", "--no-plot", "--no-latency"],
        ["inspect", kws, "--flash-bandwidth", "fast", "--no-plot", "--op-times", box.p("times.json")],
        ["inspect", kws, "--no-plot", "--op-times", box.p("missing.json")],
        ["inspect", kws, "--no-plot", "--op-times", kws],
        ["inspect", kws, "--no-plot", "--op-times", box.p("data.npz")],
        ["inspect", kws, "--prefetch", "x,y", "--no-plot", "--no-latency"],
        ["inspect", kws, "--prefetch", "-1", "--no-plot", "--no-latency"],
        ["plan", kws],
        ["plan", kws, "--ram-budget", "1.5.5KiB"], ["plan", kws, "--ram-budget", "1MiB", "--prefetch", "-1"],
        ["plan", kws, "--ram-budget", "1MiB", "--prefetch", "one"],
        ["plan", kws, "--ram-budget", "1MiB", "--min-segment-bytes", "0"],
        ["manifest"], ["manifest", kws], ["verify"], ["split", seg], ["split", seg, "--graph", box.o("g")],
        ["join", box.p("kws.graph")], ["join", box.p("kws.image"), box.p("kws.graph"), "-o", box.o("j")],
        ["join", box.p("kws.graph"), box.p("kws.graph"), "-o", box.o("j")],
        ["run", seg, "--invokes", "0"], ["run", seg, "--invokes", "-3"], ["run", seg, "--invokes", "many"],
        ["run", seg, "--prefetch", "-1"], ["run", seg, "--prefetch", "1.5"], ["run", seg, "--ram-budget", "1KiB"],
        ["run", seg, "--ram-budget", "-1KiB"], ["run", seg, "--backend", "quantum"],
        ["run", seg, "--stage-files", box.p("missing-dir")], ["run", seg, "--stage-files", str(box.inputs)],
        ["run", seg, "--original", box.p("missing.tflite")], ["run", seg, "--original", box.p("data.npz")],
        ["stages", seg, "--out", box.o("st")], ["stages", seg, "--ram-budget", "1KiB", "--out", box.o("st")],
        ["stages", seg, "--ram-budget", "9KiB", "--prefetch", "-1", "--out", box.o("st")],
        ["stages", kws, "--ram-budget", "lots", "--out", box.o("st")],
        ["seal-stages", box.p("missing-dir")], ["seal-stages", str(box.inputs)], ["seal-stages", kws],
        ["delegate", seg, "--tile-bytes", "0"], ["delegate", seg, "--tile-bytes", "-1"],
        ["delegate", seg, "--ops", "SOFTMAX"], ["delegate", seg, "--rounding", "up"],
        ["delegate", seg, "--min-weight-bytes", "-1"], ["delegate", kws, "--table", box.o("t")],
        ["demo", "--epochs", "0"],
        ["cascade"], ["cascade", "run", bundle], ["cascade", "run", bundle, "--data", data, "--limit", "0"],
        ["cascade", "run", bundle, "--data", data, "--limit", "-1"],
        ["cascade", "run", bundle, "--data", data, "--ram-budget", "1KiB"],
        ["cascade", "run", bundle, "--data", data, "--ram-budget", "huge"],
        ["cascade", "run", bundle, "--data", data, "--backend", "fpga"],
        ["cascade", "run", bundle, "--data", data, "--cache", "mru"],
        ["cascade", "run", bundle, "--data", box.p("missing.npz")],
        ["cascade", "run", bundle, "--data", str(box.inputs)],
        ["cascade", "run", box.p("missing.cascade"), "--data", data],
        ["cascade", "run", str(box.inputs), "--data", data],
        ["cascade", "eval", bundle, "--data", data, "--last", "-2"],
        ["cascade", "eval", bundle, box.p("missing.cascade"), "--data", data],
        ["cascade", "build", "--data", data, "-o", box.o("b"), "--n-groups", "1"],
        ["cascade", "build", "--data", data, "-o", box.o("b"), "--threshold", "2"],
        ["cascade", "build", "--data", data, "-o", box.o("b"), "--epochs", "0"],
        ["cascade", "build", "--data", data, "-o", box.o("b"), "--batch-size", "0"],
        ["cascade", "build", "--data", data, "-o", box.o("b"), "--n-test", "-1"],
        ["cascade", "build", "--data", box.p("missing.npz"), "-o", box.o("b")],
        ["cascade", "build", "--data", data, "-o", box.o("b"), "--fallback", "maybe"],
    ]
    return [Case("bad arguments", " ".join(a)[:90] or "(none)", argv=a) for a in bad]


def overwrite_cases(box: Sandbox) -> list[Case]:
    """Outputs aimed at inputs (directly, through a symbolic link, a hard link, `..`) or at each other."""
    kws, seg = box.p("kws_ref_model.tflite"), box.p("kws_ref_model.swap.tflite")
    bundle, data = box.p("b.cascade"), box.p("data.npz")
    dotted = str(box.inputs / ".." / "in" / "kws_ref_model.tflite")
    group = "outputs onto inputs"
    argvs = [
        ["convert", kws, "-o", kws], ["convert", kws, "-o", dotted], ["convert", kws, "-o", box.p("kws-link")],
        ["convert", kws, "-o", box.p("kws-hard")],
        ["convert", kws, "-o", box.o("x"), "--graph", box.o("g"), "--image", box.o("x")],
        ["convert", kws, "-o", box.o("x"), "--graph", box.o("x"), "--image", box.o("i")],
        ["convert", kws, "-o", box.o("x"), "--graph", box.o("g"), "--image", box.o("g")],
        ["convert", kws, "-o", box.o("x"), "--graph", kws, "--image", box.o("i")],
        ["convert", kws, "-o", box.o("c"), "--representative-data", box.p("images.npy"), "--graph", box.o("g"),
         "--image", box.p("images.npy")],
        ["convert", kws, "--target", "tflm", "-o", kws], ["convert", kws, "--target", "tflm", "-o", box.p("kws-link")],
        ["split", seg, "--graph", box.o("s"), "--image", box.o("s")],
        ["split", seg, "--graph", seg, "--image", box.o("i")],
        ["split", seg, "--graph", box.o("g"), "--image", box.p("kws-seg-link")],
        ["join", box.p("kws.graph"), box.p("kws.image"), "-o", box.p("kws.image")],
        ["join", box.p("kws.graph"), box.p("kws.image"), "-o", box.p("kws.graph")],
        ["stages", seg, "--ram-budget", "9KiB", "--out", seg],
        ["inspect", kws, "--no-latency", "--plot", kws], ["inspect", kws, "--op-times", box.p("times.json"),
                                                         "--plot", box.p("times.json")],
        ["delegate", seg, "--table", seg],
        ["cascade", "eval", bundle, "--data", data, "--json", bundle],
        ["cascade", "eval", bundle, "--data", data, "--json", data],
        ["cascade", "eval", bundle, "--data", data, "--plot", data],
        ["cascade", "eval", bundle, "--data", data, "--json", box.o("e"), "--plot", box.o("e")],
        ["cascade", "eval", bundle, "--data", data, "--json", box.p("bundle-link")],
        ["cascade", "build", "--data", data, "-o", data, "--epochs", "1", "--quiet"],
        ["cascade", "build", "--data", data, "-o", box.p("data-link"), "--epochs", "1", "--quiet"],
        ["cascade", "build", "--data", data, "-o", str(box.inputs / ".." / "in" / "data.npz"), "--quiet"],
    ]
    return [Case(group, " ".join(Path(a).name if "/" in a else a for a in argv), argv=argv) for argv in argvs]


@contextlib.contextmanager
def failing_writes(exc: BaseException, after: int = 0) -> Iterator[None]:
    """Every file write (fsync of a temporary file, Path.write_bytes, shutil.copyfile) past the
    first `after` raises `exc`: a full disk, a read-only file system or an interrupt."""
    real = {"fsync": os.fsync, "write_bytes": Path.write_bytes, "copyfile": shutil.copyfile}
    count = [0]

    def hit(name: str, *args, **kwargs):
        count[0] += 1
        if count[0] > after:
            raise exc
        return real[name](*args, **kwargs)

    os.fsync = lambda fd: hit("fsync", fd)
    Path.write_bytes = lambda self, data: hit("write_bytes", self, data)
    shutil.copyfile = lambda *a, **k: hit("copyfile", *a, **k)
    try:
        yield
    finally:
        os.fsync, Path.write_bytes, shutil.copyfile = real["fsync"], real["write_bytes"], real["copyfile"]


def write_failure_cases(box: Sandbox) -> list[Case]:
    """Writes that fail part way (disk full, read-only) or are interrupted: status 2 (130), nothing left."""
    kws, seg = box.p("kws_ref_model.tflite"), box.p("kws_ref_model.swap.tflite")
    commands = {  # argv, and how many file writes to let through before the fault (fewer than it makes)
        "convert": (["convert", kws, "-o", box.o("c.tflite")], (0,)),
        "convert+split": (["convert", kws, "-o", box.o("c.tflite"), "--graph", box.o("g"), "--image", box.o("i")],
                          (0, 1, 2)),
        "convert tflm": (["convert", kws, "--target", "tflm", "-o", box.o("proj"), "--arena-size", "40000"],
                         (0, 1, 3, 6)),
        "split": (["split", seg, "--graph", box.o("g"), "--image", box.o("i")], (0, 1)),
        "join": (["join", box.p("kws.graph"), box.p("kws.image"), "-o", box.o("j")], (0,)),
        "stages": (["stages", seg, "--ram-budget", "9KiB", "--out", box.o("st")], (0, 1, 3)),
        "inspect plot": (["inspect", kws, "--no-latency", "--plot", box.o("m.png")], (0,)),
        "cascade eval json": (["cascade", "eval", box.p("b.cascade"), "--data", box.p("data.npz"),
                               "--json", box.o("e.json")], (0, 1, 3)),
    }
    faults = {
        "disk full": (lambda: OSError(errno.ENOSPC, "No space left on device"), (2,)),
        "read-only": (lambda: OSError(errno.EROFS, "Read-only file system"), (2,)),
        "interrupted": (lambda: KeyboardInterrupt(), (130,)),
    }
    cases = []
    for label, (argv, afters) in commands.items():
        for fault, (make, status) in faults.items():
            for after in afters:
                cases.append(Case("failed writes (disk full, interrupt)", f"{label}: {fault} after {after} writes",
                                  argv=argv, status=status,
                                  patch=lambda m=make, a=after: failing_writes(m(), a)))
    return cases


def all_cases(box: Sandbox) -> list[Case]:
    return [*malformed_cases(box), *weight_cases(box), *forged_manifest_cases(box), *image_cases(box),
            *bundle_cases(box), *data_cases(box), *argument_cases(box), *overwrite_cases(box),
            *write_failure_cases(box)]


# ---------------------------------------------------------------------------------------- runner
class _Timeout(BaseException):
    pass


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def expire(signum, frame):
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file (and '<dir>' for every directory) under `root`."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "<dir>"
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.islink(p):
                out[os.path.relpath(p, root)] = "<link>" + os.readlink(p)
                continue
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _links(box: Sandbox) -> None:
    """Symbolic and hard links to inputs (for the overwrite cases)."""
    for name, target in (("kws-link", "kws_ref_model.tflite"), ("kws-seg-link", "kws_ref_model.swap.tflite"),
                         ("bundle-link", "b.cascade"), ("data-link", "data.npz")):
        os.symlink(target, box.inputs / name)
    os.link(box.inputs / "kws_ref_model.tflite", box.inputs / "kws-hard")


def _attempt(case: Case) -> tuple[str | None, str]:
    """Run the case; (problem or None, captured stderr)."""
    err, out = io.StringIO(), io.StringIO()
    patch = case.patch() if case.patch else contextlib.nullcontext()
    try:
        with _deadline(TIMEOUT), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), patch:
            if case.argv is not None:
                status = cli_main(case.argv)
            else:
                case.call()
                return "returned without an error", err.getvalue()
    except _Timeout:
        return f"hang: no answer within {TIMEOUT} s", err.getvalue()
    except TflmSwapError as exc:
        if case.argv is None:
            return None, str(exc)
        return f"TflmSwapError escaped main: {exc}", err.getvalue()
    except BaseException as exc:  # noqa: BLE001 - anything else is what the corpus looks for
        return f"{type(exc).__name__} escaped: {str(exc)[:200]}", err.getvalue()
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    if status not in case.status:
        return f"exit status {status}, expected {case.status}: {lines[-1:]} ", err.getvalue()
    if len(lines) != 1 or not lines[0].startswith("tflm-swap: ") or "Traceback" in err.getvalue():
        return f"stderr is not one message line: {lines[:4]}", err.getvalue()
    return None, err.getvalue()


def run_case(case: Case, box: Sandbox, pristine: dict[str, bytes]) -> Result:
    """Run one case in the sandbox and check what it left: nothing new, no input changed."""
    for name, data in case.files.items():
        (box.inputs / name).write_bytes(data)
    before = snapshot(box.root)
    started = time.perf_counter()
    cwd = os.getcwd()
    os.chdir(box.inputs)
    try:
        problem, _ = _attempt(case)
    finally:
        os.chdir(cwd)
    seconds = time.perf_counter() - started
    after = snapshot(box.root)
    new = sorted(set(after) - set(before))
    changed = sorted(p for p in before if p in after and after[p] != before[p])
    gone = sorted(set(before) - set(after))
    if new:
        problem = (problem + "; " if problem else "") + f"wrote {new[:3]}"
    if changed or gone:
        problem = (problem + "; " if problem else "") + f"changed inputs {(changed + gone)[:3]}"
    _restore(box, before, after, pristine, case)
    return Result(case, problem, seconds)


def _restore(box: Sandbox, before: dict[str, str], after: dict[str, str], pristine: dict[str, bytes],
             case: Case) -> None:
    for rel in sorted(set(after) - set(before), key=len, reverse=True):
        p = box.root / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    for rel, data in pristine.items():
        p = box.root / rel
        if not p.is_symlink() and (not p.exists() or p.read_bytes() != data):
            p.write_bytes(data)
    for name in case.files:
        (box.inputs / name).unlink(missing_ok=True)


def run_corpus(root: Path, limit_per_group: int | None = None, progress: Callable[[str], None] | None = None
               ) -> list[Result]:
    """Build the sandbox under `root`, run every case, return the results."""
    box = make_sandbox(root)
    _links(box)
    pristine = {os.path.relpath(p, box.root): p.read_bytes() for p in box.inputs.iterdir()
                if p.is_file() and not p.is_symlink()}
    cases = all_cases(box)
    if limit_per_group is not None:
        seen: dict[str, int] = {}
        cases = [c for c in cases if seen.setdefault(c.group, 0) < limit_per_group and not seen.update(
            {c.group: seen[c.group] + 1})]
    results = []
    for case in cases:
        results.append(run_case(case, box, pristine))
        if progress and results[-1].problem:
            progress(f"{case.group} | {case.name}: {results[-1].problem}")
    return results


def table(results: list[Result]) -> str:
    """The markdown table: cases tried / clear errors / anything else, per group and in total."""
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.case.group, []).append(r)
    rows = ["| class | cases tried | clear errors | anything else |", "|---|---:|---:|---:|"]
    for group, rs in groups.items():
        bad = sum(r.problem is not None for r in rs)
        rows.append(f"| {group} | {len(rs)} | {len(rs) - bad} | {bad} |")
    bad = sum(r.problem is not None for r in results)
    rows.append(f"| **total** | **{len(results)}** | **{len(results) - bad}** | **{bad}** |")
    return "\n".join(rows)


def write_reliability(text: str, path: Path = RELIABILITY) -> None:
    """Put the table between the markers of docs/RELIABILITY.md (the rest of the file is kept)."""
    doc = path.read_text()
    start, end = doc.index(TABLE_BEGIN) + len(TABLE_BEGIN), doc.index(TABLE_END)
    path.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", action="store_true", help="write the table into docs/RELIABILITY.md")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tflm_swap_hostile_") as tmp:
        results = run_corpus(Path(tmp), progress=lambda line: print(line, file=sys.stderr))
    text = table(results)
    print(text)
    print(f"\n{len(results)} cases in {time.perf_counter() - started:.1f} s")
    if args.table:
        write_reliability(text)
        print(f"table written to {RELIABILITY}")
    return 0 if all(r.problem is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
