"""Default Keras architectures: an MCU-style CNN with batch norm (monolithic model) and a tiny router.

Both work for any HxWxC image input: pooling is applied only while the feature map is at least 4
pixels wide, and global average pooling makes the head independent of the resolution.
"""

from __future__ import annotations

from .training import compile_classifier  # noqa: F401  (re-exported: the recipe lives in training.py)

CNN_FILTERS = (16, 32, 64, 64)
ROUTER_FILTERS = (8, 16, 24)
BN_MOMENTUM = 0.9  # moving statistics settle within a few hundred steps (small datasets)


def default_cnn(input_shape: tuple[int, ...], n_classes: int, filters: tuple[int, ...] = CNN_FILTERS,
                dense_units: int = 64):
    """Conv(3x3, no bias) -> BN -> ReLU blocks, GAP, Dense+BN, head. A block is followed by 2x max
    pooling while the map is wider than 8 px, and after every second block while it is >= 4 px (so
    the receptive field covers most of the image before global average pooling).

    Every prunable layer (conv or hidden dense) is followed by BatchNormalization, whose scale
    factors drive network slimming; the head `Dense(n_classes)` outputs logits.
    """
    import keras
    from keras import layers

    x = inp = keras.Input(input_shape)
    size = min(input_shape[0], input_shape[1])
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        if size > 8 or (i % 2 == 1 and size >= 4):  # large inputs: pool early, so GAP sees whole shapes
            x = layers.MaxPooling2D(name=f"pool{i}")(x)
            size //= 2
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(dense_units, use_bias=False, name="fc")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="bn_fc")(x)
    x = layers.ReLU(name="relu_fc")(x)
    out = layers.Dense(n_classes, name="head")(x)
    return keras.Model(inp, out, name="cnn")


def default_router(input_shape: tuple[int, ...], n_groups: int, width: float = 1.0):
    """A tiny CNN over a downsampled input (2x average pooling when the image is >= 16 px wide).

    `width` scales the channel counts; the builder lowers it until the router is within its share of
    the monolithic model's weights and MACs.
    """
    import keras
    from keras import layers

    x = inp = keras.Input(input_shape)
    size = min(input_shape[0], input_shape[1])
    if size >= 16:
        x = layers.AveragePooling2D(2, name="downsample")(x)
        size //= 2
    for i, f in enumerate(ROUTER_FILTERS):
        x = layers.Conv2D(max(2, round(f * width)), 3, padding="same", use_bias=False, name=f"rconv{i}")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"rbn{i}")(x)
        x = layers.ReLU(name=f"rrelu{i}")(x)
        if i == 0 and size >= 4:
            x = layers.MaxPooling2D(name="rpool")(x)
            size //= 2
    x = layers.GlobalAveragePooling2D(name="rgap")(x)
    out = layers.Dense(n_groups, name="rhead")(x)
    return keras.Model(inp, out, name="router")


def penultimate(model):
    """A Keras model mapping the input to the input of the last (head) layer."""
    import keras

    return keras.Model(model.inputs, model.layers[-1].input)
