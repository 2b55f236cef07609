"""Segmented models: their layout, and reading, checking, splitting and joining them.

`tflm_swap.converters.segment` writes them. File layout of a segmented model::

    [flatbuffer: graph, small inline constants, `tflm_swap` manifest] [zero pad to a page]
    [segment 0] [pad] [segment 1] [pad] ... [segment N-1]

The external buffers use the standard `Buffer.offset/size` fields (absolute file offsets), so stock
LiteRT loads the file as it is. The bytes from the image base on form the flash image.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from ..errors import SegmentIntegrityError
from .manifest import Manifest, Segment, read_manifest
from .model import DATA_ALIGNMENT, Model

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
