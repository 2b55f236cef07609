"""Stage files: the stage sub-models `tflm-swap stages` writes, run from their own files.

`tflm-swap stages MODEL --ram-budget B --out DIR` (`export_stage_dir`) writes `DIR/stage_NN.tflite`
and `DIR/stages.json`: the SHA-256 of the model's graph (`model_sha256`, see `model_identity`: the
stages run only with that model) and per stage its file, size and CRC32, operator range, whether it
stays resident, and its input and output tensor names, which chain stage to stage. A Coral user compiles each stage with
`edgetpu_compiler`, which writes `stage_NN_edgetpu.tflite` beside it; `seal_stage_dir(DIR)` (CLI:
`tflm-swap seal-stages DIR`) records those files' sizes and CRC32s, and from then on
`SwapInterpreter(MODEL, stage_files=DIR, delegates=[edgetpu])` runs the compiled files. The stages
(their operators, and which stay resident) are those recorded, whatever the `ram_budget`. Every
load is checked against the recorded size and CRC32 before the file's bytes are used.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..converters.submodel import extract, stage_io
from ..errors import MalformedModelError, ManifestError
from ..fileio import refuse_inputs, staged_directory, write_atomic
from ..format.manifest import read_manifest
from ..format.model import Model
from ..planner import Plan, Stage, stage_of

INDEX = "stages.json"
INDEX_FORMAT = "tflm_swap-stages"
INDEX_VERSION = 2  # version 1 was a bare list of stage entries, bound to no model
COMPILED_SUFFIX = "_edgetpu"  # edgetpu_compiler names its output stage_NN_edgetpu.tflite


@dataclass(frozen=True)
class StageFile:
    """One stage's file as recorded in stages.json: what a load must find."""

    path: Path
    size: int
    crc32: int
    inputs: list[str]  # tensor names, in the stage's input order
    outputs: list[str]


def model_identity(data: bytes | bytearray | memoryview) -> str:
    """SHA-256 (hex) that binds stage files to a model: of its flatbuffer (a segmented model's
    first `graph_size` bytes, its manifest included, whose segment CRC32s cover the weights; a plain
    model's whole file). Reads only the graph of a segmented model."""
    try:
        end = read_manifest(data).graph_size
    except (ManifestError, MalformedModelError):
        end = len(data)
    return hashlib.sha256(memoryview(data)[:end]).hexdigest()


def read_stage_index(directory: str | Path, plan: Plan, model_sha256: str) -> tuple[list[Stage], list[StageFile]]:
    """The stages recorded in DIR/stages.json for the model `plan` is of (whose `model_identity` is
    `model_sha256`), and the file each runs from: the sealed compiled file when there is one, else
    the exported one. Raises ManifestError when the index is missing or malformed, was exported
    from another model, or does not cover this model's operators in order."""
    directory = Path(directory)
    index = _read_index(directory)
    if index["model_sha256"] != model_sha256:
        raise ManifestError(
            f"{directory / INDEX} was exported from another model (graph SHA-256 {index['model_sha256'][:16]}..., "
            f"this model's is {model_sha256[:16]}...): export this model's stages with `tflm-swap stages`")
    ranges, residency, files = [], [], []
    for e in index["stages"]:
        chosen = e.get("compiled") or e
        try:
            ranges.append(tuple(int(op) for op in e["ops"][:2]))
            residency.append(bool(e["resident"]))
            files.append(StageFile(directory / chosen["file"], int(chosen["bytes"]), int(chosen["crc32"]),
                                   list(e["inputs"]), list(e["outputs"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{directory / INDEX}: stage entry {e!r}: {exc!r}; export the stages again "
                                "with this version of tflm-swap") from exc
    if not _covers(ranges, plan.n_ops):
        raise ManifestError(f"{directory / INDEX} lists operator ranges {ranges}, which do not cover this "
                            f"model's {plan.n_ops} operators in order: were the stages exported from it?")
    stages = [stage_of(plan, first, last, kept) for (first, last), kept in zip(ranges, residency)]
    return stages, files


def export_stage_dir(model: Model, stages: list[Stage], directory: str | Path,
                     inputs: tuple[str | Path, ...] = ()) -> None:
    """Write each stage as DIR/stage_NN.tflite and the index DIR/stages.json, bound to `model` by
    its `model_identity` (never over `inputs`)."""
    directory = Path(directory)
    names = [f"stage_{i:02d}.tflite" for i in range(len(stages))]
    refuse_inputs([directory / n for n in [*names, INDEX]], inputs)
    entries = []
    with staged_directory(directory, inputs) as staging:  # every stage file and the index, or nothing
        for name, stage in zip(names, stages):
            data = extract(model, stage.first, stage.last)
            (staging / name).write_bytes(data)
            ins, outs = stage_io(model, stage.first, stage.last)
            entries.append({"file": name, "bytes": len(data), "crc32": zlib.crc32(data),  # to check copies
                            "ops": [stage.first, stage.last], "weight_bytes": stage.weight_bytes,
                            "resident": stage.resident,
                            "inputs": [model.tensor_name(t) for t in ins],
                            "outputs": [model.tensor_name(t) for t in outs]})
        (staging / INDEX).write_bytes(_index_bytes(model_identity(model.raw), entries))


def seal_stage_dir(directory: str | Path) -> list[str]:
    """Record the size and CRC32 of each compiled stage file (`stage_NN_edgetpu.tflite`) found
    beside its exported one in stages.json; returns the files sealed. Sealing again after
    recompiling records the new files."""
    directory = Path(directory)
    index = _read_index(directory)
    sealed = []
    for e in index["stages"]:
        exported = Path(e["file"])
        compiled = directory / f"{exported.stem}{COMPILED_SUFFIX}{exported.suffix}"
        if compiled.is_file():
            data = compiled.read_bytes()
            e["compiled"] = {"file": compiled.name, "bytes": len(data), "crc32": zlib.crc32(data)}
            sealed.append(compiled.name)
        else:
            e.pop("compiled", None)
    _write_index(directory, index["model_sha256"], index["stages"])
    return sealed


def _covers(ranges: list[tuple[int, ...]], n_ops: int) -> bool:
    """Whether the (first, last) operator ranges run through operators 0..n_ops-1 in order."""
    following = 0
    for r in ranges:
        if len(r) != 2 or r[0] != following or r[1] < r[0]:
            return False
        following = r[1] + 1
    return bool(ranges) and following == n_ops


def _index_bytes(model_sha256: str, entries: list[dict]) -> bytes:
    index = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "model_sha256": model_sha256, "stages": entries}
    return json.dumps(index, indent=2).encode()


def _write_index(directory: Path, model_sha256: str, entries: list[dict],
                 inputs: tuple[str | Path, ...] = ()) -> None:
    write_atomic(directory / INDEX, _index_bytes(model_sha256, entries), inputs)


def _read_index(directory: Path) -> dict:
    """DIR/stages.json: {"format", "version", "model_sha256", "stages": [entry, ...]}."""
    path = directory / INDEX
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ManifestError(f"{path} not found: write the stages with `tflm-swap stages ... --out {directory}`"
                            ) from exc
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path} is not a readable stage index: {exc}") from exc
    if isinstance(index, list):
        raise ManifestError(f"{path} was written by an older tflm-swap and records no model hash, so nothing "
                            "shows which model its stages belong to: export them again with `tflm-swap stages` "
                            "(then `tflm-swap seal-stages` again for compiled files)")
    entries = index.get("stages") if isinstance(index, dict) else None
    if (not isinstance(index, dict) or index.get("format") != INDEX_FORMAT
            or not isinstance(entries, list) or not all(isinstance(e, dict) and "file" in e for e in entries)):
        raise ManifestError(f"{path} is not a stage index (an object with 'format': '{INDEX_FORMAT}' and a list "
                            "of stage entries with 'file')")
    if not isinstance(index.get("version"), int) or index["version"] > INDEX_VERSION:
        raise ManifestError(f"{path} has version {index.get('version')!r}; this tflm-swap reads up to "
                            f"{INDEX_VERSION}: upgrade tflm-swap")
    if not isinstance(index.get("model_sha256"), str):
        raise ManifestError(f"{path} records no model_sha256")
    return index
