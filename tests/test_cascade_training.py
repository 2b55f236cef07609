"""The cascade training recipe on tiny data: batch-norm statistics refresh, cosine learning-rate
decay, distillation targets, soft-confusion groups and the automatic fallback threshold."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("keras", reason="cascades train Keras models (pip install .[convert])")
pytest.importorskip("sklearn", reason="cascades cluster classes with scikit-learn (pip install .[convert])")


def _conv_bn(channels: int = 3):
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    x = inp = keras.Input((6, 6, 1))
    x = layers.Conv2D(channels, 3, use_bias=False, name="conv")(x)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(2, 3, use_bias=False, name="conv2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(2, name="head")(x))


def test_bn_refresh_sets_population_statistics():
    from tflm_swap.cascade.training import refresh_bn_statistics

    model = _conv_bn()
    x = np.random.default_rng(0).normal(2.0, 3.0, (64, 6, 6, 1)).astype(np.float32)
    before = np.asarray(model.get_layer("bn").moving_mean).copy()
    assert refresh_bn_statistics(model, x, batch_size=10) == 2
    conv = np.asarray(model.get_layer("conv")(x)).reshape(-1, 3)
    np.testing.assert_allclose(model.get_layer("bn").moving_mean, conv.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.get_layer("bn").moving_variance, conv.var(0), rtol=1e-4)
    assert not np.allclose(before, conv.mean(0))
    # every batch norm now holds its full-batch statistics (the second one computed after the first
    # was refreshed): inference mode equals training mode on the whole sample
    np.testing.assert_allclose(model(x, training=False), model(x, training=True), rtol=1e-3, atol=1e-4)


def test_fit_classifier_decays_the_learning_rate_to_zero():
    from tflm_swap.cascade.training import fit_classifier

    model = _conv_bn()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6, 6, 1)).astype(np.float32)
    y = (x.mean((1, 2, 3)) > 0).astype(np.int64)
    fit_classifier(model, x, y, epochs=2, batch_size=16, learning_rate=0.01, verbose=0, shift=1)  # augmented batches
    schedule = model.optimizer._learning_rate
    assert int(model.optimizer.iterations) == 6 == schedule.decay_steps
    assert float(schedule(0)) == pytest.approx(0.01) and float(schedule(3)) == pytest.approx(0.005)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)


def test_mixed_targets_and_balanced_weights():
    from tflm_swap.cascade.training import balanced_weights, mixed_targets

    teacher = np.array([[3.0, 1.0], [1.0, 1.0], [0.0, 2.0]])
    t = mixed_targets(np.array([0, 1, 1]), teacher, alpha=0.5)
    np.testing.assert_allclose(t, [[0.875, 0.125], [0.25, 0.75], [0.0, 1.0]])
    w = balanced_weights(np.array([0, 0, 0, 1]))
    np.testing.assert_allclose(w, [2 / 3, 2 / 3, 2 / 3, 2.0])
    assert w.mean() == pytest.approx(1.0)


def test_soft_confusion_groups_classes_the_model_mixes_up():
    import keras

    from tflm_swap.cascade.groups import class_signatures, cluster_classes

    # a real linear Keras classifier on one-hot inputs whose logits put some mass on 0<->2 and 1<->3:
    # always right (no hard mistakes to count), yet the soft confusion shows which classes it mixes up
    logits = np.full((4, 4), -4.0)
    np.fill_diagonal(logits, 4.0)
    logits[0, 2] = logits[2, 0] = logits[1, 3] = logits[3, 1] = 1.0
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, use_bias=False)])
    model.layers[0].set_weights([logits])
    y = np.repeat(np.arange(4), 5)
    x = np.eye(4, dtype=np.float32)[y]
    assert np.all(np.argmax(model.predict(x, verbose=0), 1) == y)
    distance = class_signatures(model, x, y, 4, "confusion")
    assert cluster_classes(distance, 2, "confusion") == [[0, 2], [1, 3]]


def test_choose_threshold_takes_the_most_fallbacks_the_target_allows():
    from tflm_swap.cascade.router import choose_threshold

    top = np.array([0.55, 0.75, 0.92, 0.97, 0.999])
    probs = np.stack([top, 1 - top], axis=1)
    # router 10, specialists 30 each: confident 40, fallback (top2) 70
    assert choose_threshold(probs, 10, [30, 30], 100, "top2", 100.0) == (0.999, 64.0)
    threshold, expected = choose_threshold(probs, 10, [30, 30], 100, "top2", 52.0)
    assert threshold == 0.9 and expected == pytest.approx(52.0)  # two of five inputs fall back
    assert choose_threshold(probs, 10, [30, 30], 100, "full", 39.0) == (0.0, 40.0)  # never fall back


def test_shift_images_moves_pixels_with_zero_fill():
    from tflm_swap.cascade.training import shift_images

    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 1) + 1
    out = shift_images(x, np.array([[1, -2], [0, 0]]))
    np.testing.assert_array_equal(out[0, 1:, :2, 0], x[0, :3, 2:, 0])  # down 1, left 2
    assert np.all(out[0, 0] == 0) and np.all(out[0, :, 2:] == 0)
    np.testing.assert_array_equal(out[1], x[1])


def test_choose_threshold_meets_every_metric():
    from tflm_swap.cascade.router import choose_threshold

    top = np.array([0.55, 0.75, 0.92, 0.97, 0.999])
    probs = np.stack([top, 1 - top], axis=1)
    # (weights, MACs): the monolithic model's MACs make a fallback costlier in MACs than in weights
    threshold, expected = choose_threshold(probs, [5, 5], [[20, 30], [20, 30]], [100, 100], "full", [45, 50])
    assert threshold == 0.7  # 0.9 meets the weights (45) but not the MACs (63)
    np.testing.assert_allclose(expected, [(4 * 25 + 105) / 5, (4 * 35 + 105) / 5])
