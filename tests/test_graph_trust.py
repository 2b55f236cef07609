"""Nothing trusted without a check (issue 16): the manifest records the graph's SHA-256 and `verify`
checks it; every loader (SwapInterpreter, the delegate's tile table, stage files) checks the graph
against it and the manifest against the graph, so a forged manifest is refused instead of placing
weights wrongly; stage files are bound to their model. Each test failed on the commit before."""

from __future__ import annotations

import json
import struct
import warnings
import zlib
from collections.abc import Callable

import numpy as np
import pytest

import tflm_swap
from tflm_swap import Manifest, Model, SegmentIntegrityError, TflmSwapError
from tflm_swap.converters.segment import segment_model
from tflm_swap.errors import ManifestError
from tflm_swap.format.manifest import HEADER_SIZE, MAGIC, MANIFEST_NAME, graph_digest, metadata_span
from tflm_swap.interpreters import litert_interpreter, random_inputs
from tflm_swap.runtime import SwapInterpreter


@pytest.fixture(scope="module")
def kws(mlperf_models) -> tuple[Model, bytes]:
    """The KWS model and its segmented bytes (five segments; four of 4096 bytes)."""
    model = Model.load(next(p for p in mlperf_models if p.name == "kws_ref_model.tflite"))
    return model, segment_model(model)


def _with_manifest(seg: bytes, edit: Callable[[Manifest], None]) -> bytes:
    """`seg` with its manifest edited in place (same length, valid CRC32): the graph and its
    SHA-256 are untouched, so only the cross-check of manifest and graph can notice."""
    start, end = metadata_span(seg, MANIFEST_NAME)
    manifest = Manifest.decode(seg[start:end])
    edit(manifest)
    blob = manifest.encode(min_capacity=end - start - HEADER_SIZE)
    assert len(blob) == end - start, "the edit must fit the manifest's padding"
    return seg[:start] + blob + seg[end:]


def _swap_segments(m: Manifest) -> None:
    """Segments 1 and 2 (both 4096 bytes) trade places: each CRC32 still matches what is read."""
    a, b = m.segments[1], m.segments[2]
    a.offset, b.offset, a.crc32, b.crc32 = b.offset, a.offset, b.crc32, a.crc32


def _shift_entry(m: Manifest) -> None:
    m.segments[0].entries[0].offset += 16


def _other_tensor(m: Manifest) -> None:
    entry = m.segments[3].entries[0]
    entry.tensors = [entry.tensors[0] + 1]


def _other_user(m: Manifest) -> None:
    seg = m.segments[1]
    m.schedule[seg.users[0]].segments.remove(seg.id)
    seg.users = [seg.users[0] + 1]


def _drop_last_segment(m: Manifest) -> None:
    gone = m.segments.pop()
    for step in m.schedule:
        for ids in (step.segments, step.load, step.release):
            if gone.id in ids:
                ids.remove(gone.id)
        if step.op in gone.users:
            step.weight_bytes -= gone.size


def _later_schedule(m: Manifest) -> None:
    step = next(s for s in m.schedule if s.load)
    later = m.schedule[step.op + 1]
    later.load, step.load = step.load, []


FORGERIES = {"swap-segments": _swap_segments, "shift-entry": _shift_entry, "other-tensor": _other_tensor,
             "other-user": _other_user, "drop-segment": _drop_last_segment, "later-load": _later_schedule}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_manifest_is_refused_by_every_loader(kws, tmp_path, forgery):
    """A manifest edited with a valid CRC32 but disagreeing with the graph is refused, naming the
    file, by verify, SwapInterpreter (paged or not) and the tile table builder, before any run."""
    from tflm_swap.delegate import build_tile_table
    from tflm_swap.format.segments import check_graph_digest, check_image

    _, seg = kws
    forged = _with_manifest(seg, FORGERIES[forgery])
    manifest = tflm_swap.read_manifest(forged)
    check_graph_digest(forged, manifest)  # the graph is intact, and every segment passes its CRC32:
    check_image(manifest, forged[manifest.image_offset :])  # only the cross-check can tell
    path = tmp_path / "forged.swap.tflite"
    path.write_bytes(forged)
    with pytest.raises(SegmentIntegrityError):
        tflm_swap.verify(path.read_bytes())
    with pytest.raises(SegmentIntegrityError, match="forged.swap.tflite"):
        SwapInterpreter(path, ram_budget=None)
    with pytest.raises(SegmentIntegrityError, match="forged.swap.tflite"):
        SwapInterpreter(path, ram_budget=16384, default_delegates=False)
    with pytest.raises(SegmentIntegrityError, match="forged.swap.tflite"):
        build_tile_table(path, tile_bytes=4096, table_path=tmp_path / "t.tiles")


def _graph_positions(seg: bytes, rng: np.random.Generator, n: int) -> list[int]:
    """`n` byte positions of the graph outside the manifest's own bytes, and of the zero padding."""
    manifest = tflm_swap.read_manifest(seg)
    start, end = metadata_span(seg, MANIFEST_NAME)
    outside = np.concatenate([np.arange(0, start), np.arange(end, manifest.image_offset)])
    return sorted(int(p) for p in rng.choice(outside, size=n, replace=False))


def test_verify_catches_bit_flips_in_the_graph(kws):
    """Every sampled single-bit flip in the graph region (outside the manifest, which its CRC32
    covers) or in the padding up to the image fails verify; most by the graph's SHA-256."""
    _, seg = kws
    rng = np.random.default_rng(16)
    by_hash = 0
    positions = _graph_positions(seg, rng, 1500)
    for pos in positions:
        bad = bytearray(seg)
        bad[pos] ^= 1 << int(rng.integers(8))
        with pytest.raises(TflmSwapError) as exc:
            tflm_swap.verify(bytes(bad))
        by_hash += "SHA-256" in str(exc.value)
    assert by_hash > len(positions) * 0.9


def test_loaders_refuse_a_flipped_graph(kws, tmp_path):
    """SwapInterpreter and the tile table builder check the graph's SHA-256 before using it."""
    from tflm_swap.delegate import build_tile_table

    _, seg = kws
    start, _ = metadata_span(seg, MANIFEST_NAME)
    for pos in (start - 1, start // 2, tflm_swap.read_manifest(seg).graph_size - 1):
        bad = bytearray(seg)
        bad[pos] ^= 0x01
        path = tmp_path / f"flip{pos}.swap.tflite"
        path.write_bytes(bytes(bad))
        with pytest.raises(TflmSwapError):
            SwapInterpreter(path, default_delegates=False)
        with pytest.raises(TflmSwapError):
            build_tile_table(path, tile_bytes=4096, table_path=tmp_path / "t.tiles")


def test_graph_digest_is_recorded_and_leaves_out_the_manifest(kws):
    """graph_sha256 is the SHA-256 of the graph with the manifest's bytes zeroed; version 2."""
    _, seg = kws
    manifest = tflm_swap.read_manifest(seg)
    assert manifest.version == 2 and manifest.graph_sha256 == graph_digest(seg, manifest.graph_size)
    start, end = metadata_span(seg, MANIFEST_NAME)
    import hashlib

    zeroed = seg[:start] + bytes(end - start) + seg[end : manifest.graph_size]
    assert manifest.graph_sha256 == hashlib.sha256(zeroed).hexdigest()
    assert list(manifest.to_dict())[:8] == ["format", "version", "page_size", "alignment", "min_segment_bytes",
                                            "graph_size", "graph_sha256", "image_offset"]


def _as_version_1(seg: bytes) -> bytes:
    """`seg` as tflm_swap wrote it before graph hashes: a version-1 manifest (same layout)."""
    def edit(m: Manifest) -> None:
        m.version, m.graph_sha256 = 1, None
    return _with_manifest(seg, edit)


def test_version_1_files_still_load_with_a_warning(kws, tmp_path, capsys):
    """A file written before graph hashes (manifest version 1) still verifies and runs,
    bit-identically, with an UncheckedGraphWarning saying its graph is unchecked; segmenting it
    again gives a version-2 file. A version-1 manifest with a graph_sha256 field is malformed."""
    from tflm_swap.format.segments import UncheckedGraphWarning

    model, seg = kws
    old = _as_version_1(seg)
    start, end = metadata_span(old, MANIFEST_NAME)
    assert '"graph_sha256"' not in old[start:end].decode(errors="replace")
    with pytest.warns(UncheckedGraphWarning, match="version 1.*segment the model again"):
        manifest = tflm_swap.verify(old)
    assert manifest.version == 1 and manifest.graph_sha256 is None
    path = tmp_path / "old.swap.tflite"
    path.write_bytes(old)
    from tflm_swap.cli import main

    assert main(["verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "SHA-256" not in out.splitlines()[0] and "note: " in out and "version 1" in out
    with pytest.warns(UncheckedGraphWarning):
        swap = SwapInterpreter(path, ram_budget=16384, default_delegates=False)
    with swap:
        swap.allocate_tensors()
        d, o = swap.get_input_details()[0], swap.get_output_details()[0]
        x = random_inputs([d], np.random.default_rng(1))[0]
        swap.set_tensor(d["index"], x)
        swap.invoke()
        stock = litert_interpreter(model.raw, default_delegates=False)
        stock.allocate_tensors()
        stock.set_tensor(stock.get_input_details()[0]["index"], x)
        stock.invoke()
        assert swap.get_tensor(o["index"]).tobytes() == stock.get_tensor(o["index"]).tobytes()
    again = segment_model(Model.from_bytes(old))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tflm_swap.verify(again).version == 2
    fields = {**tflm_swap.read_manifest(seg).to_dict(), "version": 1}
    payload = json.dumps(fields).encode()
    blob = struct.pack("<4sIII", MAGIC, 1, len(payload), zlib.crc32(payload)) + payload
    with pytest.raises(ManifestError, match="version 1 manifest has no graph_sha256"):
        Manifest.decode(blob)


def _synthetic(seed: int) -> bytes:
    from tflm_swap.converters.synthetic import build_model, fc

    plain = build_model([1, 64], [fc(96, "RELU"), fc(32, "RELU"), fc(8)], dtype="int8", seed=seed)
    return tflm_swap.convert(plain, min_segment_bytes=64).data


def test_stage_files_of_another_model_are_refused(tmp_path, capsys):
    """Stage files are bound to the model they were exported from by its SHA-256 (stages.json):
    another model with the same operators, whose stages would run with wrong weights, is refused;
    so is an index from before the binding."""
    import json

    from tflm_swap.cli import main
    from tflm_swap.runtime.stage_files import model_identity

    a, b = tmp_path / "a.swap.tflite", tmp_path / "b.swap.tflite"
    a.write_bytes(_synthetic(1))
    b.write_bytes(_synthetic(2))
    out = tmp_path / "stages"
    assert main(["stages", str(a), "--ram-budget", "8KiB", "--prefetch", "0", "--out", str(out)]) == 0
    index = json.loads((out / "stages.json").read_text())
    assert len(index["stages"]) > 1 and index["model_sha256"] == model_identity(a.read_bytes())
    with SwapInterpreter(a, stage_files=out, default_delegates=False) as swap:
        swap.allocate_tensors()
        assert len(swap.stages) == len(index["stages"])
    with pytest.raises(ManifestError, match="exported from another model"):
        SwapInterpreter(b, stage_files=out, default_delegates=False)
    (out / "stages.json").write_text(json.dumps(index["stages"]))  # the unbound format of before
    with pytest.raises(ManifestError, match="older tflm-swap and records no model hash"):
        SwapInterpreter(a, stage_files=out, default_delegates=False)
