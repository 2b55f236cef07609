"""Move constant buffers into page-aligned segments after the flatbuffer, in execution order.

File layout of a segmented model::

    [flatbuffer: graph, small inline constants, `tflm_swap` manifest] [zero pad to a page]
    [segment 0] [pad] [segment 1] [pad] ... [segment N-1]

The external buffers use the standard `Buffer.offset/size` fields (absolute file offsets), so stock
LiteRT loads the file as it is. The bytes from the image base on form the flash image.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

from .errors import SegmentIntegrityError, TflmSwapError
from .manifest import HEADER_SIZE, MANIFEST_NAME, Manifest, OpStep, Segment, SegmentEntry, read_manifest
from .model import DATA_ALIGNMENT, ExternalBuffer, Model

DEFAULT_PAGE_SIZE = 4096
DEFAULT_MIN_SEGMENT_BYTES = 1024
MAX_PAGE_SIZE = 1 << 24  # 16 MiB, above any flash erase block; larger pages only pad the file


@dataclass(frozen=True)
class SegmentSpec:
    """A planned segment: which buffers it holds and which operators read them."""

    buffers: tuple[int, ...]
    users: tuple[int, ...]

    def entry_offsets(self, model: Model) -> list[int]:
        """Offset of each buffer inside the segment (each aligned to DATA_ALIGNMENT)."""
        offsets, end = [], 0
        for b in self.buffers:
            offsets.append(align(end, DATA_ALIGNMENT))
            end = offsets[-1] + len(model.buffers[b])
        return offsets

    def packed_size(self, model: Model) -> int:
        """Payload bytes of the segment."""
        if not self.buffers:
            return 0
        return self.entry_offsets(model)[-1] + len(model.buffers[self.buffers[-1]])


def align(value: int, to: int) -> int:
    return -(-value // to) * to


def weight_users(model: Model, min_bytes: int) -> dict[int, list[int]]:
    """Constant buffers of at least `min_bytes`, mapped to the operators reading them (in order)."""
    users: dict[int, list[int]] = {}
    for op in range(len(model.operators)):
        for t in model.op_inputs(op):
            b = model.constant_buffer(t)
            if b is not None and len(model.buffers[b]) >= min_bytes:
                ops = users.setdefault(b, [])
                if op not in ops:
                    ops.append(op)
    return users


def layout_segments(model: Model, min_bytes: int = DEFAULT_MIN_SEGMENT_BYTES) -> list[SegmentSpec]:
    """Plan segments in execution order.

    Each operator gets one segment with the buffers only it reads. A buffer read by several
    operators is stored once, in a segment of its own placed just before the segment of its first
    user, so every segment has a single lifetime [first use, last use].
    """
    users = weight_users(model, min_bytes)
    specs: list[SegmentSpec] = []
    for op in range(len(model.operators)):
        first_here = [b for b, ops in users.items() if ops[0] == op]
        shared = [b for b in first_here if len(users[b]) > 1]
        private = [b for b in first_here if len(users[b]) == 1]
        specs.extend(SegmentSpec((b,), tuple(users[b])) for b in shared)
        if private:
            specs.append(SegmentSpec(tuple(private), (op,)))
    return specs


def segment_model(
    model: Model,
    page_size: int = DEFAULT_PAGE_SIZE,
    min_segment_bytes: int = DEFAULT_MIN_SEGMENT_BYTES,
    source: bytes | None = None,
) -> bytes:
    """Return the segmented `.tflite` bytes for `model` (see module docstring).

    The manifest records the SHA-256 and size of `source`, the file the model came from (default:
    the model's own bytes; a re-segmented model keeps the hash it recorded)."""
    _check_options(page_size, min_segment_bytes)
    model.check_single_graph()
    segments, image = _build_image(model, layout_segments(model, min_segment_bytes), page_size)
    previous = _previous_manifest(model)
    manifest = Manifest(
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
    )
    graph = _pack_until_stable(model, manifest)
    return bytes(graph) + bytes(manifest.image_offset - len(graph)) + image


def _check_options(page_size: int, min_segment_bytes: int) -> None:
    if page_size < DATA_ALIGNMENT or page_size > MAX_PAGE_SIZE or page_size & (page_size - 1):
        raise TflmSwapError(f"page size {page_size} must be a power of two in {DATA_ALIGNMENT}..{MAX_PAGE_SIZE}")
    if min_segment_bytes < 1:
        raise TflmSwapError(f"minimum segment buffer size {min_segment_bytes} must be >= 1 byte")


def _previous_manifest(model: Model) -> Manifest | None:
    blob = model.metadata(MANIFEST_NAME)
    return Manifest.decode(blob) if blob is not None else None


def _build_image(model: Model, specs: list[SegmentSpec], page_size: int) -> tuple[list[Segment], bytes]:
    tensors_of: dict[int, list[int]] = {}
    for t in range(len(model.tensors)):
        tensors_of.setdefault(model.tensors[t].buffer, []).append(t)
    image = bytearray()
    segments = []
    for seg_id, spec in enumerate(specs):
        start = align(len(image), page_size)
        payload = bytearray(spec.packed_size(model))
        entries = []
        for b, offset in zip(spec.buffers, spec.entry_offsets(model)):
            data = model.buffers[b]
            payload[offset : offset + len(data)] = data
            ts = tensors_of[b]
            entries.append(SegmentEntry(b, ts, model.tensor_name(ts[0]), offset, len(data)))
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


# ------------------------------------------------------------------------------ checking, split
def verify(data: bytes) -> Manifest:
    """Check a segmented model: manifest, page alignment, CRC32 of every segment, buffer offsets.

    Returns the manifest; raises ManifestError, SegmentIntegrityError or MalformedModelError.
    """
    manifest = read_manifest(data)
    check_image(manifest, memoryview(data)[manifest.image_offset :], what="model file")
    model = Model.from_bytes(data)
    for seg in manifest.segments:
        for e in seg.entries:
            fb_buf = model.fb.buffers[e.buffer] if e.buffer < len(model.fb.buffers) else None
            want = manifest.image_offset + seg.offset + e.offset
            if fb_buf is None or fb_buf.offset != want or fb_buf.size != e.size:
                raise SegmentIntegrityError(
                    f"buffer {e.buffer} ({e.name}) of segment {seg.id}: graph says offset "
                    f"{getattr(fb_buf, 'offset', None)} size {getattr(fb_buf, 'size', None)}, "
                    f"manifest says {want} size {e.size}"
                )
    return manifest


def check_image(manifest: Manifest, image: bytes | memoryview, what: str = "flash image") -> None:
    """Check that `image` (bytes from the image base) holds every segment intact."""
    for seg in manifest.segments:
        if seg.offset % manifest.page_size:
            raise SegmentIntegrityError(
                f"segment {seg.id} at image offset {seg.offset} is not aligned to the "
                f"{manifest.page_size}-byte page"
            )
        end = seg.offset + seg.size
        if end > len(image):
            raise SegmentIntegrityError(
                f"{what} is truncated: segment {seg.id} needs image bytes {seg.offset}..{end}, "
                f"only {len(image)} present"
            )
        check_segment(seg, image[seg.offset : end])


def check_segment(seg: Segment, payload: bytes | memoryview) -> None:
    """Raise SegmentIntegrityError unless `payload` is segment `seg`'s intact bytes."""
    if len(payload) != seg.size:
        raise SegmentIntegrityError(
            f"segment {seg.id} at image offset {seg.offset}: read {len(payload)} bytes, expected {seg.size}"
        )
    crc = zlib.crc32(payload)
    if crc != seg.crc32:
        raise SegmentIntegrityError(
            f"segment {seg.id} at image offset {seg.offset} is corrupt: CRC32 {crc:#010x}, "
            f"expected {seg.crc32:#010x}"
        )


def split(data: bytes) -> tuple[bytes, bytes]:
    """Split a segmented model into (graph flatbuffer, flash image); image offsets are image-relative."""
    manifest = verify(data)
    graph = data[: manifest.graph_size]
    image = data[manifest.image_offset : manifest.image_offset + manifest.image_size]
    return graph, image


def join(graph: bytes, image: bytes) -> bytes:
    """Reassemble the single-file model from a (graph, image) pair made by `split`."""
    manifest = read_manifest(graph)
    if len(graph) != manifest.graph_size:
        raise SegmentIntegrityError(
            f"graph is {len(graph)} bytes, but its manifest says {manifest.graph_size} (truncated or padded?)"
        )
    if len(image) != manifest.image_size:
        raise SegmentIntegrityError(
            f"flash image is {len(image)} bytes, but the manifest says {manifest.image_size}"
        )
    check_image(manifest, image)
    data = bytes(graph) + bytes(manifest.image_offset - len(graph)) + bytes(image)
    verify(data)
    return data
