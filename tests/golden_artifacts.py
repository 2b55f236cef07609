"""Fingerprints of what the converters write for the MLPerf Tiny models, to prove that a refactoring
changed no output byte: segmented models and their split halves, TFLM projects (blocking, prefetch,
CRC-checking loads), stage sub-models, delegate tile tables and a cascade bundle.

`python tests/golden_artifacts.py > tests/data/golden_artifacts.json` records them; `test_golden`
recomputes and compares. Only public entry points are used, so the fingerprints survive moves.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
import tempfile
import zipfile
from pathlib import Path

MODELS = ("ad01_int8", "kws_ref_model", "pretrainedResnet_quant", "vww_96_int8")
MLPERF_DIR = Path(__file__).resolve().parents[2] / "shared" / "models" / "mlperf_tiny"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): _sha(p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def model_artifacts(path: Path, work: Path) -> dict[str, object]:
    """Fingerprints of every artifact written from the MLPerf Tiny model at `path`."""
    import tflm_swap
    from tflm_swap.cli import main as cli_main
    from tflm_swap.delegate import build_tile_table
    from tflm_swap.micro import export_project
    from tflm_swap.planner import min_stage_budget, plan_model

    out: dict[str, object] = {}
    seg = tflm_swap.convert(path)
    out["segmented"] = _sha(seg.data)
    graph, image = seg.split()
    out["graph"], out["image"] = _sha(graph), _sha(image)
    seg_path = work / f"{path.stem}.swap.tflite"
    seg.save(seg_path)
    for name, options in {"blocking": {}, "prefetch": {"prefetch": True},
                          "crc": {"verify_crc": True, "arena_size": 65536}}.items():
        # the host arena figure: the fingerprints must not depend on a Cortex-M toolchain being here
        project = export_project(seg, work / f"tflm_{name}", source=path, arena_board=None, **options)
        out[f"tflm_{name}"] = _tree(project.out_dir)
    budget = min_stage_budget(plan_model(tflm_swap.Model.from_bytes(seg.data)), prefetch=0)
    with contextlib.redirect_stdout(io.StringIO()):
        status = cli_main(["stages", str(seg_path), "--ram-budget", str(budget), "--prefetch", "0", "--out",
                           str(work / "stages")])
    assert status == 0, f"tflm-swap stages failed on {path}"
    out["stages"] = _tree(work / "stages")
    out["tile_table"] = _sha(build_tile_table(seg_path, tile_bytes=4096).read_bytes())
    return out


def bundle_artifact() -> dict[str, str]:
    """Fingerprints of the members of a cascade bundle assembled from small seeded int8 models (the
    zip file itself carries the time it was written)."""
    import tflm_swap
    from tflm_swap.cascade import CascadeBundle
    from tflm_swap.converters.synthetic import build_model, fc

    def member(width: int, seed: int) -> bytes:
        plain = build_model([1, 64], [fc(96, "RELU"), fc(width)], dtype="int8", seed=seed)
        return tflm_swap.convert(plain, min_segment_bytes=64).data

    bundle = CascadeBundle.create([[0, 1], [2, 3, 4]], member(2, 1), [member(2, 2), member(3, 3)],
                                  monolithic=member(5, 4), fallback="top2", threshold=0.8)
    with zipfile.ZipFile(io.BytesIO(bundle.to_bytes())) as z:
        return {name: _sha(z.read(name)) for name in z.namelist()}


def fingerprints() -> dict[str, object]:
    """All fingerprints, keyed by model name (and "bundle")."""
    result: dict[str, object] = {}
    for name in MODELS:
        with tempfile.TemporaryDirectory(prefix="tswap_golden_") as tmp:
            result[name] = model_artifacts(MLPERF_DIR / f"{name}.tflite", Path(tmp))
    result["bundle"] = bundle_artifact()
    return result


if __name__ == "__main__":
    json.dump(fingerprints(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
