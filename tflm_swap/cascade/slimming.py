"""Network slimming: channel selection by batch-norm scale factors, and narrower copies of a model.

A model is a linear chain of layers (Sequential, or functional with each layer feeding the next).
A Conv2D / Dense layer directly followed by BatchNormalization is *prunable*: its output channels
are kept or dropped by the |gamma| of that batch norm (Liu et al., "Learning Efficient Convolutional
Networks through Network Slimming", 2017). `slim_copy` builds the narrower architecture and copies
the kept weights: conv/dense kernels sliced on input and output channels, batch-norm
gamma/beta/mean/variance sliced, a Flatten's inputs expanded over the spatial positions; the last
Dense (the head) is sliced to the requested classes, in their order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedModelError

PASS_THROUGH = ("ReLU", "Activation", "Dropout", "SpatialDropout2D", "MaxPooling2D", "AveragePooling2D",
                "GlobalAveragePooling2D", "GlobalMaxPooling2D", "ZeroPadding2D", "LeakyReLU", "Rescaling")


@dataclass
class _Step:
    layer: object
    keep_in: np.ndarray  # indices of the input's last axis kept
    keep_out: np.ndarray  # indices of the output's last axis kept


def chain(model) -> list:
    """The model's layers in order (without the input layer); raises unless they form a linear chain."""
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    previous = model.inputs[0] if model.inputs else None
    for layer in layers:
        inbound = layer.input
        if isinstance(inbound, (list, tuple)) or (previous is not None and inbound is not previous):
            raise UnsupportedModelError(
                f"layer {layer.name!r} does not take the previous layer's output: slimming needs a linear "
                "chain of layers (Sequential or a functional model without branches)")
        previous = layer.output
    return layers


def prunable_layers(model) -> dict[str, str]:
    """{conv/dense layer name: name of the BatchNormalization right after it} (the head excluded)."""
    layers = chain(model)
    pairs = {}
    for a, b in zip(layers[:-1], layers[1:]):
        if type(a).__name__ in ("Conv2D", "Dense") and type(b).__name__ == "BatchNormalization":
            pairs[a.name] = b.name
    return pairs


def bn_scales(model) -> dict[str, np.ndarray]:
    """|gamma| of the batch norm after every prunable layer, keyed by the prunable layer's name."""
    return {conv: np.abs(np.asarray(model.get_layer(bn).gamma)) for conv, bn in prunable_layers(model).items()}


def _plan(model, keep: dict[str, np.ndarray], head: list[int]) -> list[_Step]:
    layers = chain(model)
    kept = np.arange(model.inputs[0].shape[-1])
    steps = []
    for i, layer in enumerate(layers):
        kind = type(layer).__name__
        last = i == len(layers) - 1
        if kind in ("Conv2D", "Dense"):
            if kind == "Conv2D" and layer.groups != 1:
                raise UnsupportedModelError(f"grouped convolution {layer.name!r} is not supported by slimming")
            width = layer.kernel.shape[-1]
            out = np.asarray(head) if last else np.asarray(keep.get(layer.name, np.arange(width)))
        elif kind == "Flatten":
            shape = layer.input.shape
            positions, channels = int(np.prod(shape[1:-1])), shape[-1]
            out = (np.arange(positions)[:, None] * channels + kept[None, :]).reshape(-1)
        elif kind in ("BatchNormalization", "DepthwiseConv2D") or kind in PASS_THROUGH:
            if kind == "DepthwiseConv2D" and layer.depth_multiplier != 1:
                raise UnsupportedModelError(f"depthwise layer {layer.name!r}: only depth_multiplier=1 is supported")
            out = kept
        else:
            raise UnsupportedModelError(
                f"layer {layer.name!r} ({kind}) is not supported by slimming; supported: Conv2D, Dense, "
                f"DepthwiseConv2D, BatchNormalization, Flatten, {', '.join(PASS_THROUGH)}")
        if last and kind != "Dense":
            raise UnsupportedModelError(f"the last layer must be the Dense head, not {kind} ({layer.name!r})")
        steps.append(_Step(layer, kept, np.asarray(out)))
        kept = np.asarray(out)
    return steps


def slim_copy(model, keep: dict[str, np.ndarray] | None = None, head: list[int] | None = None,
              gamma_l1: float = 0.0):
    """A new Keras model with only the kept channels (all when `keep` is None) and head classes `head`.

    `keep` maps a prunable layer's name to the sorted channel indices to keep. `gamma_l1` > 0 puts an
    L1 penalty on every batch-norm gamma (the sparsity phase of network slimming).
    """
    import keras

    head = list(range(chain(model)[-1].kernel.shape[-1])) if head is None else list(head)
    x = inp = keras.Input(model.inputs[0].shape[1:])
    copies = []
    for step in _plan(model, keep or {}, head):
        config = step.layer.get_config()
        kind = type(step.layer).__name__
        if kind == "Conv2D":
            config["filters"] = len(step.keep_out)
        elif kind == "Dense":
            config["units"] = len(step.keep_out)
        elif kind == "BatchNormalization":
            config["gamma_regularizer"] = keras.regularizers.L1(gamma_l1) if gamma_l1 > 0 else None
        new = type(step.layer).from_config(config)
        x = new(x)
        copies.append((new, step))
    slim = keras.Model(inp, x, name=f"{model.name}_slim")
    for new, step in copies:
        weights = _sliced_weights(step)
        if weights:
            new.set_weights(weights)
    return slim


def _sliced_weights(step: _Step) -> list[np.ndarray]:
    layer, ki, ko = step.layer, step.keep_in, step.keep_out
    kind = type(layer).__name__
    weights = [np.asarray(w) for w in layer.get_weights()]
    if kind == "Conv2D":
        return [weights[0][:, :, ki][..., ko]] + [b[ko] for b in weights[1:]]
    if kind == "Dense":
        return [weights[0][ki][:, ko]] + [b[ko] for b in weights[1:]]
    if kind == "DepthwiseConv2D":
        return [weights[0][:, :, ki]] + [b[ki] for b in weights[1:]]
    if kind == "BatchNormalization":
        return [w[ki] for w in weights]
    return weights


def count_cost(model, keep: dict[str, np.ndarray] | None = None, head: list[int] | None = None) -> tuple[int, int]:
    """(weights, MACs) of the slimmed copy, without building it: kernel elements plus one bias per
    output channel (batch norm folds into it), and multiply-accumulates of conv/dense layers."""
    head = list(range(chain(model)[-1].kernel.shape[-1])) if head is None else list(head)
    weights = macs = 0
    for step in _plan(model, keep or {}, head):
        kind = type(step.layer).__name__
        if kind not in ("Conv2D", "Dense", "DepthwiseConv2D"):
            continue
        n_in, n_out = len(step.keep_in), len(step.keep_out)
        positions = int(np.prod(step.layer.output.shape[1:-1])) if kind != "Dense" else 1
        if kind == "DepthwiseConv2D":
            kh, kw = step.layer.kernel_size
            weights += kh * kw * n_in + n_in
            macs += positions * kh * kw * n_in
        else:
            per_out = int(np.prod(step.layer.kernel.shape[:-2])) * n_in if kind == "Conv2D" else n_in
            weights += per_out * n_out + n_out
            macs += positions * per_out * n_out
    return weights, macs


def select_channels(model, target_weights: int, head: list[int] | None = None, min_channels: int = 4,
                    threshold: float | None = None) -> tuple[dict[str, np.ndarray], float]:
    """Channels to keep and the |gamma| threshold used.

    With `threshold`, channels with |gamma| below it are pruned. Otherwise the threshold is the
    smallest one (a global threshold over all prunable layers, as in network slimming) whose slimmed
    model has at most `target_weights` weights. Each layer keeps at least `min_channels` channels
    (its largest-|gamma| ones).
    """
    scales = bn_scales(model)

    def keep_at(t: float) -> dict[str, np.ndarray]:
        out = {}
        for name, s in scales.items():
            floor = np.sort(np.argsort(-s, kind="stable")[: min(min_channels, len(s))])
            out[name] = np.union1d(np.flatnonzero(s >= t), floor)
        return out

    if threshold is not None:
        return keep_at(threshold), float(threshold)
    candidates = np.unique(np.concatenate([s for s in scales.values()] + [np.zeros(1)]))
    lo, hi = 0, len(candidates) - 1  # find the smallest threshold meeting the target
    if count_cost(model, keep_at(candidates[hi] + 1.0), head)[0] > target_weights:
        t = float(candidates[hi]) + 1.0  # even the minimum widths exceed the target: keep the floor
        return keep_at(t), t
    while lo < hi:
        mid = (lo + hi) // 2
        if count_cost(model, keep_at(candidates[mid]), head)[0] <= target_weights:
            hi = mid
        else:
            lo = mid + 1
    return keep_at(candidates[lo]), float(candidates[lo])
