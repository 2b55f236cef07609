"""The cascade bundle: one zip file (stored, not compressed) holding a JSON manifest and the router,
specialist and (optionally) monolithic models as segmented int8 `.tflite` members.

Manifest (`cascade.json`)::

    {"format": "tflm_swap.cascade", "version": 1, "n_classes": 10, "input_shape": [28, 28, 1],
     "groups": [[0, 6], [1, 4, 7, 9], ...],                    # partition of 0..n_classes-1
     "fallback": {"policy": "top2", "threshold": 0.9},
     "router": {"member": "router.tflite", "crc32": ..., "size": ..., "weight_bytes": ..., "params": ..., "macs": ...},
     "specialists": [{"group": 0, "classes": [0, 6], "member": "specialist_0.tflite", ...}, ...],
     "monolithic": {...} | null, "stats": {...}}

A group of a single class has `"member": null`: once the router picks it the answer is known. Every
member is checked on load: present, size and CRC32 as listed, a segmented model whose input shape
is `input_shape` and whose output width is the number of groups (router), of its group's classes
(specialist) or of classes (monolithic). Errors are `CascadeBundleError`.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TflmSwapError
from ..fileio import file_sha256, write_atomic
from ..format.manifest import read_manifest
from ..format.model import Model
from .groups import check_partition
from .stats import model_stats

BUNDLE_FORMAT = "tflm_swap.cascade"
BUNDLE_VERSION = 1
MANIFEST_NAME = "cascade.json"
FALLBACK_POLICIES = ("top2", "full", "none")
MAX_MANIFEST_BYTES = 1 << 20  # cascade.json of a cascade of thousands of classes is far smaller
MAX_MEMBER_BYTES = 1 << 30  # a model member larger than this is refused before it is decompressed
MAX_COMPRESSION_RATIO = 64  # a compressed member may expand at most this much (bundles store members)
MAX_ZIP_ENTRIES = 4096
MAX_CLASSES = 1 << 16
_MEMBER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class CascadeBundleError(TflmSwapError):
    """A cascade bundle is unreadable, inconsistent or fails an integrity check."""


@dataclass
class MemberInfo:
    """One model of the bundle and its cost figures."""

    member: str | None
    crc32: int = 0
    size: int = 0
    weight_bytes: int = 0
    params: int = 0
    macs: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def of(cls, member: str, data: bytes, **extra) -> MemberInfo:
        """Figures of the model `data` stored as `member`."""
        return cls(member, zlib.crc32(data), len(data), **model_stats(data), extra=extra)

    def to_json(self) -> dict:
        return {"member": self.member, "crc32": self.crc32, "size": self.size, "weight_bytes": self.weight_bytes,
                "params": self.params, "macs": self.macs, **self.extra}

    @classmethod
    def from_json(cls, d: dict, what: str) -> MemberInfo:
        if not isinstance(d, dict) or "member" not in d:
            raise CascadeBundleError(f"manifest entry for {what} is not an object with a 'member' key")
        known = ("member", "crc32", "size", "weight_bytes", "params", "macs")
        try:
            values = {k: (d[k] if k == "member" else int(d.get(k, 0))) for k in known}
        except (TypeError, ValueError) as exc:
            raise CascadeBundleError(f"manifest entry for {what} has a non-integer figure: {exc}") from exc
        return cls(**values, extra={k: v for k, v in d.items() if k not in known})


@dataclass
class CascadeBundle:
    """Groups, fallback policy and member models of a cascade (see module docstring for the file)."""

    groups: list[list[int]]
    n_classes: int
    input_shape: list[int]
    fallback: dict
    router: MemberInfo
    specialists: list[MemberInfo]
    monolithic: MemberInfo | None
    members: dict[str, bytes]
    stats: dict = field(default_factory=dict)
    source: str = "<bundle>"

    # ----------------------------------------------------------------------------- create/save
    @classmethod
    def create(cls, groups: list[list[int]], router: bytes, specialists: list[bytes | None],
               monolithic: bytes | None = None, fallback: str = "top2", threshold: float = 0.9,
               stats: dict | None = None, specialist_extra: list[dict] | None = None) -> CascadeBundle:
        """Assemble a bundle from segmented int8 models (validated like a loaded one)."""
        members = {"router.tflite": router}
        infos = []
        for g, data in enumerate(specialists):
            extra = {"group": g, "classes": list(groups[g]), **((specialist_extra or [{}] * len(groups))[g])}
            if data is None:
                infos.append(MemberInfo(None, extra=extra))
                continue
            name = f"specialist_{g}.tflite"
            members[name] = data
            infos.append(MemberInfo.of(name, data, **extra))
        mono = None
        if monolithic is not None:
            members["monolithic.tflite"] = monolithic
            mono = MemberInfo.of("monolithic.tflite", monolithic)
        graph = Model.from_bytes(router, read_external=False)
        shape = [int(s) for s in graph.tensors[graph.inputs[0]].shape[1:]]
        bundle = cls([list(map(int, g)) for g in groups], sum(len(g) for g in groups), shape,
                     {"policy": fallback, "threshold": float(threshold)}, MemberInfo.of("router.tflite", router),
                     infos, mono, members, dict(stats or {}))
        bundle.validate()
        return bundle

    def manifest(self) -> dict:
        """The JSON manifest (a fresh copy)."""
        return copy.deepcopy({"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "n_classes": self.n_classes,
                "input_shape": self.input_shape, "groups": self.groups, "fallback": self.fallback,
                "router": self.router.to_json(), "specialists": [s.to_json() for s in self.specialists],
                "monolithic": self.monolithic.to_json() if self.monolithic else None, "stats": self.stats})

    def to_bytes(self) -> bytes:
        """The bundle file: manifest first, then the members, all stored uncompressed."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            z.writestr(MANIFEST_NAME, json.dumps(self.manifest(), indent=1))
            for name, data in self.members.items():
                z.writestr(name, data)
        return buf.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write the bundle atomically."""
        return write_atomic(path, self.to_bytes())

    # ------------------------------------------------------------------------------------ load
    @classmethod
    def load(cls, path: str | Path) -> CascadeBundle:
        """Read and validate a bundle file."""
        path = Path(path)
        if not path.is_file():
            raise CascadeBundleError(f"{path}: no such cascade bundle")
        return cls.from_bytes(path.read_bytes(), source=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bundle>") -> CascadeBundle:
        """Parse and validate bundle bytes. Only the manifest and the members it names are read
        (`read_members`: names checked, sizes bounded before decompressing)."""
        return read_members(data, source, cls._from_manifest)

    @classmethod
    def _from_manifest(cls, raw: bytes, source: str) -> tuple[dict, list[str]]:
        """The parsed manifest and the member names it references (each checked by `member_name`)."""
        try:
            m = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise CascadeBundleError(f"{source}: {MANIFEST_NAME} is not valid JSON: {exc}") from exc
        if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
            raise CascadeBundleError(f"{source}: {MANIFEST_NAME} is not a {BUNDLE_FORMAT} manifest")
        if m.get("version") != BUNDLE_VERSION:
            raise CascadeBundleError(
                f"{source}: bundle version {m.get('version')!r}; this reader knows {BUNDLE_VERSION}")
        missing = [k for k in ("n_classes", "input_shape", "groups", "fallback", "router", "specialists") if k not in m]
        if missing:
            raise CascadeBundleError(f"{source}: manifest lacks {missing}")
        if not isinstance(m["specialists"], list):
            raise CascadeBundleError(f"{source}: manifest 'specialists' is not a list")
        entries = [m["router"], *m["specialists"], m.get("monolithic")]
        names = [e.get("member") for e in entries if isinstance(e, dict) and e.get("member") is not None]
        return m, [member_name(n, source) for n in names]

    @classmethod
    def _build(cls, m: dict, members: dict[str, bytes], source: str) -> CascadeBundle:
        bundle = cls(
            groups=m["groups"], n_classes=m["n_classes"], input_shape=m["input_shape"], fallback=m["fallback"],
            router=MemberInfo.from_json(m["router"], "the router"),
            specialists=[MemberInfo.from_json(s, f"specialist {i}") for i, s in enumerate(m["specialists"])],
            monolithic=MemberInfo.from_json(m["monolithic"], "the monolithic model") if m.get("monolithic") else None,
            members=members, stats=m.get("stats", {}), source=source)
        bundle.validate()
        return bundle

    # -------------------------------------------------------------------------------- validate
    def validate(self) -> None:
        """Check the class map, the fallback policy and every member; raise CascadeBundleError."""
        try:
            _check_class_map(self.groups, self.n_classes, self.input_shape)
            check_partition(self.groups, self.n_classes)
        except TflmSwapError as exc:
            raise CascadeBundleError(f"{self.source}: bad class map: {exc}") from exc
        if len(self.specialists) != len(self.groups):
            raise CascadeBundleError(f"{self.source}: {len(self.groups)} groups but {len(self.specialists)} "
                                     "specialist entries (a specialist is missing from the manifest)")
        policy = self.fallback.get("policy") if isinstance(self.fallback, dict) else None
        if policy not in FALLBACK_POLICIES:
            raise CascadeBundleError(f"{self.source}: fallback policy {policy!r} is not one of {FALLBACK_POLICIES}")
        threshold = self.fallback.get("threshold", 0.0)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise CascadeBundleError(f"{self.source}: fallback threshold {threshold!r} is not a number")
        if policy == "full" and self.monolithic is None:
            raise CascadeBundleError(f"{self.source}: fallback policy 'full' needs the monolithic model in the bundle")
        self._check_member(self.router, "router", len(self.groups))
        for g, spec in enumerate(self.specialists):
            self._check_specialist(g, spec)
        if self.monolithic is not None:
            self._check_member(self.monolithic, "monolithic model", self.n_classes)

    def _check_specialist(self, g: int, spec: MemberInfo) -> None:
        classes = spec.extra.get("classes")
        if classes != self.groups[g]:
            raise CascadeBundleError(f"{self.source}: specialist {g} predicts classes {classes} but group {g} "
                                     f"is {self.groups[g]} (mismatched class map)")
        if spec.member is None:
            if len(self.groups[g]) > 1:
                raise CascadeBundleError(f"{self.source}: specialist {g} for classes {self.groups[g]} has no "
                                         "model (missing specialist)")
            return
        self._check_member(spec, f"specialist {g}", len(self.groups[g]))

    def _check_member(self, info: MemberInfo, what: str, width: int) -> None:
        data = self.members.get(info.member) if isinstance(info.member, str) else None
        if data is None:
            raise CascadeBundleError(f"{self.source}: {what} member {info.member!r} is missing from the bundle")
        if len(data) != info.size or zlib.crc32(data) != info.crc32:
            raise CascadeBundleError(
                f"{self.source}: {what} member {info.member!r} is corrupt: {len(data)} bytes with CRC32 "
                f"{zlib.crc32(data):#010x}, manifest says {info.size} bytes with CRC32 {info.crc32:#010x}")
        try:
            read_manifest(data)
            model = Model.from_bytes(data, source=f"{self.source}:{info.member}", read_external=False)
        except TflmSwapError as exc:
            raise CascadeBundleError(
                f"{self.source}: {what} member {info.member!r} is not a segmented model: {exc}") from exc
        shape_in = [int(s) for s in model.tensors[model.inputs[0]].shape[1:]]
        shape_out = [int(s) for s in model.tensors[model.outputs[0]].shape]
        if shape_in != list(self.input_shape):
            raise CascadeBundleError(
                f"{self.source}: {what} takes input {shape_in}, the bundle's is {self.input_shape}")
        if shape_out[-1] != width:
            raise CascadeBundleError(f"{self.source}: {what} outputs {shape_out[-1]} scores but should output "
                                     f"{width} (mismatched class map)")

    # ---------------------------------------------------------------------------------- access
    def member_bytes(self, info: MemberInfo) -> bytes:
        """The segmented `.tflite` bytes of a member."""
        return self.members[info.member]

    @property
    def threshold(self) -> float:
        return float(self.fallback.get("threshold", 0.0))


# ------------------------------------------------------------------------- safe bundle reading
def member_name(name: object, source: str = "<bundle>") -> str:
    """`name` if it is a flat member file name (letters, digits, `_`, `.`, `-`; no directory part, not
    `..`, not hidden), else CascadeBundleError: a bundle never names a file outside its directory."""
    if not isinstance(name, str) or not _MEMBER_NAME.fullmatch(name) or name.strip(".") == "":
        raise CascadeBundleError(f"{source}: member name {name!r} is not a flat file name "
                                 "(no directories, '..', absolute paths or special characters)")
    return name


def read_members(data: bytes, source: str,
                 parse: Callable[[bytes, str], tuple[dict, list[str]]]) -> CascadeBundle:
    """Read a bundle zip safely: the manifest (at most MAX_MANIFEST_BYTES), parsed by
    `parse(raw, source) -> (manifest, member names)`, then only the members it names, each size
    checked against MAX_MEMBER_BYTES and the compression ratio before it is decompressed."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
            if len(infos) > MAX_ZIP_ENTRIES:
                raise CascadeBundleError(f"{source}: {len(infos)} zip entries; a bundle has at most "
                                         f"{MAX_ZIP_ENTRIES}")
            by_name = {i.filename: i for i in infos}
            if MANIFEST_NAME not in by_name:
                raise CascadeBundleError(f"{source}: no {MANIFEST_NAME} manifest in the bundle")
            manifest, names = parse(_read_member(z, by_name[MANIFEST_NAME], MAX_MANIFEST_BYTES, source), source)
            members = {n: _read_member(z, by_name[n], MAX_MEMBER_BYTES, source) for n in names if n in by_name}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, zlib.error, OSError, EOFError,
            RuntimeError, ValueError) as exc:
        if isinstance(exc, TflmSwapError):
            raise
        raise CascadeBundleError(f"{source}: not a cascade bundle (unreadable zip: {exc})") from exc
    return CascadeBundle._build(manifest, members, source)


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, source: str) -> bytes:
    """The bytes of one zip member, refused before decompressing when its declared size is absurd."""
    size, packed = info.file_size, info.compress_size
    stored = info.compress_type == zipfile.ZIP_STORED
    if size > limit or (stored and size != packed) or (not stored and size > MAX_COMPRESSION_RATIO * max(packed, 1)):
        raise CascadeBundleError(f"{source}: member {info.filename!r} declares {size} bytes "
                                 f"({packed} stored); refusing to read it (limit {limit} bytes)")
    data = z.read(info)
    if len(data) != size:
        raise CascadeBundleError(f"{source}: member {info.filename!r} holds {len(data)} bytes, declares {size}")
    return data


def _check_class_map(groups: object, n_classes: object, input_shape: object) -> None:
    """Types and bounds of the class map, checked before anything is sized by them."""
    if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
        raise TflmSwapError("'groups' must be a list of lists of class ids")
    if not all(isinstance(c, int) and not isinstance(c, bool) for g in groups for c in g):
        raise TflmSwapError("class ids in 'groups' must be integers")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or not 1 <= n_classes <= MAX_CLASSES:
        raise TflmSwapError(f"n_classes {n_classes!r} is not an integer in 1..{MAX_CLASSES}")
    listed = sum(len(g) for g in groups)
    if listed != n_classes:
        raise TflmSwapError(f"the groups list {listed} class ids but n_classes is {n_classes}")
    if not isinstance(input_shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                    for d in input_shape):
        raise TflmSwapError(f"input_shape {input_shape!r} is not a list of positive integers")


def extract_member(directory: str | Path, name: str, data: bytes) -> Path:
    """Write a member's bytes as a flat file in `directory` and return its path. The file is named by
    its content (`<sha256 prefix>-<name>`), and an existing one is reused only when its bytes hash
    the same: two bundles sharing a directory never run each other's members."""
    digest = hashlib.sha256(data).hexdigest()
    path = Path(directory) / f"{digest[:16]}-{member_name(name)}"
    if path.is_file() and file_sha256(path) == digest:
        return path
    return write_atomic(path, data)

