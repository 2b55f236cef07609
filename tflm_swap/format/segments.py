"""Segmented models: their layout, and reading, checking, splitting and joining them.

`tflm_swap.converters.segment` writes them. File layout of a segmented model::

    [flatbuffer: graph, small inline constants, `tflm_swap` manifest] [zero pad to a page]
    [segment 0] [pad] [segment 1] [pad] ... [segment N-1]

The external buffers use the standard `Buffer.offset/size` fields (absolute file offsets), so stock
LiteRT loads the file as it is. The bytes from the image base on form the flash image.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import SegmentIntegrityError
from . import palette
from .manifest import Manifest, Segment, SegmentEntry, graph_digest, read_manifest
from .model import DATA_ALIGNMENT, Model

DEFAULT_PAGE_SIZE = 4096
DEFAULT_MIN_SEGMENT_BYTES = 1024
MAX_PAGE_SIZE = 1 << 24  # 16 MiB, above any flash erase block; larger pages only pad the file


class UncheckedGraphWarning(UserWarning):
    """A version-1 manifest records no hash of its graph, so the graph region goes unchecked."""


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


def verify(data: bytes, source: str = "model file") -> Manifest:
    """Check a segmented model: the graph's SHA-256 (version 2 manifests), zeros up to the image,
    page alignment and CRC32 of every segment, and the manifest against the graph's buffers.

    Returns the manifest; raises ManifestError, SegmentIntegrityError or MalformedModelError.
    """
    manifest = read_manifest(data)
    check_graph_digest(data, manifest, source)
    check_image(manifest, memoryview(data)[manifest.image_offset :], what=source)
    check_against_graph(manifest, Model.from_bytes(data, source=source), source)
    return manifest


def check_graph_digest(head: bytes | memoryview, manifest: Manifest, source: str = "model file") -> None:
    """Raise SegmentIntegrityError unless `head` (the file from its start, at least the graph)
    holds the graph the manifest records (`graph_sha256`: every graph byte but the manifest's own,
    which its CRC32 covers) and zeros from the graph's end to the image (or to the end of `head`).
    A version-1 manifest records no hash: then only the padding is checked, with a warning."""
    if len(head) < manifest.graph_size:
        raise SegmentIntegrityError(
            f"{source} is truncated: the graph is {manifest.graph_size} bytes, {len(head)} present")
    if manifest.graph_sha256 is None:
        warnings.warn(f"{source}: its manifest (format version {manifest.version}) records no hash of the graph, "
                      "so the graph is not checked; segment the model again (tflm-swap convert) to add one",
                      UncheckedGraphWarning, stacklevel=3)
    else:
        found = graph_digest(head, manifest.graph_size)
        if found != manifest.graph_sha256:
            raise SegmentIntegrityError(
                f"{source}: the graph (bytes 0..{manifest.graph_size}) fails its SHA-256 check (computed "
                f"{found[:16]}..., the manifest records {manifest.graph_sha256[:16]}...): the file is corrupt, "
                "or its graph was edited after segmenting")
    padding = bytes(head[manifest.graph_size : manifest.image_offset])
    if padding.count(0) != len(padding):
        raise SegmentIntegrityError(
            f"{source}: the bytes between the graph ({manifest.graph_size}) and the image "
            f"({manifest.image_offset}) are not all zero: the file is corrupt")


def check_against_graph(manifest: Manifest, model: Model, source: str = "model file") -> None:
    """Raise SegmentIntegrityError unless the manifest describes the graph it sits in: every entry
    where its `Buffer.offset/size` says (within its segment, aligned), every external buffer in
    exactly one entry, each entry's tensors, each segment's users (the operators reading its
    buffers) and the schedule as the graph gives them, segments in order without overlap. A reader
    trusting a forged manifest would otherwise run with weights from the wrong place."""
    graph = _GraphFacts(model)
    placed: dict[int, int] = {}
    end = 0
    for i, seg in enumerate(manifest.segments):
        where = f"{source}: segment {seg.id}"
        if seg.id != i or seg.offset < end or seg.offset + seg.size > manifest.image_size:
            raise SegmentIntegrityError(
                f"{where} (index {i}) at image offset {seg.offset}, {seg.size} bytes, is out of order, overlaps "
                f"the previous segment (which ends at {end}) or runs past the {manifest.image_size}-byte image")
        end = seg.offset + seg.size
        users: set[int] = set()
        for e in seg.entries:
            _check_entry(manifest, seg, e, graph, placed, where)
            users |= graph.readers.get(e.buffer, set())
        if sorted(users) != seg.users:
            raise SegmentIntegrityError(f"{where} lists users {seg.users}; the graph's operators reading its "
                                        f"buffers are {sorted(users)}")
    unplaced = sorted(set(graph.external) - set(placed))
    if unplaced:
        raise SegmentIntegrityError(f"{source}: graph buffers {unplaced[:5]} lie after the graph, but no segment "
                                    "of the manifest holds them")
    _check_schedule(manifest, model, source)


@dataclass
class _GraphFacts:
    """What the cross-check reads off the graph: external buffers, their tensors and readers."""

    external: dict[int, tuple[int, int]]  # buffer -> (Buffer.offset, Buffer.size), for offset > 1
    tensors: dict[int, list[int]]  # buffer -> tensors of the main subgraph using it
    readers: dict[int, set[int]]  # buffer -> operators reading it as a constant input

    def __init__(self, model: Model):
        self.external = {i: (b.offset, b.size) for i, b in enumerate(model.fb.buffers or []) if b.offset > 1}
        self.tensors, self.readers = {}, {}
        for t, tensor in enumerate(model.tensors):
            self.tensors.setdefault(tensor.buffer, []).append(t)
        for op in range(len(model.operators)):
            for t in model.op_inputs(op):
                b = model.constant_buffer(t)
                if b is not None:
                    self.readers.setdefault(b, set()).add(op)


def _check_entry(manifest: Manifest, seg: Segment, e: SegmentEntry, graph: _GraphFacts, placed: dict[int, int],
                 where: str) -> None:
    if e.buffer in placed:
        raise SegmentIntegrityError(f"{where}: buffer {e.buffer} is also in segment {placed[e.buffer]}")
    placed[e.buffer] = seg.id
    if e.offset % max(manifest.alignment, 1) or e.offset + e.size > seg.size:
        raise SegmentIntegrityError(f"{where}: entry for buffer {e.buffer} at {e.offset}, {e.size} bytes, is not "
                                    f"aligned to {manifest.alignment} or runs past the segment's {seg.size} bytes")
    want = (manifest.image_offset + seg.offset + e.offset, e.size)
    found = graph.external.get(e.buffer)
    if found != want:
        raise SegmentIntegrityError(
            f"{where}: buffer {e.buffer} ({e.name}): graph says offset {found[0] if found else None} size "
            f"{found[1] if found else None}, manifest says {want[0]} size {want[1]}")
    if e.tensors != graph.tensors.get(e.buffer, []):
        raise SegmentIntegrityError(f"{where}: buffer {e.buffer} is used by tensors "
                                    f"{graph.tensors.get(e.buffer, [])}, the manifest says {e.tensors}")


def _check_schedule(manifest: Manifest, model: Model, source: str) -> None:
    """The schedule must be what the segments' users give, one step per operator."""
    n_ops = len(model.operators)
    reads: list[list[Segment]] = [[] for _ in range(n_ops)]
    for seg in manifest.segments:
        for u in seg.users:
            if not 0 <= u < n_ops:
                raise SegmentIntegrityError(f"{source}: segment {seg.id} lists operator {u}; the graph has {n_ops}")
            reads[u].append(seg)
    if len(manifest.schedule) != n_ops:
        raise SegmentIntegrityError(f"{source}: the schedule has {len(manifest.schedule)} steps; the graph has "
                                    f"{n_ops} operators")
    for op, (step, segs) in enumerate(zip(manifest.schedule, reads)):
        want = (op, [s.id for s in segs], [s.id for s in segs if s.first_use == op],
                [s.id for s in segs if s.last_use == op], sum(s.size for s in segs))
        if (step.op, step.segments, step.load, step.release, step.weight_bytes) != want:
            raise SegmentIntegrityError(f"{source}: schedule step {op} ({step}) does not match the segments' "
                                        f"users: operator {op} reads segments {want[1]}")


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


def decode_segment(seg: Segment, stored: bytes | bytearray | memoryview, out: memoryview, where: str) -> None:
    """Write segment `seg`'s decoded payload (its `decoded_offsets` layout) into `out`, from its
    `stored` bytes (CRC-checked by the caller): raw entries copied, palette-encoded ones decoded
    after every check of `palette.decode` (SegmentIntegrityError naming `where` and the entry)."""
    offsets, _ = seg.decoded_offsets()
    for e, offset in zip(seg.entries, offsets):
        data = memoryview(stored)[e.offset : e.offset + e.size]
        if e.decoded is None:
            out[offset : offset + e.size] = data
        else:
            values = palette.decode(data, f"{where} entry for buffer {e.buffer} ({e.name})", e.decoded)
            out[offset : offset + e.decoded] = values.view(np.uint8)


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
