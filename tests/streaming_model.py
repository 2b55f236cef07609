"""A small streaming (stateful) Keras model for the TFLM tests, as wake-word detectors are built.

Each invocation takes one frame of features; the model keeps the last `FRAMES` frames in a resource
variable (a ring buffer: drop the oldest, append the new one, assign it back) and runs a Keras
Conv1D/Dense network on that window. Converted to int8 with the variable quantised too, TFLite
writes what TFLM's streaming models use: CALL_ONCE running an initialiser subgraph, VAR_HANDLE,
READ_VARIABLE and ASSIGN_VARIABLE. The network's weights are frozen to constants first (they are the
weights tflm_swap streams); only the ring buffer stays a variable.
"""

from __future__ import annotations

import os

import numpy as np

FRAMES, FEATURES, CLASSES = 8, 16, 4


def streaming_tflite(seed: int = 0) -> bytes:
    """The int8 `.tflite` of the streaming model (random weights; no download, no training)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    tf.keras.utils.set_random_seed(seed)
    net = tf.keras.Sequential([
        tf.keras.layers.Input((FRAMES, FEATURES)),
        tf.keras.layers.Conv1D(64, 3, activation="relu"),
        tf.keras.layers.Conv1D(64, 3, activation="relu"),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(64, activation="relu"),
        tf.keras.layers.Dense(CLASSES),
    ])
    window = tf.TensorSpec([1, FRAMES, FEATURES], tf.float32)
    frozen = convert_variables_to_constants_v2(tf.function(net).get_concrete_function(window))

    class Streaming(tf.Module):
        def __init__(self):
            super().__init__()
            self.ring = tf.Variable(tf.zeros([1, FRAMES, FEATURES]), trainable=False)

        @tf.function(input_signature=[tf.TensorSpec([1, 1, FEATURES], tf.float32)])
        def __call__(self, frame):
            ring = tf.concat([self.ring[:, 1:, :], frame], axis=1)
            self.ring.assign(ring)
            return frozen(ring)

    module = Streaming()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.__call__.get_concrete_function()], module)
    converter.experimental_enable_resource_variables = True
    converter._experimental_variable_quantization = True  # the ring buffer in int8, as microWakeWord does
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(seed)
    converter.representative_dataset = lambda: ([rng.normal(size=(1, 1, FEATURES)).astype(np.float32)]
                                                for _ in range(64))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def frames(count: int, seed: int = 1) -> list[np.ndarray]:
    """`count` random int8 input frames."""
    rng = np.random.default_rng(seed)
    return [rng.integers(-128, 128, size=(1, 1, FEATURES), dtype=np.int8) for _ in range(count)]
