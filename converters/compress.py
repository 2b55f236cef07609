"""Weight sharing: optimal 1-D clustering of the int8 filters of CONV_2D, DEPTHWISE_CONV_2D and
FULLY_CONNECTED, per output channel or per tensor (`compress`).

The result is an ordinary int8 `.tflite` with the same quantization parameters, whose filters take
at most 2**bits distinct values per channel (or per tensor): the reference every runtime must
reproduce bit for bit. `segment_model(..., encode=True)` then stores those filters palette-encoded
(`tflm_swap.format.palette`) wherever that is smaller.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from tflm_swap.errors import TflmSwapError
from tflm_swap.format.manifest import MANIFEST_NAME
from tflm_swap.format.model import Model
from tflm_swap.format.schema import text, tfl

# operator -> (filter input slot, its output-channel axis when the filter is quantized per tensor)
FILTER_OPS: dict[str, tuple[int, int]] = {
    "CONV_2D": (1, 0),
    "DEPTHWISE_CONV_2D": (1, 3),
    "FULLY_CONNECTED": (1, 0),
}


def filter_channels(model: Model) -> dict[int, tuple[int, int]]:
    """Constant int8 filter buffers of the compressible operators -> (channels, inner): element i of
    the flattened filter belongs to channel (i // inner) % channels (the quantized dimension, or
    the operator's output-channel axis for a per-tensor filter)."""
    found: dict[int, tuple[int, int]] = {}
    for op in range(len(model.operators)):
        slot_axis = FILTER_OPS.get(model.opcode_name(op))
        inputs = model.op_inputs(op)
        if slot_axis is None or len(inputs) <= slot_axis[0]:
            continue
        t = inputs[slot_axis[0]]
        b = model.constant_buffer(t)
        tensor = model.tensors[t]
        if b is None or tensor.type != tfl.TensorType.INT8 or tensor.shape is None or len(tensor.shape) == 0:
            continue
        q = tensor.quantization
        axis = int(q.quantizedDimension) if q is not None and q.scale is not None and len(q.scale) > 1 \
            else slot_axis[1]
        shape = [int(d) for d in tensor.shape]
        if axis >= len(shape) or int(np.prod(shape)) != model.buffer_size(b):
            continue
        found[b] = (shape[axis], int(np.prod(shape[axis + 1:], dtype=np.int64)))
    return found


def encoded_filters(model: Model, buffers: list[int] | None = None) -> dict[int, bytes]:
    """Palette encodings (`tflm_swap.format.palette`) of the int8 filters (those among `buffers`,
    default all) wherever they are smaller than the raw bytes. A buffer read from upstream TFLM's
    DECODE layout keeps its tables, bit width and bitstring (`Model.transcoded`) unless our own
    encoding is smaller."""
    from tflm_swap.format import palette

    encoded = {}
    for b, (channels, inner) in filter_channels(model).items():
        if buffers is None or b in buffers:
            blob = palette.encode(np.frombuffer(model.buffers[b], dtype=np.int8), channels, inner)
            kept = model.transcoded.get(b)
            if kept is not None and len(kept) < len(model.buffers[b]) and (blob is None or len(kept) <= len(blob)):
                blob = kept
            if blob is not None:
                encoded[b] = blob
    return encoded


def compress(model: Model | bytes | Any, bits: int = 4, per_channel: bool = True, progress: bool = False,
             data: tuple[np.ndarray, np.ndarray] | np.ndarray | None = None) -> bytes:
    """The `.tflite` bytes of `model` with every int8 filter of CONV_2D / DEPTHWISE_CONV_2D /
    FULLY_CONNECTED clustered to at most 2**bits values per output channel (`per_channel`) or per
    tensor; values of a channel that already has that few stay as they are. Quantization
    parameters are kept. A segmented model's manifest is dropped (segment the result again).

    `data` = (x, y) with a compiled Keras `model`: the model is first fine-tuned with its kernels
    tied to their clusters (`finetune.finetune_clustered`), then converted to int8 with `x` as
    representative data, then clustered as above (which then changes next to nothing). `data` = x
    (or (x, y)) with a `.tflite`: calibration inputs for a bias correction after the clustering
    (`bias_correction.correct_biases`)."""
    if not 1 <= bits <= 7:
        raise TflmSwapError(f"compression bit width {bits} must be in 1..7 (8 bits is the int8 model itself)")
    calibration = None
    if _is_tflite(model):
        calibration = data[0] if isinstance(data, tuple) else data
    elif data is not None:
        model = _finetuned_int8(model, data, bits, per_channel, progress)
    else:
        raise TflmSwapError(f"cannot compress a {type(model).__name__}: pass .tflite bytes, a Model, or a "
                            "compiled Keras model with fine-tuning data=(x, y)")
    if not isinstance(model, Model):
        model = Model.from_bytes(bytes(model))
    from .decode_layout import expand

    model = expand(model)  # upstream TFLM's DECODE layout: the values it decodes to
    buffers = list(model.buffers)
    filters = filter_channels(model)
    items = filters.items()
    if progress:
        from tqdm import tqdm
        items = tqdm(items, desc=f"clustering {bits}-bit", unit="tensor", file=sys.stderr)
    for b, (channels, inner) in items:
        values = np.frombuffer(buffers[b], dtype=np.int8)
        buffers[b] = cluster_tensor(values, channels if per_channel else 1,
                                    inner if per_channel else values.size, 1 << bits).tobytes()
    if calibration is not None:
        from .bias_correction import correct_biases

        buffers = correct_biases(model, buffers, calibration)
    return bytes(without_manifest(model, buffers).pack())


def _is_tflite(model: Any) -> bool:
    return isinstance(model, (Model, bytes, bytearray, memoryview))


def _finetuned_int8(model: Any, data: tuple[np.ndarray, np.ndarray], bits: int, per_channel: bool,
                    progress: bool) -> bytes:
    from .finetune import finetune_clustered
    from .keras import to_tflite

    tuned = finetune_clustered(model, data, bits, per_channel, progress=progress)
    return to_tflite(tuned, representative_data=np.asarray(data[0]), quantization="int8")


def cluster_tensor(values: np.ndarray, channels: int, inner: int, clusters: int,
                   cluster: Callable[[np.ndarray, int], np.ndarray] | None = None) -> np.ndarray:
    """`values` (int8, flattened) with each channel's values replaced by their nearest of at most
    `clusters` int8 centres (`cluster`, default `cluster_values`, applied to each channel)."""
    cluster = cluster or cluster_values
    grouped = values.reshape(-1, channels, inner).transpose(1, 0, 2).reshape(channels, -1)
    out = np.empty_like(grouped)
    for c, row in enumerate(grouped):
        out[c] = cluster(row, clusters)
    return out.reshape(channels, -1, inner).transpose(1, 0, 2).reshape(-1)


def cluster_values(row: np.ndarray, clusters: int) -> np.ndarray:
    """One channel: its values mapped to the at most `clusters` int8 centres of least squared
    error, found exactly (`optimal_runs`) on the channel's histogram of at most 256 distinct values."""
    used, counts = np.unique(row, return_counts=True)
    if len(used) <= clusters:
        return row
    values, weights = used.astype(np.float64), counts.astype(np.float64)
    bounds = optimal_runs(values, weights, clusters)
    centres = np.unique([np.rint(np.average(values[a:b], weights=weights[a:b]))
                         for a, b in zip(bounds[:-1], bounds[1:])]).astype(np.int16)
    nearest = np.abs(used.astype(np.int16)[:, None] - centres[None, :]).argmin(axis=1)
    return centres.astype(np.int8)[nearest][np.searchsorted(used, row)]


def optimal_runs(values: np.ndarray, weights: np.ndarray, clusters: int) -> list[int]:
    """Bounds [0, ..., len(values)] of the `clusters` runs of the sorted distinct `values` (with
    `weights` = counts) whose integer centres give the least weighted squared error: in one
    dimension an optimal clustering is a partition into contiguous runs, and a run's best integer
    centre is its rounded mean, so dynamic programming over run ends is exact (k-means is not).
    O(clusters * n^2) for n <= 256 values."""
    n = len(values)
    cost = _run_costs(values, weights)
    best, back = cost[0].copy(), []  # best[j]: least error of values[:j] in the runs so far
    for _ in range(clusters - 1):
        total = best[:, None] + cost  # [i, j]: values[:i] as before, values[i:j] one more run
        start = total.argmin(axis=0)
        best = total[start, np.arange(n + 1)]
        back.append(start)
    bounds = [n]
    for start in reversed(back):
        bounds.append(int(start[bounds[-1]]))
    return [0] + bounds[::-1]  # runs are never empty (inf cost), so the first starts after 0


def _run_costs(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[i, j]: the weighted squared error of values[i:j] around their rounded mean (inf unless i < j)."""
    sums = [np.concatenate([[0.0], np.cumsum(a)]) for a in (weights, weights * values, weights * values**2)]
    w, s, q = (a[None, :] - a[:, None] for a in sums)  # [i, j] = sum over values[i:j]
    with np.errstate(divide="ignore", invalid="ignore"):
        centre = np.rint(s / w)
        cost = q - 2 * centre * s + centre**2 * w
    cost[np.tril_indices(len(values) + 1)] = np.inf
    return cost


def without_manifest(model: Model, buffers: list[bytes]) -> Model:
    """A copy of `model` holding `buffers`, without a tflm_swap manifest (which would be stale)."""
    fb = copy.copy(model.fb)
    kept = [m for m in fb.metadata or [] if text(m.name) != MANIFEST_NAME]
    dropped = [int(m.buffer) for m in fb.metadata or [] if text(m.name) == MANIFEST_NAME]
    fb.metadata = kept
    buffers = [b"" if i in dropped else data for i, data in enumerate(buffers)]
    return Model(fb, buffers, b"", model.source)
