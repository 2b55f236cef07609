"""The training recipe shared by every cascade member: cosine learning-rate decay, batch-norm
statistics recomputed over the data before the model is frozen, and distillation targets.

Why the statistics refresh: Keras keeps an exponential moving average of every batch norm's batch
statistics while the weights still move; with a constant learning rate the averages trail the
final weights (and after network slimming a layer's inputs change altogether), so inference-mode
accuracy falls below training-mode accuracy. `refresh_bn_statistics` replaces the moving mean and
variance by the exact population statistics of the final network ("precise BN", Wu & Johnson 2021).
"""

from __future__ import annotations

import numpy as np

BN_SAMPLES = 10_000  # samples the statistics refresh averages over
BN_BATCH = 500


def compile_classifier(model, learning_rate: float = 1e-3, decay_steps: int | None = None,
                       soft_targets: bool = False) -> None:
    """Adam on cross-entropy over logits, accuracy metric; with `decay_steps` the learning rate
    follows a cosine from `learning_rate` to 0 over that many steps. `soft_targets`: labels are
    probability rows (distillation) instead of class ids."""
    import keras

    rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps) if decay_steps else learning_rate
    if soft_targets:
        loss, metric = keras.losses.CategoricalCrossentropy(from_logits=True), "categorical_accuracy"
    else:
        loss, metric = keras.losses.SparseCategoricalCrossentropy(from_logits=True), "accuracy"
    model.compile(optimizer=keras.optimizers.Adam(rate), loss=loss, metrics=[metric])


def fit_classifier(model, x: np.ndarray, targets: np.ndarray, epochs: int, batch_size: int,
                   learning_rate: float = 1e-3, sample_weight: np.ndarray | None = None,
                   verbose: int | str = "auto", seed: int = 0, shift: int = 0) -> None:
    """Train with cosine learning-rate decay over all `epochs`, then refresh the batch-norm statistics.

    `targets`: class ids [N] or probability rows [N, K] (soft targets, e.g. `mixed_targets`).
    `shift` > 0: every epoch sees each image moved by a random offset of up to `shift` pixels per
    axis (zero fill), an augmentation against overfitting small datasets such as MNIST.
    """
    if epochs <= 0:
        return
    steps = epochs * -(-len(x) // batch_size)
    compile_classifier(model, learning_rate, decay_steps=steps, soft_targets=np.ndim(targets) == 2)
    if shift > 0:
        data = shifted_batches(x, targets, sample_weight, batch_size, shift, seed)
        model.fit(data, epochs=epochs, verbose=verbose)
    else:
        model.fit(x, targets, epochs=epochs, batch_size=batch_size, sample_weight=sample_weight, verbose=verbose)
    refresh_bn_statistics(model, x, seed=seed)


def shift_images(x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Images [N, H, W, C] moved by integer `offsets` [N, 2] (rows, columns), zero fill."""
    n, h, w, _ = x.shape
    pad = int(np.abs(offsets).max()) if len(offsets) else 0
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = pad - offsets[:, 0, None] + np.arange(h)[None, :]  # [N, H]
    cols = pad - offsets[:, 1, None] + np.arange(w)[None, :]  # [N, W]
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def shifted_batches(x: np.ndarray, targets: np.ndarray, sample_weight: np.ndarray | None, batch_size: int,
                    shift: int, seed: int = 0):
    """A Keras PyDataset of shuffled batches of randomly shifted images, reshuffled every epoch
    (built here so that importing this module does not import Keras)."""
    import keras

    class ShiftedBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(x))

        def __len__(self) -> int:
            return -(-len(x) // batch_size)

        def __getitem__(self, index: int):
            pick = self.order[index * batch_size : (index + 1) * batch_size]
            offsets = self.rng.integers(-shift, shift + 1, size=(len(pick), 2))
            batch = (shift_images(x[pick], offsets), targets[pick])
            return batch if sample_weight is None else (*batch, sample_weight[pick])

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(x))

    return ShiftedBatches()


def batch_norm_layers(model) -> list:
    """The model's BatchNormalization layers in graph order."""
    return [layer for layer in model.layers if type(layer).__name__ == "BatchNormalization"]


def refresh_bn_statistics(model, x: np.ndarray, max_samples: int = BN_SAMPLES, batch_size: int = BN_BATCH,
                          seed: int = 0) -> int:
    """Set every batch norm's moving mean/variance to the population statistics of its input over
    (up to `max_samples` of) `x`, in inference mode, layer after layer (each layer sees the inputs
    produced with the refreshed statistics of the layers before it). Returns the layers refreshed."""
    import keras

    layers = batch_norm_layers(model)
    if not layers:
        return 0
    pick = np.sort(np.random.default_rng(seed).permutation(len(x))[:max_samples])
    sample = np.asarray(x[pick], dtype=np.float32)
    for bn in layers:
        probe = keras.Model(model.inputs[0], bn.input)
        mean, var = _channel_moments(probe, sample, batch_size)
        bn.moving_mean.assign(mean.astype(np.float32))
        bn.moving_variance.assign(var.astype(np.float32))
    return len(layers)


def _channel_moments(probe, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) variance of the probe's output over every axis but the last."""
    total = total_sq = None
    count = 0
    for start in range(0, len(x), batch_size):
        out = np.asarray(probe(x[start : start + batch_size], training=False), dtype=np.float64)
        out = out.reshape(-1, out.shape[-1])
        total = out.sum(0) if total is None else total + out.sum(0)
        total_sq = (out**2).sum(0) if total_sq is None else total_sq + (out**2).sum(0)
        count += len(out)
    mean = total / count
    return mean, np.maximum(total_sq / count - mean**2, 0.0)


def teacher_probabilities(model, x: np.ndarray, temperature: float = 1.0, batch_size: int = 512) -> np.ndarray:
    """softmax(logits / temperature) of a trained classifier over `x` (float64 [N, K])."""
    logits = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float64) / temperature
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def mixed_targets(labels: np.ndarray, teacher: np.ndarray, alpha: float) -> np.ndarray:
    """(1 - alpha) * one-hot(labels) + alpha * teacher rows (renormalised): cross-entropy on these is
    the usual mix of the hard-label loss and the distillation loss."""
    teacher = np.asarray(teacher, dtype=np.float64)
    teacher = teacher / np.maximum(teacher.sum(1, keepdims=True), 1e-12)
    onehot = np.eye(teacher.shape[1])[np.asarray(labels, dtype=np.int64)]
    return ((1 - alpha) * onehot + alpha * teacher).astype(np.float32)


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weights making every label weigh the same in the loss (mean weight 1)."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels).astype(np.float64)
    per_label = np.divide(len(labels), len(counts[counts > 0]) * counts, out=np.zeros_like(counts), where=counts > 0)
    return per_label[labels].astype(np.float32)
