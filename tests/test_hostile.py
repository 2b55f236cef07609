"""Hostile input and faults (issue 16, part A): each class has a test here that fails on the commit
before the fix, and the generated corpus of tests/hostile_corpus.py (thousands of cases) must end
every case in a clear error, with nothing written and no input changed.

Classes: path traversal and blind reuse in cascade bundles; unbounded decompression and class counts;
outputs over inputs or over each other; corrupt weights laundered into fresh artifacts; tracebacks
instead of one-line errors; partial multi-file outputs, leftover temporaries and 0600 files.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import require_model
from hostile_corpus import _declare_size, failing_writes, run_corpus, synthetic_bundle, table, write_reliability

import tflm_swap
from tflm_swap import Model, SegmentIntegrityError, TflmSwapError, read_manifest, segment_model
from tflm_swap.cascade.bundle import CascadeBundle, CascadeBundleError
from tflm_swap.cascade.interpreter import CascadeInterpreter
from tflm_swap.cli import main
from tflm_swap.fileio import write_atomic

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bundle_bytes() -> bytes:
    return synthetic_bundle(0)


@pytest.fixture()
def files(tmp_path, bundle_bytes) -> dict[str, Path]:
    """A segmented kws model, its original, a bundle and a data file in tmp_path/in."""
    d = tmp_path / "in"
    d.mkdir()
    kws = require_model("kws_ref_model").read_bytes()
    paths = {"kws": d / "kws.tflite", "seg": d / "kws.swap.tflite", "bundle": d / "b.cascade", "data": d / "data.npz"}
    paths["kws"].write_bytes(kws)
    paths["seg"].write_bytes(segment_model(Model.from_bytes(kws)))
    paths["bundle"].write_bytes(bundle_bytes)
    rng = np.random.default_rng(16)
    np.savez(paths["data"], x=rng.random((24, 8, 8, 1), dtype=np.float32), y=np.arange(24) % 4)
    return paths


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and directory (None) under root."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def one_error_line(capsys) -> str:
    """The CLI's stderr, which must be exactly one `tflm-swap: error:` line."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tflm-swap: error: "), lines
    return lines[0]


def rename_router(data: bytes, name: str) -> bytes:
    """The bundle with its router stored (and referenced) under `name`."""
    good = CascadeBundle.from_bytes(data)
    manifest = good.manifest()
    manifest["router"]["member"] = name
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("cascade.json", json.dumps(manifest))
        for member, payload in good.members.items():
            z.writestr(name if member == "router.tflite" else member, payload)
    return buf.getvalue()


# ----------------------------------------------------------------------- 1. bundles: traversal, reuse
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "subdir"])
def test_bundle_member_names_cannot_escape_the_extraction_directory(tmp_path, bundle_bytes, kind):
    escaped = tmp_path / f"escaped_{kind}.tflite"
    name = {"dotdot": f"../{escaped.name}", "absolute": str(escaped), "subdir": "sub/router.tflite"}[kind]
    data = rename_router(bundle_bytes, name)
    cache = tmp_path / "cache"
    with pytest.raises(CascadeBundleError, match="not a flat file name"):
        CascadeBundle.from_bytes(data)
    with pytest.raises(CascadeBundleError):
        with CascadeInterpreter(data, cache_dir=cache) as ci:
            ci.predict(np.zeros((1, 8, 8, 1), np.float32))
    assert not escaped.exists() and not (tmp_path / "sub").exists()
    assert not cache.exists() or not list(cache.rglob("*"))


def test_a_shared_cache_dir_never_runs_another_bundles_member(tmp_path):
    first, second = synthetic_bundle(0), synthetic_bundle(1)  # same members' names and sizes, other weights
    routers = [CascadeBundle.from_bytes(b).members["router.tflite"] for b in (first, second)]
    assert len(routers[0]) == len(routers[1]) and routers[0] != routers[1]
    x = np.random.default_rng(0).random((6, 8, 8, 1), dtype=np.float32)
    with CascadeInterpreter(second, cache_dir=tmp_path / "fresh") as ci:
        want = ci.predict(x)
    with CascadeInterpreter(first, cache_dir=tmp_path / "shared") as ci:
        ci.predict(x)
    with CascadeInterpreter(second, cache_dir=tmp_path / "shared") as ci:
        assert np.array_equal(ci.predict(x), want)
    for extracted in (tmp_path / "shared").iterdir():  # damaged on disk: rewritten, not trusted
        extracted.write_bytes(bytes(extracted.stat().st_size))
    with CascadeInterpreter(second, cache_dir=tmp_path / "shared") as ci:
        assert np.array_equal(ci.predict(x), want)


def test_unreferenced_members_are_never_decompressed(bundle_bytes, monkeypatch):
    buf = io.BytesIO(bundle_bytes)
    with zipfile.ZipFile(buf, "a", zipfile.ZIP_DEFLATED) as z:
        z.writestr("junk.bin", bytes(32 << 20))  # 32 MiB of zeros in a few tens of KiB
    opened = []
    real_open = zipfile.ZipFile.open

    def spy(self, name, *args, **kwargs):
        opened.append(getattr(name, "filename", name))
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    bundle = CascadeBundle.from_bytes(buf.getvalue())
    assert "junk.bin" not in opened and "junk.bin" not in bundle.members
    assert "router.tflite" in opened


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_absurd_declared_member_sizes_are_refused_before_reading(bundle_bytes, compression):
    data = bundle_bytes
    if compression == zipfile.ZIP_DEFLATED:
        good = CascadeBundle.from_bytes(bundle_bytes)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression) as z:
            z.writestr("cascade.json", json.dumps(good.manifest()))
            for name, payload in good.members.items():
                z.writestr(name, payload)
        data = buf.getvalue()
    with pytest.raises(CascadeBundleError, match="declares .* refusing to read it"):
        CascadeBundle.from_bytes(_declare_size(data, "router.tflite", 1 << 40))


def test_absurd_class_count_is_refused_before_allocating(tmp_path, bundle_bytes):
    good = CascadeBundle.from_bytes(bundle_bytes)
    manifest = {**good.manifest(), "n_classes": 10**10}
    path = tmp_path / "classes.cascade"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("cascade.json", json.dumps(manifest))
        for name, payload in good.members.items():
            z.writestr(name, payload)
    script = ("import resource, sys\n"
              "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
              "from tflm_swap.cascade.bundle import CascadeBundle, CascadeBundleError\n"
              "try:\n    CascadeBundle.load(sys.argv[1])\n"
              "except CascadeBundleError as exc:\n    print('REFUSED', exc)\n")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)
    assert "REFUSED" in proc.stdout and "n_classes" in proc.stdout, proc.stderr[-2000:]


# ------------------------------------------------------------------------------ 2. outputs vs inputs
def overwrite_argvs(f: dict[str, Path], out: Path) -> list[list[str]]:
    kws, seg, bundle, data = (str(f[k]) for k in ("kws", "seg", "bundle", "data"))
    return [
        ["cascade", "eval", bundle, "--data", data, "--json", bundle],
        ["cascade", "eval", bundle, "--data", data, "--json", data],
        ["convert", kws, "-o", str(out / "X"), "--graph", str(out / "G"), "--image", str(out / "X")],
        ["split", seg, "--graph", str(out / "S"), "--image", str(out / "S")],
        ["convert", kws, "-o", str(f["kws"].parent / ".." / "in" / "kws.tflite")],
    ]


@pytest.mark.parametrize("case", range(5))
def test_outputs_never_replace_inputs_or_each_other(files, tmp_path, capsys, case):
    out = tmp_path / "out"
    before = tree(tmp_path)
    assert main(overwrite_argvs(files, out)[case]) == 2
    line = one_error_line(capsys)
    assert "refusing to overwrite" in line or "two outputs" in line
    assert tree(tmp_path) == before  # no input changed, nothing written


def test_cascade_build_refuses_to_write_over_its_training_data(files, tmp_path, capsys):
    before = tree(tmp_path)
    assert main(["cascade", "build", "--data", str(files["data"]), "-o", str(files["data"]), "--epochs", "1",
                 "--router-epochs", "1", "--sparsity-epochs", "0", "--finetune-epochs", "0", "--quiet"]) == 2
    assert "refusing to overwrite the input file" in one_error_line(capsys)
    assert tree(tmp_path) == before


# ------------------------------------------------------------------------------ 3. corrupt weights
def zeroed_segment(files: dict[str, Path], segment: int = 1) -> Path:
    data = bytearray(files["seg"].read_bytes())
    m = read_manifest(bytes(data))
    s = m.segments[segment]
    start = m.image_offset + s.offset
    data[start : start + s.size] = bytes(s.size)
    path = files["seg"].with_name("zeroed.tflite")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("argv", [["convert", "{m}", "-o", "{o}/c.tflite"],
                                  ["convert", "{m}", "--target", "tflm", "-o", "{o}/p", "--arena-size", "40000"],
                                  ["stages", "{m}", "--ram-budget", "9KiB", "--out", "{o}/st"]],
                         ids=["convert", "convert-tflm", "stages"])
def test_cli_never_launders_a_zeroed_segment(files, tmp_path, capsys, argv):
    bad = zeroed_segment(files)
    before = tree(tmp_path)
    assert main([a.format(m=bad, o=tmp_path / "out") for a in argv]) == 2
    line = one_error_line(capsys)
    assert str(bad) in line and "segment 1 " in line and "corrupt" in line
    assert tree(tmp_path) == before


def test_api_never_launders_a_zeroed_segment(files, tmp_path):
    from tflm_swap.micro import export_project

    bad = zeroed_segment(files)
    for call in (lambda: tflm_swap.convert(bad), lambda: export_project(bad, tmp_path / "p", arena_size=40000),
                 lambda: Model.load(bad)):
        with pytest.raises(SegmentIntegrityError, match="segment 1 .*corrupt") as exc:
            call()
        assert str(bad) in str(exc.value)
    assert not (tmp_path / "p").exists()


# ------------------------------------------------------------------------- 4. one-line CLI errors
def cli_errors(f: dict[str, Path], tmp: Path) -> list[tuple[list[str], int, str]]:
    """(argv, status, text the message must hold) for user errors that once ended in a traceback."""
    (tmp / "junk.tflite").write_bytes(b"not a model at all")
    (tmp / "text.npy").write_text("not numpy\n")
    (tmp / "text.npz").write_text("not numpy\n")
    np.savez(tmp / "labels.npz", x=np.zeros((4, 8, 8, 1), np.float32), y=np.array([0, 1, 2, 99]))
    seg, kws, bundle = str(f["seg"]), str(f["kws"]), str(f["bundle"])
    return [
        (["verify", str(tmp)], 2, str(tmp)),
        (["verify", str(tmp / "missing.tflite")], 2, "missing.tflite"),
        (["manifest", str(tmp)], 2, "Is a directory"),
        (["run", seg, "--invokes", "0"], 2, "--invokes"),
        (["run", seg, "--prefetch", "-1"], 2, "--prefetch"),
        (["run", str(tmp / "junk.tflite"), "--invokes", "1"], 2, "junk.tflite"),
        (["convert", kws, "-o", str(tmp / "out.tflite"), "--page-size", str(1 << 40)], 2, "page size"),
        (["convert", kws, "-o", str(tmp / "out.tflite"), "--representative-data", str(tmp / "text.npy")], 2,
         "text.npy"),
        (["inspect", kws, "--prefetch", "x", "--no-plot", "--no-latency"], 2, "--prefetch"),
        (["cascade", "run", bundle, "--data", str(tmp / "text.npz")], 2, "text.npz"),
        (["cascade", "eval", bundle, "--data", str(tmp / "labels.npz")], 2, "labels.npz"),
        (["nonsense"], 2, "invalid choice"),
        (["verify", str(zeroed_segment(f))], 1, "corrupt"),
    ]


@pytest.mark.parametrize("case", range(13))
def test_user_errors_are_one_line_with_a_documented_status(files, tmp_path, capsys, case):
    argv, status, needle = cli_errors(files, tmp_path)[case]
    assert main(argv) == status
    assert needle in one_error_line(capsys)


def test_exit_statuses_are_documented_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "exit status:" in text and "a check failed" in text and "tflm-swap: error: FILE: problem" in text


def test_invoke_after_close_is_a_clear_error(files):
    from tflm_swap.runtime.interpreter import SwapInterpreter

    swap = SwapInterpreter(files["seg"], ram_budget=18 << 10)  # streamed stages: a prefetch thread
    swap.allocate_tensors()
    for d in swap.get_input_details():
        swap.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    swap.invoke()
    swap.close()
    with pytest.raises(TflmSwapError, match="closed"):
        swap.invoke()


def test_a_full_disk_is_a_one_line_error_and_leaves_no_temporary_file(files, tmp_path, capsys):
    import errno

    out = tmp_path / "out"
    with failing_writes(OSError(errno.ENOSPC, "No space left on device")):
        assert main(["convert", str(files["kws"]), "-o", str(out / "c.tflite")]) == 2
    assert "c.tflite: No space left on device" in one_error_line(capsys)
    assert not out.exists()


# ------------------------------------------------------------------------- 5. multi-file outputs
def test_a_failing_project_write_leaves_nothing(files, tmp_path, monkeypatch):
    from tflm_swap.micro import export_project

    calls = [0]
    real = shutil.copyfile

    def copy_then_fail(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", copy_then_fail)
    with pytest.raises(OSError):
        export_project(files["kws"], tmp_path / "proj", arena_size=40000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no half project, no temporary directory


def test_a_failing_update_of_a_project_keeps_the_old_one(files, tmp_path, monkeypatch):
    from tflm_swap.micro import export_project

    export_project(files["kws"], tmp_path / "proj", prefix="net", arena_size=40000)
    (tmp_path / "proj" / "notes.txt").write_text("mine")
    before = tree(tmp_path / "proj")
    real = os.rename
    calls = [0]

    def rename_then_fail(src, dst):
        calls[0] += 1
        if calls[0] == 7:  # part way through moving the new files into place
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename_then_fail)
    with pytest.raises(OSError):
        export_project(files["kws"], tmp_path / "proj", prefix="net", arena_size=50000)
    monkeypatch.undo()
    assert tree(tmp_path / "proj") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "proj"]


def test_a_failing_stage_export_leaves_no_directory(files, tmp_path, monkeypatch, capsys):
    import tflm_swap.runtime.stage_files as stage_files

    real = stage_files.extract
    calls = [0]

    def extract_then_fail(*args):
        calls[0] += 1
        if calls[0] == 2:
            raise TflmSwapError("simulated failure while extracting stage 1")
        return real(*args)

    monkeypatch.setattr(stage_files, "extract", extract_then_fail)
    out = tmp_path / "st"
    assert main(["stages", str(files["seg"]), "--ram-budget", "9KiB", "--out", str(out)]) == 2
    assert "simulated failure" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_split_writes_both_files_or_neither(files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with failing_writes(OSError(28, "No space left on device"), after=1):
        assert main(["split", str(files["seg"]), "--graph", str(out / "g"), "--image", str(out / "i")]) == 2
    one_error_line(capsys)
    assert list(out.iterdir()) == []
    with failing_writes(KeyboardInterrupt(), after=1):
        assert main(["split", str(files["seg"]), "--graph", str(out / "g"), "--image", str(out / "i")]) == 130
    assert list(out.iterdir()) == []


KILL_SCRIPT = """
import os, sys, time
from pathlib import Path
calls = [0]
real_fsync, real_write_bytes = os.fsync, Path.write_bytes
def slow(real, *args):
    calls[0] += 1
    if calls[0] == 2:  # part way through the output: tell the test, then wait for its signal
        os.write(int(sys.argv[1]), b"ready")
        time.sleep(60)
    return real(*args)
os.fsync = lambda fd: slow(real_fsync, fd)
Path.write_bytes = lambda self, data: slow(real_write_bytes, self, data)
from tflm_swap.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("output", ["files", "project"])
def test_a_terminated_write_leaves_nothing_behind(files, tmp_path, output):
    import signal

    out = tmp_path / "out"
    argv = {"files": ["convert", str(files["kws"]), "-o", str(out / "c.tflite"), "--graph", str(out / "g"),
                      "--image", str(out / "i")],
            "project": ["convert", str(files["kws"]), "--target", "tflm", "-o", str(out / "p"),
                        "--arena-size", "40000"]}[output]
    read, write = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(write), *argv], cwd=ROOT, pass_fds=(write,),
                            stderr=subprocess.PIPE, text=True)
    os.close(write)
    try:
        assert os.read(read, 5) == b"ready"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(read)
        proc.kill()
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "tflm-swap: terminated"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no temporary, no directory


def test_created_files_and_directories_honour_the_umask(files, tmp_path):
    from tflm_swap.micro import export_project

    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "a.bin", b"x")
        project = export_project(files["kws"], tmp_path / "proj", arena_size=40000)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "proj").stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in project.files} == {0o644}


# ------------------------------------------------------------------------------------ 6. the corpus
def test_hostile_corpus(tmp_path_factory, capsys):
    """Every generated case ends in a clear error; nothing written, no input changed, no hang."""
    results = run_corpus(tmp_path_factory.mktemp("hostile"))
    text = table(results)
    with capsys.disabled():  # the table is the point of the run: show it whatever the capture mode
        print(f"\n\nhostile corpus (tests/hostile_corpus.py), {len(results)} cases:\n{text}")
    problems = [f"{r.case.group} | {r.case.name}: {r.problem}" for r in results if r.problem]
    assert len(results) >= 1000
    assert {r.case.group for r in results} >= {"forged bundles", "bad arguments", "outputs onto inputs",
                                               "bit-flipped / zeroed weights", "failed writes (disk full, interrupt)"}
    assert not problems, "\n".join(problems[:30])


def test_reliability_table_writer_keeps_the_rest_of_the_document(tmp_path):
    doc = tmp_path / "R.md"
    doc.write_text("# title\n<!-- hostile-corpus-table:begin -->\nold\n<!-- hostile-corpus-table:end -->\ntail\n")
    write_reliability("| new |", doc)
    assert doc.read_text() == ("# title\n<!-- hostile-corpus-table:begin -->\n| new |\n"
                               "<!-- hostile-corpus-table:end -->\ntail\n")
