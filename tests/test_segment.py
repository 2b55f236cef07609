"""Segmented models on the real MLPerf Tiny models: bit-identical on LiteRT, aligned, CRC-checked."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from helpers import assert_bit_identical, outputs_on_random_inputs

import tflm_swap
from tflm_swap import Manifest, Model, UnsupportedModelError, read_manifest, segment_model
from tflm_swap.format.manifest import MANIFEST_NAME
from tflm_swap.interpreters import tflm_interpreter


@pytest.fixture(scope="module")
def segmented(mlperf_models):
    return {p.name: (p.read_bytes(), segment_model(Model.load(p))) for p in mlperf_models}


def test_every_mlperf_model_is_bit_identical_on_litert(segmented):
    assert len(segmented) == 5
    for original, data in segmented.values():
        assert_bit_identical(original, data, n=20)


def test_int8_models_bit_identical_with_reference_kernels(segmented):
    for name, (original, data) in segmented.items():
        if "int8" in name or "quant" in name:
            assert_bit_identical(original, data, n=20, reference_kernels=True)


def test_outputs_really_vary_with_input(segmented):
    """Guard against a vacuous comparison: different inputs give different outputs."""
    original, _ = segmented["vww_96_int8.tflite"]
    outs = outputs_on_random_inputs(original, n=5)
    assert any(not np.array_equal(outs[0][0], o[0]) for o in outs[1:])


def test_segments_are_page_aligned_and_crcs_match(segmented):
    for name, (_, data) in segmented.items():
        m = tflm_swap.verify(data)
        assert m.image_offset % m.page_size == 0 and m.graph_size <= m.image_offset
        assert m.segments, f"{name}: nothing was moved out"
        for seg in m.segments:
            start = m.image_offset + seg.offset
            assert start % m.page_size == 0
            assert zlib.crc32(data[start : start + seg.size]) == seg.crc32
            for e in seg.entries:
                assert e.offset % 16 == 0


def test_weights_leave_the_flatbuffer(segmented):
    for original, data in segmented.values():
        m = read_manifest(data)
        model = Model.from_bytes(data)
        moved = {e.buffer for s in m.segments for e in s.entries}
        for b in moved:
            assert model.fb.buffers[b].data is None and model.fb.buffers[b].offset > 1
        moved_bytes = sum(len(model.buffers[b]) for b in moved)
        manifest_bytes = len(model.metadata(MANIFEST_NAME))
        # the graph shrinks by what moved out; it grows by the manifest and alignment padding only
        assert m.graph_size <= len(original) - moved_bytes + manifest_bytes + 16 * len(model.buffers) + 256


def test_segments_follow_execution_order_and_schedule(segmented):
    for _, (_, data) in segmented.items():
        m = read_manifest(data)
        firsts = [s.first_use for s in m.segments]
        assert firsts == sorted(firsts)
        offsets = [s.offset for s in m.segments]
        assert offsets == sorted(offsets)
        for step in m.schedule:
            for sid in step.segments:
                assert step.op in m.segments[sid].users
            assert step.weight_bytes == sum(m.segments[s].size for s in step.segments)
        loads = [sid for step in m.schedule for sid in step.load]
        assert sorted(loads) == list(range(len(m.segments)))


def test_manifest_round_trips(segmented):
    for _, (_, data) in segmented.items():
        m = read_manifest(data)
        again = Manifest.decode(m.encode())
        assert again == m
        assert again.to_dict() == m.to_dict()
        assert m.to_dict()["format"] == MANIFEST_NAME


def test_split_and_join_reassemble_the_same_bytes(segmented):
    for _, (_, data) in segmented.items():
        graph, image = tflm_swap.split(data)
        m = read_manifest(graph)
        assert len(graph) == m.graph_size and len(image) == m.image_size
        assert image[m.segments[0].offset : m.segments[0].offset + 8] == data[
            m.image_offset + m.segments[0].offset : m.image_offset + m.segments[0].offset + 8]
        assert tflm_swap.join(graph, image) == data


def test_resegmenting_is_idempotent(segmented):
    for _, (original, data) in segmented.items():
        assert segment_model(Model.from_bytes(data)) == data
        assert read_manifest(data).source_sha256 == __import__("hashlib").sha256(original).hexdigest()


@pytest.mark.parametrize("page_size,min_bytes", [(64, 1), (16384, 4096)])
def test_other_page_sizes_and_thresholds(mlperf_models, page_size, min_bytes):
    path = next(p for p in mlperf_models if p.name == "kws_ref_model.tflite")
    original = path.read_bytes()
    data = segment_model(Model.from_bytes(original), page_size=page_size, min_segment_bytes=min_bytes)
    m = tflm_swap.verify(data)
    assert m.page_size == page_size
    assert all((m.image_offset + s.offset) % page_size == 0 for s in m.segments)
    assert all(e.size >= min_bytes for s in m.segments for e in s.entries)
    assert_bit_identical(original, data, n=20)


def test_tflite_micro_is_never_handed_a_segmented_model(segmented):
    _, data = segmented["kws_ref_model.tflite"]
    with pytest.raises(UnsupportedModelError, match="Buffer.offset"):
        tflm_interpreter(data)
