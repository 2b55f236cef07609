"""Fine-tuning a Keras model with its weights tied to clusters (`finetune_clustered`), before it is
converted to int8 and compressed (`compress.compress(..., data=)`, `convert(..., compress_bits=, data=)`).

Every kernel of a Conv2D, DepthwiseConv2D and Dense layer is clustered per output channel (or per
tensor) into at most 2**bits values, with the same exact clustering as the int8 filters
(`compress.cluster_values`) on the kernel's symmetric int8 grid; the assignments then stay fixed
and only the cluster values train: after every optimizer step each kernel is projected back onto
its clusters (each weight becomes the mean of its cluster), which is gradient descent on the shared
values. Batch normalization layers are frozen (inference mode), so that folding them into the
int8 filters scales whole output channels and keeps each channel's number of values.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from tflm_swap.errors import TflmSwapError

from .compress import cluster_values

FINETUNE_EPOCHS = 2
FINETUNE_LEARNING_RATE = 3e-4
FINETUNE_BATCH = 128
KERNEL_LAYERS = ("Conv2D", "DepthwiseConv2D", "Dense")


def finetune_clustered(model: Any, data: tuple[np.ndarray, np.ndarray], bits: int, per_channel: bool = True,
                       epochs: int = FINETUNE_EPOCHS, learning_rate: float = FINETUNE_LEARNING_RATE,
                       progress: bool = False) -> Any:
    """A copy of the compiled Keras `model`, fine-tuned on `data` = (x, y) with the loss it was
    compiled with, whose kernels hold at most 2**bits values per output channel (`per_channel`)
    or per tensor. `model` itself is left as it is."""
    import keras

    if getattr(model, "loss", None) is None:
        raise TflmSwapError("fine-tuning needs a compiled Keras model (its loss is the one trained)")
    x, y = _check_data(data)
    tuned = keras.models.clone_model(model)
    tuned.set_weights(model.get_weights())
    for layer in tuned.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    ties = [KernelTies(layer, bits, per_channel) for layer in tuned.layers
            if type(layer).__name__ in KERNEL_LAYERS]
    if not ties:
        raise TflmSwapError("the Keras model has no Conv2D, DepthwiseConv2D or Dense kernel to compress")
    steps = epochs * -(-len(x) // FINETUNE_BATCH)
    rate = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    tuned.compile(optimizer=keras.optimizers.Adam(rate), loss=model.loss)
    for tie in ties:
        tie.snap()
    snap = keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_, **__: [tie.snap() for tie in ties])
    if progress:
        print(f"fine-tuning {len(ties)} clustered kernels at {bits} bits ({epochs} epochs)", file=sys.stderr)
    tuned.fit(x, y, epochs=epochs, batch_size=FINETUNE_BATCH, callbacks=[snap], verbose=2 if progress else 0)
    return tuned


class KernelTies:
    """One layer's kernel with each weight assigned to a cluster of its output channel."""

    def __init__(self, layer: Any, bits: int, per_channel: bool):
        import tensorflow as tf

        self.variable = layer.kernel
        kernel = np.asarray(self.variable.numpy(), dtype=np.float64)
        # output channels are the last axis (a depthwise kernel's last two: input channel x multiplier)
        channels = kernel.shape[-2] * kernel.shape[-1] if type(layer).__name__ == "DepthwiseConv2D" \
            else kernel.shape[-1]
        by_channel = kernel.reshape(-1, channels).T if per_channel else kernel.reshape(1, -1)
        labels = np.stack([cluster_labels(row, 1 << bits) for row in by_channel])
        ids = labels + (1 << bits) * np.arange(len(labels))[:, None]  # unique per (channel, cluster)
        ids = ids.T.reshape(kernel.shape) if per_channel else ids.reshape(kernel.shape)
        self.ids = tf.constant(ids.reshape(-1), dtype=tf.int32)
        self.segments = int(ids.max()) + 1

    def snap(self) -> None:
        """Every weight set to the mean of its cluster."""
        import tensorflow as tf

        flat = tf.reshape(self.variable.value, [-1])
        means = tf.math.unsorted_segment_mean(flat, self.ids, self.segments)
        self.variable.assign(tf.reshape(tf.gather(means, self.ids), self.variable.shape))


def cluster_labels(row: np.ndarray, clusters: int) -> np.ndarray:
    """Cluster index of each float weight of `row`: the exact clustering of its values on a
    symmetric int8 grid (the grid TFLite quantizes them on, up to folded scales)."""
    top = float(np.max(np.abs(row)))
    grid = np.rint(row * (127 / top)).astype(np.int8) if top > 0 else np.zeros(row.shape, np.int8)
    _, labels = np.unique(cluster_values(grid, clusters), return_inverse=True)
    return labels.reshape(-1)


def _check_data(data: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TflmSwapError("fine-tuning data must be a pair (x, y) of inputs and targets")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if x.ndim == 0 or y.ndim == 0 or len(x) == 0 or len(x) != len(y):
        raise TflmSwapError(f"fine-tuning data: {x.shape} inputs and {y.shape} targets (need as many, at least one)")
    if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
        raise TflmSwapError("fine-tuning inputs must be finite numbers")
    return x, y
