"""A cascade as one TFLite Micro project (issue 19): export, build, run, compare with the Python cascade.

One digits cascade is trained per module (as in test_cascade.py). The generated project runs
  - under QEMU on a Cortex-M4 with the pinned TFLM (the TFLM that `CascadeInterpreter(backend="tflm")`
    runs through tflite-micro's Python interpreter): scores bit-identical for 200 test inputs;
  - on the host TFLM (xmos-ai-tools, -Wall -Werror): its kernels compute these members' int8 outputs
    differently from the official TFLM (up to 43 int8 steps; which kernel differs was not traced),
    so there the scores are compared bit for bit with the Python cascade fed that same TFLM's member
    outputs (each member run once on every input through the host runner);
and init refuses an image of another cascade, a corrupt member segment and a truncated image.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("keras", reason="cascades train Keras models (pip install .[convert])")
pytest.importorskip("sklearn", reason="cascades cluster classes with scikit-learn (pip install .[convert])")

from tflm_swap.cascade import CascadeBundle, CascadeInterpreter  # noqa: E402
from tflm_swap.cascade.scores import int8_softmax, softmax  # noqa: E402
from tflm_swap.cascade.tflm_project import export_project, run_project  # noqa: E402
from tflm_swap.errors import TflmSwapError  # noqa: E402
from tflm_swap.format.flash_image import parse_container  # noqa: E402
from tflm_swap.interpreters import quantize_input  # noqa: E402
from tflm_swap.micro.toolchain import NativeToolError  # noqa: E402

pytestmark = pytest.mark.native
N_TRAIN, N_INPUTS = 700, 200


@pytest.fixture(scope="module")
def digits():
    from tflm_swap.demo import load_digits_images

    x_train, x_test, y_train, _ = load_digits_images(0)
    return x_train[:N_TRAIN], y_train[:N_TRAIN], x_test[:N_INPUTS]


@pytest.fixture(scope="module")
def bundle(digits) -> CascadeBundle:
    from tflm_swap.cascade import CascadeBuilder

    x, y, _ = digits
    built = CascadeBuilder(n_groups=3, epochs=8, router_epochs=8, sparsity_epochs=2, finetune_epochs=2,
                           verbose=0).fit(None, x, y)
    return CascadeBundle.from_bytes(built.bundle_.to_bytes(), source="digits.cascade")


@pytest.fixture(scope="module")
def project(bundle, tmp_path_factory):
    try:
        return export_project(bundle, tmp_path_factory.mktemp("cascade") / "project", prefix="digits")
    except NativeToolError as exc:
        pytest.skip(str(exc))


def test_int8_softmax_is_the_softmax_of_the_dequantized_logits():
    q = np.array([-128, 5, 127, 126, 0], dtype=np.int8)
    p = int8_softmax(q, 0.0625)
    np.testing.assert_allclose(p, softmax((q.astype(np.float64) - 3) * 0.0625), rtol=1e-12)
    assert p.sum() == pytest.approx(1.0, abs=1e-15)


def test_project_layout(project, bundle):
    members = parse_container(project.image)
    assert [m.name for m in members] == ["router"] + [f"specialist_{g}" for g, s in enumerate(bundle.specialists)
                                                      if s.member is not None]
    assert project.arena_size <= 1.1 * (project.members[0].arena_size + max(m.arena_size for m in project.members[1:]))
    header = (project.out_dir / "digits_cascade.h").read_text()
    assert f"#define DIGITS_ARENA_SIZE {project.arena_size}u" in header
    assert all((project.out_dir / f).is_file() for f in ("main.cc", "digits_cascade.cc", "digits_image.bin",
                                                         "tswap/tswap_cascade.cc", "tswap/tswap_cascade.h"))


def _check_statistics(run, project, records) -> None:
    """Groups run as the Python cascade ran them; the members run are the router then those groups'
    specialists, each reading its flash bytes per run; the bytes add up."""
    index = {m.name: k for k, m in enumerate(project.members)}
    for k, rec in enumerate(records):
        assert run.groups_run[k] == rec.groups_run and run.monolithic[k] == rec.monolithic
        specialists = [index[f"specialist_{g}"] for g in rec.groups_run if f"specialist_{g}" in index]
        assert run.members_run[k] == [0, *specialists]
        assert run.member_bytes[k] == [project.members[m].flash_bytes_per_inference for m in run.members_run[k]]
        assert run.bytes_loaded[k] == sum(run.member_bytes[k])
    assert sum(run.setups) >= 1 and max(run.setups) <= 2  # a specialist is set up again only on a switch


@pytest.mark.parametrize("where", ["mps2-an386", "host, pinned TFLM"])
def test_project_is_bit_identical_to_the_python_cascade(project, bundle, digits, mcu, where):
    """On the Cortex-M4 under QEMU, and on the host against TFLM from the pinned sources (which
    computes what tflite-micro's interpreter does, unlike xmos-ai-tools' library): the scores are
    the Python cascade's bits."""
    _, _, x = digits
    run = run_project(project, x, board=where) if where in mcu.BOARDS else run_project(project, x, pinned_tflm=True)
    with CascadeInterpreter(bundle, backend="tflm") as ci:
        scores = ci.predict(x)
        records = list(ci.records)
    assert len(x) >= 200
    assert np.array_equal(run.scores.view(np.uint64), scores.view(np.uint64))
    _check_statistics(run, project, records)


class _Replay:
    """A member's outputs as the host TFLM computed them (run_host_tflm over every input at once)."""

    def __init__(self, outputs: dict[bytes, np.ndarray], detail: dict):
        self.outputs, self.detail = outputs, detail

    def run(self, x: np.ndarray) -> np.ndarray:
        from tflm_swap.cascade.scores import probabilities

        return probabilities(self.outputs[np.asarray(x, np.float32).tobytes()], self.detail)

    def close(self) -> None:
        pass


def _host_outputs(member, x: np.ndarray) -> _Replay:
    from tflm_swap.micro import run_host_tflm

    model = member.micro.graph_model
    tin, tout = model.tensors[model.inputs[0]], model.tensors[model.outputs[0]]
    detail_in, detail_out = ({"dtype": np.int8,
                              "quantization": (float(t.quantization.scale[0]), int(t.quantization.zeroPoint[0]))}
                             for t in (tin, tout))
    inputs = [[quantize_input(xi[np.newaxis], detail_in)] for xi in x]
    run = run_host_tflm(member.micro.graph, member.micro.image, inputs, graph_model=model)
    return _Replay({xi[np.newaxis].tobytes(): out[0] for xi, out in zip(x, run.outputs)}, detail_out)


@pytest.fixture(scope="module")
def host_run(project, digits):
    """The project built on the host TFLM and run on the test inputs."""
    try:
        return run_project(project, digits[2])
    except NativeToolError as exc:
        pytest.skip(str(exc))


def test_project_on_host_tflm_computes_the_python_cascade(project, bundle, digits, host_run):
    _, _, x = digits
    x, run = np.asarray(x, np.float32), host_run
    replays = {m.name: _host_outputs(m, x) for m in project.members}

    class HostCascade(CascadeInterpreter):
        def _open(self, info):
            if info is self.bundle.router:
                return replays["router"]
            return replays[next(f"specialist_{g}" for g, s in enumerate(self.bundle.specialists) if s is info)]

    with HostCascade(bundle, backend="tflm") as ci:
        scores = ci.predict(x)
        records = list(ci.records)
    assert np.array_equal(run.scores.view(np.uint64), scores.view(np.uint64))
    _check_statistics(run, project, records)
    assert run.arena_size == project.arena_size


def test_hot_specialists_are_read_from_the_ram_cache(project, bundle, digits, host_run, tmp_path):
    """With a cache holding every specialist's image, each is read from flash once (its whole image,
    the first time it runs); afterwards only the router reads flash. Scores do not change."""
    _, _, x = digits
    sizes = {m.name: len(m.micro.image) for m in project.members}
    cached = export_project(bundle, tmp_path / "cached", prefix="digits",
                            cache_size=sum(-(-s // 16) * 16 for s in sizes.values()))
    run = run_project(cached, x)
    assert np.array_equal(run.scores.view(np.uint64), host_run.scores.view(np.uint64))
    seen = set()
    for k, members in enumerate(run.members_run):
        assert run.member_bytes[k][0] == project.members[0].flash_bytes_per_inference  # the router: no cache
        for m, flash in zip(members[1:], run.member_bytes[k][1:]):
            assert flash == (0 if m in seen else sizes[project.members[m].name])
            seen.add(m)
        assert run.cache_bytes[k] == sum(host_run.member_bytes[k][1:])  # the loads read the same bytes, from RAM
    assert sum(run.bytes_loaded) < sum(host_run.bytes_loaded) / 2


def _corrupt(project, member: str) -> bytes:
    """The project's image with one byte of `member`'s first segment flipped."""
    entry = next(m for m in parse_container(project.image) if m.name == member)
    segment = project.member(member).micro.segments[0]
    image = bytearray(project.image)
    image[entry.offset + segment.offset + segment.size // 2] ^= 0x10
    return bytes(image)


def test_init_refuses_wrong_and_corrupt_images(project, bundle, digits, tmp_path):
    _, _, x = digits
    try:
        run_project(project, x[:1])
    except NativeToolError as exc:
        pytest.skip(str(exc))
    other = export_project(bundle, tmp_path / "other", prefix="digits", min_segment_bytes=4096)
    cases = {
        "member 'router': the image belongs to another graph": other.image,
        "member 'specialist_1': segment 0 fails its CRC32": _corrupt(project, "specialist_1"),
        "cascade image: image truncated": project.image[:-100],
        "cascade image: unsupported image version": project.member("router").micro.image,
        "the image holds 3 members, this cascade has 4": _drop_last_member(project),
    }
    for message, image in cases.items():
        with pytest.raises(TflmSwapError, match=message):
            run_project(project, x[:1], image=image)


def _drop_last_member(project) -> bytes:
    from tflm_swap.converters.flash_image import build_container

    members = project.members[:-1]
    return build_container([(m.name, m.micro.image, m.micro.graph) for m in members])[0]


def test_cli_export(bundle, tmp_path, capsys):
    from tflm_swap.cli import main

    path = bundle.save(tmp_path / "digits.cascade")
    assert main(["cascade", "export", str(path), "--target", "tflm", "-o", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "router" in out and "arena" in out and (tmp_path / "p" / "cascade_image.bin").is_file()
    assert main(["cascade", "export", str(path), "-o", str(tmp_path / "q")]) != 0
    assert "--target" in capsys.readouterr().err and not (tmp_path / "q").exists()


def test_export_refuses_bad_options_before_any_work(bundle, tmp_path):
    import copy

    full = copy.copy(bundle)
    full.fallback = {"policy": "full", "threshold": 0.9}
    cases = [({"cache_size": -1}, "cache size"), ({"prefix": "1x"}, "C identifier"),
             ({"monolithic": False, "bundle": full}, "cannot be left out")]
    for options, message in cases:
        with pytest.raises(TflmSwapError, match=message):
            export_project(options.pop("bundle", bundle), tmp_path / "p", **options)
    assert not (tmp_path / "p").exists()
