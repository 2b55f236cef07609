"""Write segmented models: constant buffers moved into page-aligned segments after the flatbuffer,
in execution order, with the manifest inside the graph (layout: `tflm_swap.format.segments`)."""

from __future__ import annotations

import hashlib
import zlib

from tflm_swap.errors import TflmSwapError
from tflm_swap.format.manifest import (
    ENCODED_VERSION,
    GRAPH_HASH_VERSION,
    HEADER_SIZE,
    MANIFEST_NAME,
    Manifest,
    OpStep,
    Segment,
    SegmentEntry,
    graph_digest,
    metadata_span,
)
from tflm_swap.format.model import DATA_ALIGNMENT, ExternalBuffer, Model
from tflm_swap.format.segments import (
    DEFAULT_MIN_SEGMENT_BYTES,
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    SegmentSpec,
    align,
    layout_segments,
)

from .compress import encoded_filters
from .decode_layout import expand


def segment_model(
    model: Model,
    page_size: int = DEFAULT_PAGE_SIZE,
    min_segment_bytes: int = DEFAULT_MIN_SEGMENT_BYTES,
    source: bytes | None = None,
    encode: bool = False,
    keep_decode: bool = False,
) -> bytes:
    """Return the segmented `.tflite` bytes for `model` (see module docstring).

    The manifest records the SHA-256 and size of `source`, the file the model came from (default:
    the model's own bytes; a re-segmented model keeps the hash it recorded). With `encode`, the
    int8 filters of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED are stored palette-encoded
    (`tflm_swap.format.palette`) where that is smaller, in a version-3 manifest; the file then needs
    a tflm_swap reader, which decodes them back to `model`'s bytes. An upstream-compressed model
    (TFLM_DECODE operators) is segmented as the model it decodes to (`decode_layout.expand`), or,
    with `keep_decode`, as it is: its encoded and ancillary tensors are then ordinary buffers in the
    segments, the layout the LiteRT delegate decodes (docs/DELEGATE.md)."""
    _check_options(page_size, min_segment_bytes)
    source = source or model.raw
    if not keep_decode:
        model = expand(model)  # upstream TFLM's DECODE layout: the model it decodes to
    model.check_single_graph()
    stored = encoded_filters(model) if encode else {}
    segments, image = _build_image(model, layout_segments(model, min_segment_bytes), page_size, stored)
    previous = _previous_manifest(model)
    manifest = Manifest(
        version=ENCODED_VERSION if any(s.encoded for s in segments) else GRAPH_HASH_VERSION,
        page_size=page_size,
        alignment=DATA_ALIGNMENT,
        min_segment_bytes=min_segment_bytes,
        graph_size=0,
        image_offset=page_size,
        image_size=len(image),
        source_sha256=previous.source_sha256 if previous else hashlib.sha256(source or model.raw).hexdigest(),
        source_size=previous.source_size if previous else len(source or model.raw),
        segments=segments,
        schedule=_schedule(model, segments),
        graph_sha256="0" * 64,  # a placeholder of the same length until the graph is final
    )
    graph = _pack_until_stable(model, manifest)
    _record_graph_digest(graph, manifest)
    return bytes(graph) + bytes(manifest.image_offset - len(graph)) + image


def _check_options(page_size: int, min_segment_bytes: int) -> None:
    if page_size < DATA_ALIGNMENT or page_size > MAX_PAGE_SIZE or page_size & (page_size - 1):
        raise TflmSwapError(f"page size {page_size} must be a power of two in {DATA_ALIGNMENT}..{MAX_PAGE_SIZE}")
    if min_segment_bytes < 1:
        raise TflmSwapError(f"minimum segment buffer size {min_segment_bytes} must be >= 1 byte")


def _previous_manifest(model: Model) -> Manifest | None:
    blob = model.metadata(MANIFEST_NAME)
    return Manifest.decode(blob) if blob is not None else None


def _build_image(model: Model, specs: list[SegmentSpec], page_size: int,
                 stored: dict[int, bytes]) -> tuple[list[Segment], bytes]:
    """The image: each buffer's bytes, or its encoding in `stored`, packed segment by segment."""
    tensors_of: dict[int, list[int]] = {}
    for t in range(len(model.tensors)):
        tensors_of.setdefault(model.tensors[t].buffer, []).append(t)
    image = bytearray()
    segments = []
    for seg_id, spec in enumerate(specs):
        start = align(len(image), page_size)
        payload = bytearray()
        entries = []
        for b in spec.buffers:
            data = stored.get(b, model.buffers[b])
            offset = align(len(payload), DATA_ALIGNMENT)
            payload += bytes(offset - len(payload)) + data
            ts = tensors_of[b]
            decoded = len(model.buffers[b]) if b in stored else None
            entries.append(SegmentEntry(b, ts, model.tensor_name(ts[0]), offset, len(data), decoded))
        image += bytes(start - len(image)) + payload
        segments.append(Segment(seg_id, start, len(payload), zlib.crc32(payload), list(spec.users), entries))
    return segments, bytes(image)


def _schedule(model: Model, segments: list[Segment]) -> list[OpStep]:
    steps = []
    for op in range(len(model.operators)):
        used = [s for s in segments if op in s.users]
        steps.append(OpStep(
            op=op,
            opcode=model.opcode_name(op),
            segments=[s.id for s in used],
            load=[s.id for s in used if s.first_use == op],
            release=[s.id for s in used if s.last_use == op],
            weight_bytes=sum(s.size for s in used),
        ))
    return steps


def _record_graph_digest(graph: bytearray, manifest: Manifest) -> None:
    """Write the graph's SHA-256 into its manifest, in place: the digest reads the manifest's bytes
    as zeros, and the manifest keeps its length (64 hex digits replace the placeholder's 64)."""
    manifest.graph_sha256 = graph_digest(graph, len(graph))
    start, end = metadata_span(bytes(graph), MANIFEST_NAME)
    blob = manifest.encode(min_capacity=end - start - HEADER_SIZE)
    if len(blob) != end - start:  # pragma: no cover - a bug if hit
        raise RuntimeError("the manifest changed size when its graph hash was recorded")
    graph[start:end] = blob


def _pack_until_stable(model: Model, manifest: Manifest) -> bytearray:
    """Pack the graph; the manifest records the graph's own size, so iterate to a fixed point.

    Buffer offsets are fixed-width integers and the manifest JSON is padded to a capacity that only
    grows, so the size settles after two or three rounds.
    """
    capacity = 0
    for _ in range(16):
        blob = manifest.encode(min_capacity=capacity)
        capacity = len(blob) - HEADER_SIZE
        external = {
            e.buffer: ExternalBuffer(manifest.image_offset + s.offset + e.offset, e.size)
            for s in manifest.segments
            for e in s.entries
        }
        graph = model.pack(external, {MANIFEST_NAME: blob})
        image_offset = max(manifest.image_offset, align(len(graph), manifest.page_size))
        if len(graph) == manifest.graph_size and image_offset == manifest.image_offset:
            return graph
        manifest.graph_size, manifest.image_offset = len(graph), image_offset
    raise RuntimeError("segmented model layout did not converge")  # pragma: no cover - a bug if hit
