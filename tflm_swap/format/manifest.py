"""The `tflm_swap` manifest: where every external weight byte lives and when each operator needs it.

Stored as the model metadata entry named `tflm_swap`. Its bytes are a 16-byte header
(magic `TSWP`, format version, payload length, CRC32 of the payload; little-endian) followed by UTF-8
JSON padded with spaces. Since version 2 it records the SHA-256 of the graph it sits in
(`graph_digest`). See docs/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from dataclasses import asdict, dataclass, field

from ..errors import MalformedModelError, ManifestError, SegmentIntegrityError
from .schema import text, tfl

MANIFEST_NAME = "tflm_swap"
MAGIC = b"TSWP"
FORMAT_VERSION = 3
GRAPH_HASH_VERSION = 2  # the first version recording graph_sha256
ENCODED_VERSION = 3  # the first version with palette-encoded entries (written only when there are some)
_HEADER = struct.Struct("<4sIII")
HEADER_SIZE = _HEADER.size
_CAPACITY_STEP = 64  # JSON is padded to a multiple of this so small edits keep the size stable


@dataclass
class SegmentEntry:
    """One constant buffer inside a segment."""

    buffer: int  # index in Model.buffers
    tensors: list[int]  # tensors of the main subgraph that use this buffer
    name: str  # name of the first such tensor
    offset: int  # from the start of the segment
    size: int  # bytes stored in the segment
    decoded: int | None = None  # (version 3) palette-encoded entry: its bytes once decoded


@dataclass
class Segment:
    """A contiguous, page-aligned run of weights in the flash image, loaded as one unit."""

    id: int
    offset: int  # from the image base; a multiple of the page size
    size: int  # payload bytes (no trailing padding)
    crc32: int  # zlib.crc32 of the payload
    users: list[int]  # operators that read it, ascending
    entries: list[SegmentEntry]

    @property
    def first_use(self) -> int:
        return self.users[0]

    @property
    def last_use(self) -> int:
        return self.users[-1]

    @property
    def encoded(self) -> bool:
        return any(e.decoded is not None for e in self.entries)

    def decoded_offsets(self) -> tuple[list[int], int]:
        """Where each entry lies once decoded (16-byte aligned, in order) and the decoded size; the
        stored layout when nothing is encoded."""
        if not self.encoded:
            return [e.offset for e in self.entries], self.size
        offsets, end = [], 0
        for e in self.entries:
            offsets.append(-(-end // 16) * 16)
            end = offsets[-1] + (e.size if e.decoded is None else e.decoded)
        return offsets, end

    @property
    def decoded_size(self) -> int:
        return self.decoded_offsets()[1]


@dataclass
class OpStep:
    """What one operator needs: the segments it reads, those first needed here, those last used here."""

    op: int
    opcode: str
    segments: list[int]
    load: list[int]
    release: list[int]
    weight_bytes: int


@dataclass
class Manifest:
    """Layout of a segmented model. Offsets in `segments` are relative to the image base."""

    page_size: int
    alignment: int
    min_segment_bytes: int
    graph_size: int  # bytes of the flatbuffer proper
    image_offset: int  # file offset of the image base (page-aligned, >= graph_size)
    image_size: int
    source_sha256: str
    source_size: int
    segments: list[Segment]
    schedule: list[OpStep]
    version: int = FORMAT_VERSION
    subgraph: int = 0
    extra: dict = field(default_factory=dict)
    # SHA-256 (hex) of the graph with this manifest's bytes zeroed (graph_digest); None in version 1
    graph_sha256: str | None = None

    @property
    def external_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    def to_dict(self) -> dict:
        fields = asdict(self)
        graph_sha256 = fields.pop("graph_sha256")
        d = {"format": MANIFEST_NAME, "version": fields.pop("version")}
        for key, value in fields.items():
            d[key] = value
            if key == "graph_size" and self.version >= GRAPH_HASH_VERSION:  # version 1 has no such field
                d["graph_sha256"] = graph_sha256
        for seg, obj in zip(d["segments"], self.segments):
            seg["first_use"], seg["last_use"] = obj.first_use, obj.last_use
            for entry in seg["entries"]:
                if entry["decoded"] is None:  # raw entries (all of them before version 3) have no such field
                    del entry["decoded"]
        return d

    def encode(self, min_capacity: int = 0) -> bytes:
        """Header + padded JSON. `min_capacity` lets a caller keep the size stable across rewrites."""
        text = json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=False).encode()
        capacity = max(min_capacity, -(-len(text) // _CAPACITY_STEP) * _CAPACITY_STEP)
        payload = text + b" " * (capacity - len(text))
        return _HEADER.pack(MAGIC, self.version, len(payload), zlib.crc32(payload)) + payload

    @classmethod
    def decode(cls, blob: bytes) -> Manifest:
        """Parse manifest bytes; raises ManifestError naming what is wrong."""
        if len(blob) < _HEADER.size:
            raise ManifestError(f"manifest is {len(blob)} bytes, shorter than its {_HEADER.size}-byte header")
        magic, version, length, crc = _HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise ManifestError(f"manifest magic is {magic!r}, expected {MAGIC!r}")
        if version > FORMAT_VERSION:
            raise ManifestError(
                f"manifest format version {version} is newer than this tflm_swap understands "
                f"({FORMAT_VERSION}); upgrade tflm_swap"
            )
        if version < 1:
            raise ManifestError(f"manifest format version {version} is invalid")
        payload = blob[_HEADER.size : _HEADER.size + length]
        if len(payload) != length:
            raise ManifestError(f"manifest is truncated: header says {length} bytes, {len(payload)} present")
        if zlib.crc32(payload) != crc:
            raise ManifestError(f"manifest CRC32 mismatch (stored {crc:#010x}, computed {zlib.crc32(payload):#010x})")
        try:
            manifest = cls._from_dict(json.loads(payload.decode()))._checked()
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ManifestError(f"manifest content is not valid: {exc!r}") from exc
        if manifest.version != version:
            raise ManifestError(f"manifest header says format version {version}, its content version "
                                f"{manifest.version}")
        return manifest

    @classmethod
    def _from_dict(cls, d: dict) -> Manifest:
        if not isinstance(d, dict):
            raise ValueError(f"manifest JSON is a {type(d).__name__}, expected an object")
        if d.pop("format") != MANIFEST_NAME:
            raise ValueError("format field is not 'tflm_swap'")
        segments = []
        for s in d.pop("segments"):
            s.pop("first_use", None)
            s.pop("last_use", None)
            s["entries"] = [SegmentEntry(**e) for e in s["entries"]]
            segments.append(Segment(**s))
        schedule = [OpStep(**step) for step in d.pop("schedule")]
        if d["version"] >= GRAPH_HASH_VERSION and "graph_sha256" not in d:
            raise ValueError(f"a version {d['version']} manifest must record graph_sha256")
        if d["version"] < GRAPH_HASH_VERSION and "graph_sha256" in d:
            raise ValueError(f"a version {d['version']} manifest has no graph_sha256 field")
        return cls(segments=segments, schedule=schedule, **d)

    def _checked(self) -> Manifest:
        """Raise ValueError unless the numbers readers compute with have sane types and ranges
        (the CRC only proves the JSON is what the writer wrote, not that a tool wrote it well)."""
        for name in ("version", "page_size", "alignment", "graph_size", "image_offset", "image_size",
                     "source_size", "subgraph"):
            _natural(getattr(self, name), name)
        if self.graph_sha256 is not None and not _is_sha256(self.graph_sha256):
            raise ValueError(f"graph_sha256 {self.graph_sha256!r} is not 64 lowercase hex digits")
        if self.page_size < 1 or self.page_size & (self.page_size - 1):
            raise ValueError(f"page_size {self.page_size} is not a power of two")
        if self.image_offset % self.page_size or self.image_offset < self.graph_size:
            raise ValueError(f"image_offset {self.image_offset} is not a page boundary after the graph")
        for i, seg in enumerate(self.segments):
            for name in ("id", "offset", "size", "crc32"):
                _natural(getattr(seg, name), f"segments[{i}].{name}")
            for u in seg.users:
                _natural(u, f"segments[{i}].users")
            if not seg.users or seg.users != sorted(seg.users):
                raise ValueError(f"segments[{i}].users {seg.users!r} is not a non-empty ascending list")
            for j, e in enumerate(seg.entries):
                for name in ("buffer", "offset", "size"):
                    _natural(getattr(e, name), f"segments[{i}].entries[{j}].{name}")
                if e.decoded is not None:
                    _natural(e.decoded, f"segments[{i}].entries[{j}].decoded")
                    if self.version < ENCODED_VERSION:
                        raise ValueError(f"a version {self.version} manifest has no encoded entries "
                                         f"(segments[{i}].entries[{j}].decoded)")
        return self


def _natural(value, what: str) -> None:
    """Raise ValueError unless `value` is an int >= 0 (JSON has no integer type of its own)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} is {value!r}, expected a non-negative integer")


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def graph_digest(graph: bytes | bytearray | memoryview, graph_size: int) -> str:
    """SHA-256 (hex) of a segmented model's graph, `graph[:graph_size]`, with the bytes of its
    `tflm_swap` manifest (header and payload) read as zeros: the manifest cannot hash itself, and
    its own CRC32 covers it. What version-2 manifests record as `graph_sha256`."""
    head = bytearray(graph[:graph_size])
    span = metadata_span(bytes(head), MANIFEST_NAME)
    if span is not None:
        start, end = max(span[0], 0), min(span[1], len(head))
        head[start:end] = bytes(max(end - start, 0))
    return hashlib.sha256(head).hexdigest()


def read_manifest(data: bytes | bytearray) -> Manifest:
    """Read the manifest of a segmented model (or of its split graph) without unpacking the graph."""
    blob = find_metadata(bytes(data), MANIFEST_NAME)
    if blob is None:
        raise ManifestError(
            "model has no 'tflm_swap' manifest: it was not segmented by tflm_swap "
            "(run `tflm-swap convert` first)"
        )
    return Manifest.decode(blob)


_FIRST_READ = 64 * 1024


def read_model_head(fd: int, path: os.PathLike | str) -> tuple[bytes, Manifest]:
    """The bytes of a segmented model file before its flash image (graph + padding) and its manifest.

    Reads with positioned reads from the start of the file, growing the read until the manifest
    parses; the segments themselves are not read. `head[: manifest.graph_size]` is the flatbuffer.
    """
    size = os.fstat(fd).st_size
    n = min(size, _FIRST_READ)
    while True:
        head = os.pread(fd, n, 0)
        try:
            manifest = read_manifest(head)
            break
        except (MalformedModelError, ManifestError) as exc:
            if n >= size:
                raise type(exc)(f"{path}: {exc}") from exc
            n = min(size, n * 4)
    if manifest.graph_size > size:
        raise SegmentIntegrityError(f"{path}: graph is {manifest.graph_size} bytes but the file has {size}")
    want = min(manifest.image_offset, size)
    return (head[:want] if len(head) >= want else os.pread(fd, want, 0)), manifest


def find_metadata(data: bytes, name: str) -> bytes | None:
    """Bytes of a named metadata entry, read lazily from the flatbuffer tables."""
    span = metadata_span(data, name)
    return None if span is None else data[span[0] : span[1]]


def metadata_span(data: bytes, name: str) -> tuple[int, int] | None:
    """Where the bytes of a named metadata entry lie in `data`: [start, end), or None without one.
    Inline: its buffer's data vector; external (`Buffer.offset`): that range of the file."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise MalformedModelError("not a TFLite flatbuffer (missing 'TFL3' file identifier)")
    try:
        model = tfl.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            meta = model.Metadata(i)
            if text(meta.Name()) != name:
                continue
            buf = model.Buffers(meta.Buffer())
            if buf.Offset() > 1:
                return buf.Offset(), buf.Offset() + buf.Size()
            vector = buf._tab.Offset(4)  # the data field (what DataAsNumpy reads)
            if vector == 0:
                return 0, 0
            start = buf._tab.Vector(vector)
            end = start + buf._tab.VectorLen(vector)
            if end > len(data):
                raise MalformedModelError(f"metadata {name!r} runs past the end of the {len(data)}-byte model")
            return start, end
    except MalformedModelError:
        raise
    except Exception as exc:  # flatbuffers raises whatever its struct reads hit
        raise MalformedModelError(f"not a readable TFLite flatbuffer (truncated or corrupt): {exc!r}") from exc
    return None
