"""Fuzz-style tests: corrupt, truncated, foreign and unsupported inputs raise TflmSwapError subclasses
that name the problem — never IndexError, struct.error or another raw exception.

Every random choice comes from a numpy Generator seeded from SEED and the test's own label, so each
test sees the same bytes on every run and in any order.
"""

from __future__ import annotations

import copy
import json
import os
import struct
import zlib

import numpy as np
import pytest

import tflm_swap
from tflm_swap import (
    BudgetError,
    MalformedModelError,
    Manifest,
    ManifestError,
    Model,
    SegmentIntegrityError,
    TflmSwapError,
    UnsupportedModelError,
)
from tflm_swap.fileio import write_atomic
from tflm_swap.format.manifest import FORMAT_VERSION, HEADER_SIZE, MAGIC, MANIFEST_NAME, find_metadata

SEED = 20240601
SMALL_MODELS = ("kws_ref_model", "pretrainedResnet_quant")
FLIP_TRIALS = 200


def rng_for(label: str) -> np.random.Generator:
    return np.random.default_rng([SEED, zlib.crc32(label.encode())])


def flip_bit(data: bytes, pos: int, bit: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << bit
    return bytes(out)


@pytest.fixture(scope="module")
def models(mlperf_models) -> dict[str, tuple[bytes, bytes]]:
    """name -> (original bytes, segmented bytes) of the small MLPerf models."""
    by_name = {p.stem: p for p in mlperf_models}
    out = {}
    for name in SMALL_MODELS:
        if name in by_name:
            data = by_name[name].read_bytes()
            out[name] = (data, tflm_swap.segment_model(Model.from_bytes(data)))
    return out


@pytest.fixture(params=SMALL_MODELS)
def model_pair(request, models) -> tuple[str, bytes, bytes]:
    if request.param not in models:
        pytest.skip(f"{request.param}.tflite is not among the shared MLPerf models")
    return (request.param, *models[request.param])


def payload_span(manifest: Manifest, seg) -> tuple[int, int]:
    """Absolute file range [start, end) of a segment's payload."""
    start = manifest.image_offset + seg.offset
    return start, start + seg.size


# ---------------------------------------------------------------------------------- foreign input
def test_random_bytes_are_not_a_model():
    data = rng_for("random").integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert data[4:8] != b"TFL3"
    with pytest.raises(MalformedModelError, match="TFL3"):
        Model.from_bytes(data)
    with pytest.raises(MalformedModelError, match="TFL3"):
        tflm_swap.read_manifest(data)


def test_text_file_is_not_a_model(tmp_path):
    path = tmp_path / "notes.tflite"
    path.write_text("This is a README, not a model.\n" * 20)
    with pytest.raises(MalformedModelError, match="TFL3") as exc:
        Model.load(path)
    assert str(path) in str(exc.value)
    with pytest.raises(MalformedModelError, match="cannot read"):
        Model.load(tmp_path / "missing.tflite")


@pytest.mark.parametrize("data", [b"", b"TFL3", bytes(7), b"\x08\0\0\0TFL"], ids=["empty", "4", "7", "7b"])
def test_short_input_is_too_short(data):
    with pytest.raises(MalformedModelError, match="too short") as exc:
        Model.from_bytes(data)
    assert f"{len(data)} bytes" in str(exc.value)


def test_identifier_with_garbage_is_rejected():
    rng = rng_for("garbage")
    with pytest.raises(MalformedModelError, match="root table offset"):
        Model.from_bytes(struct.pack("<I", 999) + b"TFL3" + bytes(100))
    for _ in range(50):
        body = rng.integers(0, 256, int(rng.integers(8, 2000)), dtype=np.uint8).tobytes()
        root = struct.pack("<I", int(rng.integers(8, 8 + len(body))))
        with pytest.raises(MalformedModelError):
            Model.from_bytes(root + b"TFL3" + body)


# ------------------------------------------------------------------------------------- truncation
def truncation_points(n: int, rng: np.random.Generator, extra=()) -> list[int]:
    points = set(range(17)) | {n // 2, n - 1} | {p for p in extra if 0 <= p < n}
    while len(points) < 30:
        points.add(int(rng.integers(17, n - 1)))
    return sorted(points)


def test_truncated_original_models(model_pair):
    name, data, _ = model_pair
    for p in truncation_points(len(data), rng_for(f"trunc-{name}")):
        with pytest.raises(MalformedModelError) as exc:
            Model.from_bytes(data[:p])
        if p < 8:
            assert "too short" in str(exc.value)
        with pytest.raises(TflmSwapError):
            tflm_swap.read_manifest(data[:p])


def test_truncated_segmented_models(model_pair):
    name, _, seg = model_pair
    manifest = tflm_swap.read_manifest(seg)
    assert len(seg) == manifest.image_offset + manifest.image_size
    marks = [manifest.graph_size - 1, manifest.graph_size, manifest.image_offset - 1, manifest.image_offset]
    for s in manifest.segments:
        start, end = payload_span(manifest, s)
        marks += [start + 1, (start + end) // 2, end - 1]
    in_segments = 0
    for p in truncation_points(len(seg), rng_for(f"trunc-seg-{name}"), marks):
        with pytest.raises(TflmSwapError):
            Model.from_bytes(seg[:p])
        with pytest.raises(TflmSwapError) as exc:
            tflm_swap.verify(seg[:p])
        if p >= manifest.graph_size:  # the graph is whole, so the loss is in the segment region
            in_segments += 1
            first_cut = next(s for s in manifest.segments if payload_span(manifest, s)[1] > p)
            assert isinstance(exc.value, SegmentIntegrityError), (p, exc.value)
            assert f"segment {first_cut.id} " in str(exc.value)
            assert "truncated" in str(exc.value)
    assert in_segments >= len(manifest.segments)


# -------------------------------------------------------------------------------------- bit flips
def test_bit_flips_in_original_model(model_pair):
    """A flatbuffer has no checksum, so a flip may parse. Whatever parses must also segment into a
    file that verifies; whatever does not parse must fail with a TflmSwapError."""
    name, data, _ = model_pair
    rng = rng_for(f"flip-{name}")
    rejected = accepted = 0
    for _ in range(FLIP_TRIALS):
        bad = flip_bit(data, int(rng.integers(len(data))), int(rng.integers(8)))
        try:
            model = Model.from_bytes(bad)
        except TflmSwapError:
            rejected += 1
            continue
        accepted += 1
        try:
            out = tflm_swap.segment_model(model)
        except TflmSwapError:
            continue
        tflm_swap.verify(out)
    assert rejected and accepted  # the fuzzer reached both outcomes


def test_bit_flips_in_segment_payloads_fail_crc(model_pair):
    name, _, seg = model_pair
    manifest = tflm_swap.read_manifest(seg)
    assert manifest.segments
    rng = rng_for(f"flip-seg-{name}")
    for s in manifest.segments:
        start, end = payload_span(manifest, s)
        for pos in {start, end - 1, *(int(x) for x in rng.integers(start, end, 6))}:
            bad = flip_bit(seg, pos, int(rng.integers(8)))
            # The flatbuffer cannot notice: its external buffers are plain byte ranges ...
            Model.from_bytes(bad, read_external=False)
            assert tflm_swap.read_manifest(bad).segments[s.id].crc32 == s.crc32
            # ... which is why every reader of the weights and verify check every segment's CRC32.
            with pytest.raises(SegmentIntegrityError, match="CRC32") as exc:
                Model.from_bytes(bad)
            assert f"segment {s.id} " in str(exc.value)
            with pytest.raises(SegmentIntegrityError, match="CRC32") as exc:
                tflm_swap.verify(bad)
            assert f"segment {s.id} " in str(exc.value)


# ---------------------------------------------------------------------------------- the manifest
def manifest_position(seg: bytes) -> tuple[int, bytes]:
    blob = find_metadata(seg, MANIFEST_NAME)
    pos = seg.find(MAGIC)
    assert pos >= 0 and seg[pos : pos + len(blob)] == blob
    return pos, blob


def test_every_header_bit_flip_is_caught(model_pair):
    _, _, seg = model_pair
    pos, _ = manifest_position(seg)
    expected = {0: "magic", 4: "version", 8: "truncated|CRC32", 12: "CRC32"}
    for byte in range(HEADER_SIZE):
        for bit in range(8):
            bad = flip_bit(seg, pos + byte, bit)
            with pytest.raises(ManifestError, match=expected[byte - byte % 4]):
                tflm_swap.read_manifest(bad)
            with pytest.raises(ManifestError):
                tflm_swap.verify(bad)


def test_bit_flips_in_manifest_payload_fail_crc(model_pair):
    name, _, seg = model_pair
    pos, blob = manifest_position(seg)
    rng = rng_for(f"flip-manifest-{name}")
    json_end = pos + HEADER_SIZE + len(blob[HEADER_SIZE:].rstrip(b" "))
    points = {pos + HEADER_SIZE, json_end - 1, pos + len(blob) - 1}  # first, last JSON byte, padding
    points |= {int(x) for x in rng.integers(pos + HEADER_SIZE, pos + len(blob), 40)}
    for p in sorted(points):
        bad = flip_bit(seg, p, int(rng.integers(8)))
        for check in (tflm_swap.read_manifest, tflm_swap.verify, tflm_swap.split):
            with pytest.raises(ManifestError, match="CRC32"):
                check(bad)


def test_bit_flips_near_the_manifest_are_tflmswap_errors(model_pair):
    """Flips in the flatbuffer around the manifest (its vector length, the metadata table) may hit
    flatbuffer structure: they must still surface as TflmSwapError."""
    name, _, seg = model_pair
    pos, blob = manifest_position(seg)
    rng = rng_for(f"flip-near-manifest-{name}")
    for p in range(max(0, pos - 64), pos):
        bad = flip_bit(seg, p, int(rng.integers(8)))
        try:
            tflm_swap.verify(bad)
        except TflmSwapError:
            pass


def test_newer_manifest_version_is_rejected(model_pair):
    _, data, seg = model_pair
    manifest = Manifest.decode(find_metadata(seg, MANIFEST_NAME))
    manifest.version = FORMAT_VERSION + 1
    blob = manifest.encode()
    with pytest.raises(ManifestError, match="newer"):
        Manifest.decode(blob)
    newer = bytes(Model.from_bytes(seg).pack(metadata={MANIFEST_NAME: blob}))
    with pytest.raises(ManifestError, match="newer"):
        tflm_swap.read_manifest(newer)
    with pytest.raises(ManifestError, match="newer"):  # re-segmenting reads the old manifest too
        tflm_swap.segment_model(Model.from_bytes(newer))
    manifest.version = 0
    with pytest.raises(ManifestError, match="invalid"):
        Manifest.decode(manifest.encode())
    manifest.version = 2  # what the writer records without compressed entries (FORMAT_VERSION: with them)
    assert Manifest.decode(manifest.encode()) == tflm_swap.read_manifest(seg)


def test_model_without_manifest(model_pair):
    _, data, _ = model_pair
    for check in (tflm_swap.read_manifest, tflm_swap.verify, tflm_swap.split):
        with pytest.raises(ManifestError, match="no 'tflm_swap' manifest"):
            check(data)


def _blob(payload: bytes) -> bytes:
    return struct.pack("<4sIII", MAGIC, FORMAT_VERSION, len(payload), zlib.crc32(payload)) + payload


def _edited(seg: bytes, edit) -> bytes:
    d = tflm_swap.read_manifest(seg).to_dict()
    edit(d)
    return json.dumps(d).encode()


CRAFTED = {
    "null": lambda seg: b"null",
    "number": lambda seg: b"3",
    "list": lambda seg: b"[]",
    "not-utf8": lambda seg: b"\xff\xfe{}",
    "format": lambda seg: _edited(seg, lambda d: d.update(format="other")),
    "segments-ints": lambda seg: _edited(seg, lambda d: d.update(segments=[1, 2])),
    "offset-string": lambda seg: _edited(seg, lambda d: d["segments"][0].update(offset="0")),
    "size-negative": lambda seg: _edited(seg, lambda d: d["segments"][0].update(size=-1)),
    "users-empty": lambda seg: _edited(seg, lambda d: d["segments"][0].update(users=[])),
    "users-unsorted": lambda seg: _edited(seg, lambda d: d["segments"][0].update(users=[3, 1])),
    "page-size-0": lambda seg: _edited(seg, lambda d: d.update(page_size=0)),
    "image-before-graph": lambda seg: _edited(seg, lambda d: d.update(image_offset=0)),
    "unknown-field": lambda seg: _edited(seg, lambda d: d["segments"][0].update(colour="red")),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_manifest_with_valid_crc_is_rejected(models, case):
    """The CRC only proves the JSON is intact; bad structure or types must still be ManifestError."""
    if "kws_ref_model" not in models:
        pytest.skip("kws_ref_model.tflite is not among the shared MLPerf models")
    seg = models["kws_ref_model"][1]
    blob = _blob(CRAFTED[case](seg))
    with pytest.raises(ManifestError, match="not valid"):
        Manifest.decode(blob)
    crafted = bytes(Model.from_bytes(seg).pack(metadata={MANIFEST_NAME: blob}))
    with pytest.raises(ManifestError, match="not valid"):
        tflm_swap.verify(crafted)
    with pytest.raises(ManifestError, match="not valid"):  # the planner trusts the manifest's segments
        tflm_swap.plan_model(Model.from_bytes(crafted))


# ---------------------------------------------------------------------------------- split / join
def test_join_rejects_damaged_parts(model_pair):
    name, data, seg = model_pair
    graph, image = tflm_swap.split(seg)
    assert tflm_swap.join(graph, image) == seg
    manifest = tflm_swap.read_manifest(graph)
    with pytest.raises(SegmentIntegrityError, match="flash image is"):
        tflm_swap.join(graph, image[:-1])
    with pytest.raises(SegmentIntegrityError, match="flash image is"):
        tflm_swap.join(graph, image + b"\0")
    with pytest.raises(SegmentIntegrityError, match="graph is"):
        tflm_swap.join(graph + b"\0", image)
    rng = rng_for(f"join-{name}")
    for s in manifest.segments:  # image offsets are image-relative
        pos = int(rng.integers(s.offset, s.offset + s.size))
        with pytest.raises(SegmentIntegrityError, match=f"segment {s.id} .*CRC32"):
            tflm_swap.join(graph, flip_bit(image, pos, int(rng.integers(8))))
    with pytest.raises(TflmSwapError):
        tflm_swap.join(graph[:-1], image)
    with pytest.raises(ManifestError, match="no 'tflm_swap' manifest"):
        tflm_swap.join(data, image)


# --------------------------------------------------------------------------- unsupported models
def _repacked(data: bytes, edit) -> bytes:
    model = Model.from_bytes(data)
    edit(model.fb)
    return bytes(model.pack())


def test_two_subgraphs_are_unsupported(model_pair):
    _, data, _ = model_pair
    packed = _repacked(data, lambda fb: fb.subgraphs.append(copy.deepcopy(fb.subgraphs[0])))
    model = Model.from_bytes(packed)
    assert len(model.fb.subgraphs) == 2
    with pytest.raises(UnsupportedModelError, match="2 subgraphs"):
        tflm_swap.segment_model(model)
    with pytest.raises(UnsupportedModelError, match="subgraphs"):
        tflm_swap.plan_model(model)


def test_dangling_indices_are_malformed(model_pair):
    _, data, _ = model_pair
    model = Model.from_bytes(data)
    n_buffers, n_codes, n_tensors = len(model.fb.buffers), len(model.fb.operatorCodes), len(model.tensors)

    def bad_buffer(fb):
        fb.subgraphs[0].tensors[3].buffer = n_buffers + 5

    def bad_opcode(fb):
        fb.subgraphs[0].operators[1].opcodeIndex = n_codes

    def bad_input(fb):
        fb.subgraphs[0].operators[0].inputs[0] = n_tensors

    def bad_graph_output(fb):
        fb.subgraphs[0].outputs[0] = -2

    cases = [
        (bad_buffer, f"tensor 3 refers to buffer {n_buffers + 5}"),
        (bad_opcode, f"operator 1 has opcode index {n_codes}"),
        (bad_input, f"operator 0 inputs refer to tensor {n_tensors}"),
        (bad_graph_output, "subgraph 0 outputs refer to tensor -2"),
    ]
    for edit, message in cases:
        with pytest.raises(MalformedModelError, match=message):
            Model.from_bytes(_repacked(data, edit))


def test_dynamic_shape_is_unsupported(model_pair):
    _, data, _ = model_pair

    def dynamic(fb):
        t = fb.subgraphs[0].inputs[0]
        fb.subgraphs[0].tensors[t].shape[0] = -1

    with pytest.raises(UnsupportedModelError, match="dynamic shape"):
        Model.from_bytes(_repacked(data, dynamic))


# -------------------------------------------------------------------------------------- budgets
def test_budget_too_small_names_the_minimum(model_pair):
    _, data, _ = model_pair
    plan = tflm_swap.plan_model(Model.from_bytes(data))
    minimum = min(s.arena for s in plan.strategies.values())
    assert minimum > 1000
    with pytest.raises(BudgetError, match=rf"\b{minimum} bytes"):
        plan.fit(1000)
    with pytest.raises(BudgetError, match=rf"\b{minimum} bytes"):
        plan.fit(minimum - 1)
    chosen = plan.fit(minimum)
    assert chosen.arena == minimum


# ---------------------------------------------------------------------------------- file output
def test_write_atomic_never_overwrites_an_input(tmp_path):
    src = tmp_path / "model.tflite"
    src.write_bytes(b"original")
    link = tmp_path / "alias.tflite"
    os.symlink(src, link)
    for target in (src, link, tmp_path / "." / "model.tflite"):
        with pytest.raises(TflmSwapError, match="refusing to overwrite"):
            write_atomic(target, b"new", inputs=(src,))
    assert src.read_bytes() == b"original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias.tflite", "model.tflite"]


def test_write_atomic_leaves_no_temporary_files(tmp_path):
    src = tmp_path / "model.tflite"
    src.write_bytes(b"original")
    out = write_atomic(tmp_path / "sub" / "out.tflite", b"segmented", inputs=(src,))
    assert out.read_bytes() == b"segmented"
    write_atomic(out, b"again", inputs=(src,))  # replacing an earlier output is allowed
    assert out.read_bytes() == b"again"
    with pytest.raises(TypeError):  # a failed write removes its temporary file, keeps the old output
        write_atomic(out, "not bytes", inputs=(src,))
    assert out.read_bytes() == b"again"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["model.tflite", "out.tflite", "sub"]


def test_manifest_naming_missing_operator_or_buffer_is_rejected_by_the_planner(mlperf_models):
    """A manifest with a valid CRC that names operators/buffers the graph lacks gives ManifestError."""
    from tflm_swap import plan_model

    model = Model.load(next(p for p in mlperf_models if p.name == "kws_ref_model.tflite"))
    data = tflm_swap.segment_model(model)
    for field, value in (("users", [999]), ("buffer", 10_000)):
        manifest = tflm_swap.read_manifest(data)
        if field == "users":
            manifest.segments[0].users = value
        else:
            manifest.segments[0].entries[0].buffer = value
        seg = Model.from_bytes(data)
        bad = Model.from_bytes(bytes(seg.pack(metadata={MANIFEST_NAME: manifest.encode()})))
        with pytest.raises(ManifestError, match="segment 0"):
            plan_model(bad)
