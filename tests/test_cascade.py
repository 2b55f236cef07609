"""Cascades end to end on a small digits subset: groups, slimming, bundle, LiteRT and TFLM runtimes.

One cascade is built per session (module fixture: 700 digits, a few epochs); every test runs the
real LiteRT and TFLite Micro interpreters.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

pytest.importorskip("keras", reason="cascades train Keras models (pip install .[convert])")
pytest.importorskip("sklearn", reason="cascades cluster classes with scikit-learn (pip install .[convert])")

from tflm_swap.cascade import CascadeBundle, CascadeBundleError, CascadeInterpreter  # noqa: E402
from tflm_swap.cascade.groups import check_partition, class_signatures, cluster_classes  # noqa: E402
from tflm_swap.errors import BudgetError, TflmSwapError  # noqa: E402

N_TRAIN, N_TEST = 700, 120
REF = {"reference_kernels": True}  # TFLite's reference kernels compute int8 exactly as TFLM does


@pytest.fixture(scope="module")
def digits():
    from tflm_swap.demo import load_digits_images

    x_train, x_test, y_train, y_test = load_digits_images(0)
    return x_train[:N_TRAIN], y_train[:N_TRAIN], x_test[:N_TEST], y_test[:N_TEST]


@pytest.fixture(scope="module")
def built(digits):
    from tflm_swap.cascade import CascadeBuilder

    x, y, _, _ = digits
    return CascadeBuilder(n_groups=3, epochs=8, router_epochs=8, sparsity_epochs=2, finetune_epochs=2,
                          verbose=0).fit(None, x, y)


@pytest.fixture(scope="module")
def bundle(built) -> CascadeBundle:
    return CascadeBundle.from_bytes(built.bundle_.to_bytes())


# ------------------------------------------------------------------------------------ groups
def test_groups_are_a_deterministic_partition(built, digits):
    x, y, _, _ = digits
    sig = class_signatures(built.model_, x, y, 10)
    assert np.array_equal(sig, class_signatures(built.model_, x, y, 10))
    confusion = class_signatures(built.model_, x, y, 10, "confusion")
    for method, signature in (("activations", sig), ("confusion", confusion)):
        for k in (2, 3, 4):
            groups = cluster_classes(signature, k, method)
            assert groups == cluster_classes(signature.copy(), k, method)
            assert len(groups) == k
            check_partition(groups, 10)
    assert built.groups_ == cluster_classes(class_signatures(built.model_, x, y, 10), 3)


def test_group_partition_check_names_the_problem():
    with pytest.raises(TflmSwapError, match=r"duplicated \[2\].*missing \[3\]"):
        check_partition([[0, 1, 2], [2]], 4)
    with pytest.raises(TflmSwapError, match="between 2"):
        cluster_classes(np.eye(4), 5)


def test_automatic_group_choice_is_seeded(digits):
    from tflm_swap.cascade.groups import choose_groups

    x, y, _, _ = digits
    rng = np.random.default_rng(0)
    sig = rng.standard_normal((10, 6))
    a = choose_groups(sig, x, y, (2, 3, 4), seed=1)
    b = choose_groups(sig, x, y, (2, 3, 4), seed=1)
    assert [(c.n_groups, c.groups, c.objective) for c in a] == [(c.n_groups, c.groups, c.objective) for c in b]
    assert [c.objective for c in a] == sorted(c.objective for c in a)


# ---------------------------------------------------------------------------------- slimming
def _randomised_bn_model(flatten: bool):
    """A conv/dense net with random BN statistics where ~30% of channels are dead (gamma = beta = 0)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((8, 8, 2)),
        layers.Conv2D(12, 3, padding="same", use_bias=False), layers.BatchNormalization(), layers.ReLU(),
        layers.MaxPooling2D(),
        layers.Conv2D(10, 3, padding="same"), layers.BatchNormalization(), layers.ReLU(),
        layers.Flatten() if flatten else layers.GlobalAveragePooling2D(),
        layers.Dense(9), layers.BatchNormalization(), layers.ReLU(),
        layers.Dense(6),
    ])
    rng = np.random.default_rng(4)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.gamma.shape[0]
            gamma, beta = rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n)
            dead = rng.random(n) < 0.3
            dead[0] = True
            gamma[dead] = beta[dead] = 0.0
            stats = (gamma, beta, rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n))
            layer.set_weights([w.astype(np.float32) for w in stats])
    return model


@pytest.mark.parametrize("flatten", [False, True])
def test_slimming_dead_channels_keeps_outputs(flatten):
    from tflm_swap.cascade.slimming import count_cost, select_channels, slim_copy

    model = _randomised_bn_model(flatten)
    keep, _ = select_channels(model, 10**9, threshold=1e-6, min_channels=1)
    assert all(0 < len(k) < model.get_layer(name).kernel.shape[-1] for name, k in keep.items())
    head = [4, 0, 2]
    slim = slim_copy(model, keep, head=head)
    x = np.random.default_rng(5).random((6, 8, 8, 2), dtype=np.float32)
    np.testing.assert_allclose(slim.predict(x, verbose=0), model.predict(x, verbose=0)[:, head], atol=1e-4)
    assert count_cost(slim)[0] < count_cost(model)[0]
    assert count_cost(slim) == count_cost(model, keep, head)


def test_select_channels_meets_the_size_target():
    from tflm_swap.cascade.slimming import count_cost, select_channels

    model = _randomised_bn_model(False)
    full = count_cost(model)[0]
    keep, threshold = select_channels(model, full // 2, min_channels=2)
    assert count_cost(model, keep)[0] <= full // 2 and threshold > 0
    assert all(len(k) >= 2 for k in keep.values())


def test_slimming_rejects_branches_and_missing_batch_norm(digits):
    import keras

    from tflm_swap.cascade import CascadeBuilder
    from tflm_swap.cascade.slimming import prunable_layers

    inp = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(4, 3, padding="same")(inp)
    out = keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Add()([a, a])))
    with pytest.raises(TflmSwapError, match="linear chain"):
        prunable_layers(keras.Model(inp, out))
    plain = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    x, y, _, _ = digits
    with pytest.raises(TflmSwapError, match="BatchNormalization"):
        CascadeBuilder(n_groups=2, verbose=0).fit(plain, x, y)
    with pytest.raises(TflmSwapError, match=r"\[N, H, W, C\]"):
        CascadeBuilder(verbose=0).fit(None, x[..., 0], y)


# -------------------------------------------------------------------------------------- bundle
def test_bundle_figures_and_router_share(built, bundle):
    assert bundle.groups == built.groups_ and len(bundle.specialists) == 3
    mono = bundle.monolithic
    assert bundle.router.weight_bytes <= 0.10 * mono.weight_bytes
    assert bundle.router.macs <= 0.10 * mono.macs
    for spec in bundle.specialists:
        assert spec.weight_bytes < mono.weight_bytes
    assert sum(s.weight_bytes for s in bundle.specialists) < 1.3 * mono.weight_bytes
    assert bundle.manifest() == CascadeBundle.from_bytes(bundle.to_bytes()).manifest()


def _rewrite(bundle: CascadeBundle, edit_manifest=None, drop=(), replace=None) -> bytes:
    manifest = bundle.manifest()
    if edit_manifest:
        edit_manifest(manifest)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("cascade.json", json.dumps(manifest))
        for name, data in bundle.members.items():
            if name not in drop:
                z.writestr(name, (replace or {}).get(name, data))
    return buf.getvalue()


def test_bad_bundles_give_clear_errors(bundle):
    def shift_groups(m):
        m["groups"] = [[c + 1 for c in g] for g in m["groups"]]

    def swap_classes(m):
        m["specialists"][0]["classes"], m["specialists"][1]["classes"] = (m["specialists"][1]["classes"],
                                                                        m["specialists"][0]["classes"])

    def drop_entry(m):
        m["specialists"].pop()

    def swap_members(m):
        a, b = m["specialists"][0], m["specialists"][1]
        for key in ("member", "crc32", "size"):
            a[key], b[key] = b[key], a[key]

    spec0 = bundle.specialists[0].member
    corrupt = bytearray(bundle.members[spec0])
    corrupt[-5] ^= 0xFF
    cases = [
        (_rewrite(bundle, drop=[spec0]), "missing from the bundle"),
        (_rewrite(bundle, shift_groups), "not a partition of the labels"),
        (_rewrite(bundle, swap_classes), "mismatched class map"),
        (_rewrite(bundle, drop_entry), "specialist is missing"),
        (_rewrite(bundle, replace={spec0: bytes(corrupt)}), "corrupt.*CRC32"),
        (b"not a zip at all", "not a cascade bundle"),
        (_rewrite(bundle, lambda m: m.update(version=99)), "version 99"),
        (_rewrite(bundle, lambda m: m["fallback"].update(policy="pray")), "fallback policy"),
    ]
    if len(bundle.groups[0]) != len(bundle.groups[1]):
        cases.append((_rewrite(bundle, swap_members), "should output"))
    for data, message in cases:
        with pytest.raises(CascadeBundleError, match=message):
            CascadeBundle.from_bytes(data)


def test_bundle_save_is_atomic_file(bundle, tmp_path):
    path = bundle.save(tmp_path / "b.cascade")
    assert CascadeBundle.load(path).groups == bundle.groups
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(CascadeBundleError, match="no such cascade bundle"):
        CascadeBundle.load(tmp_path / "missing.cascade")


# ------------------------------------------------------------------------------------- runtime
def _member_outputs_litert(data: bytes, x: np.ndarray) -> np.ndarray:
    from tflm_swap.interpreters import litert_interpreter, run_litert

    interpreter = litert_interpreter(data, reference_kernels=True)
    interpreter.allocate_tensors()
    d = interpreter.get_input_details()[0]
    scale, zero = d["quantization"]
    xq = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
    return np.concatenate([run_litert(interpreter, [xq[i : i + 1]])[0] for i in range(len(x))])


def _member_outputs_tflm(data: bytes, x: np.ndarray) -> np.ndarray:
    from tflm_swap.format.model import Model
    from tflm_swap.interpreters import tflm_interpreter

    interpreter = tflm_interpreter(bytes(Model.from_bytes(data).without_external()))
    q = interpreter.get_input_details(0)["quantization_parameters"]
    scale, zero = float(q["scales"][0]), int(q["zero_points"][0])
    xq = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
    out = []
    for i in range(len(x)):
        interpreter.set_input(xq[i : i + 1], 0)
        interpreter.invoke()
        out.append(interpreter.get_output(0).copy())
    return np.concatenate(out)


def test_members_run_identically_on_litert_and_tflm(bundle, digits):
    pytest.importorskip("tflite_micro", reason="needs the TFLite Micro interpreter (pip install tflite-micro)")
    _, _, x, _ = digits
    for info in [bundle.router] + [s for s in bundle.specialists if s.member] + [bundle.monolithic]:
        data = bundle.member_bytes(info)
        lite, micro = _member_outputs_litert(data, x[:40]), _member_outputs_tflm(data, x[:40])
        assert lite.dtype == np.int8 and lite.shape == micro.shape
        # TFLM's MEAN (global average pooling) may round differently by one step of the output scale
        diff = np.abs(lite.astype(np.int32) - micro.astype(np.int32))
        assert diff.max() <= 1 and np.mean(diff == 0) > 0.9, f"{info.member}: LiteRT and TFLM differ"
        assert np.mean(np.argmax(lite, 1) == np.argmax(micro, 1)) >= 0.95


def test_cascade_litert_and_tflm_agree(bundle, digits):
    pytest.importorskip("tflite_micro", reason="needs the TFLite Micro interpreter (pip install tflite-micro)")
    _, _, x, _ = digits
    with CascadeInterpreter(bundle, backend="litert", litert_options=REF) as a, \
            CascadeInterpreter(bundle, backend="tflm") as b:
        sa, sb = a.predict(x), b.predict(x)
        same_route = np.mean([ra.groups_run == rb.groups_run for ra, rb in zip(a.records, b.records)])
    assert same_route >= 0.95 and np.mean(np.argmax(sa, 1) == np.argmax(sb, 1)) >= 0.95
    assert np.median(np.abs(sa - sb).max(1)) < 0.02  # one int8 step of a logit moves scores a little
    np.testing.assert_allclose(sa.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(sb.sum(1), 1.0, atol=1e-9)


def _member_probabilities(data: bytes, x: np.ndarray) -> np.ndarray:
    from tflm_swap.interpreters import litert_interpreter

    interpreter = litert_interpreter(data, reference_kernels=True)
    scale, zero = interpreter.get_output_details()[0]["quantization"]
    logits = (_member_outputs_litert(data, x).astype(np.float64) - zero) * scale
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_scores_are_in_the_original_label_space(bundle, digits):
    """Recompute the cascade by hand from the members: an off-by-one class map would fail here."""
    _, _, x, y = digits
    router = _member_probabilities(bundle.member_bytes(bundle.router), x)
    specs = {g: _member_probabilities(bundle.member_bytes(s), x) for g, s in enumerate(bundle.specialists) if s.member}
    with CascadeInterpreter(bundle, fallback="none", litert_options=REF) as ci:
        scores = ci.predict(x)
    for i in range(len(x)):
        g = int(np.argmax(router[i]))
        hand = np.zeros(bundle.n_classes)
        for gi, classes in enumerate(bundle.groups):  # groups not run: their probability spread evenly
            hand[classes] = router[i, gi] / len(classes)
        hand[bundle.groups[g]] = router[i, g] * (specs[g][i] if g in specs else 1.0)
        np.testing.assert_allclose(scores[i], hand, atol=1e-6)
    top1 = np.mean(np.argmax(scores, 1) == y)
    shifted = max(np.mean(np.argmax(scores, 1) == (y + k) % 10) for k in (1, 9))
    assert top1 > 0.6 and shifted < 0.25, (top1, shifted)  # tiny training; a shifted map is at chance


def test_fallback_policies(bundle, digits):
    from tflm_swap.cascade.report import _run_plain

    _, _, x, _ = digits
    with CascadeInterpreter(bundle, fallback="full", threshold=1.01, litert_options=REF) as ci:
        full = np.argmax(ci.predict(x), 1)
        assert all(r.monolithic and r.groups_run == [] for r in ci.records)
    mono_pred, _ = _run_plain(bundle.member_bytes(bundle.monolithic), x)
    assert np.mean(full == mono_pred) > 0.97  # reference vs builtin kernels may differ by an LSB
    with CascadeInterpreter(bundle, fallback="top2", threshold=1.01) as ci:
        ci.predict(x[:10])
        assert all(len(r.groups_run) == 2 for r in ci.records)
        assert ci.stats()["fallback_rate"] == 1.0
    with CascadeInterpreter(bundle, threshold=0.0) as ci:
        ci.predict(x[:10])
        assert all(len(r.groups_run) == 1 for r in ci.records)


def test_budget_cache_and_bytes_loaded(bundle, digits):
    _, _, x, _ = digits
    sizes = [s.weight_bytes for s in bundle.specialists]
    tight = bundle.router.weight_bytes + max(sizes)
    with pytest.raises(BudgetError, match=str(tight)):
        CascadeInterpreter(bundle, ram_budget=tight - 1)
    with CascadeInterpreter(bundle, ram_budget=tight, threshold=0.0) as ci:
        ci.predict(x)
        for prev, rec in zip(ci.records, ci.records[1:]):
            size = sizes[rec.group] if bundle.specialists[rec.group].member else 0
            assert rec.bytes_loaded == (0 if rec.group == prev.group else size)
            assert rec.weights_used == bundle.router.weight_bytes + size
        assert ci.stats()["resident_bytes"] <= tight - bundle.router.weight_bytes
    with CascadeInterpreter(bundle, ram_budget=None, threshold=0.0) as ci:
        ci.predict(x)
        ci.predict(x)
        assert ci.stats()["bytes_loaded"] == sum(sizes[g] for g in {r.group for r in ci.records})
    with CascadeInterpreter(bundle, ram_budget=tight, cache="lfu", prefetch=True, threshold=0.0) as ci:
        ci.predict(x)
        stats = ci.stats()
        assert stats["prefetched_bytes"] > 0
        assert stats["bytes_loaded"] + stats["prefetched_bytes"] >= stats["bytes_loaded"]
    with pytest.raises(TflmSwapError, match="cache policy"):
        CascadeInterpreter(bundle, cache="random")


def test_runtime_does_not_import_tensorflow(tmp_path, bundle):
    import subprocess
    import sys

    path = bundle.save(tmp_path / "b.cascade")
    code = ("import sys, numpy as np; from tflm_swap.cascade import CascadeInterpreter; "
            f"ci = CascadeInterpreter({str(path)!r}); "
            f"ci.classify(np.zeros({bundle.input_shape}, np.float32)); ci.close(); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
