"""Where the MNIST CNN's accuracy goes under weight sharing (issue 18): a validation-split study.

    python benchmarks/compression_study.py [--shared ../shared] [--out benchmarks/compression_results]

Trains the cascade CNN on the first 50,000 MNIST images twice (the old benchmark's recipe: Adam at a
constant 1e-3 for 3 epochs; the project's `fit_classifier`: cosine decay and batch-norm refresh, 6
epochs), converts each to int8 and validates on the next 10,000 images (the last 10,000, the test
set of benchmarks/compression.py, are not used). Per bit width (4 / 3 / 2) it reports the
validation loss in points of: scikit-learn k-means with rounded centres (the clustering before the
exact one, kept here as the baseline) and the exact clustering, per channel, with their squared
error; bias correction (500 training images) per channel and per tensor; fine-tuning with tied
weights; and at 4 bits each layer clustered alone. Writes compression_study.json and .md into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compression import classifier_accuracy  # noqa: E402

from tflm_swap import compress  # noqa: E402
from tflm_swap.converters.compress import cluster_tensor, filter_channels  # noqa: E402
from tflm_swap.fileio import write_atomic  # noqa: E402
from tflm_swap.format.model import Model  # noqa: E402

BITS = (4, 3, 2)
CALIBRATION = 500


def kmeans_values(row: np.ndarray, clusters: int) -> np.ndarray:
    """The former clustering: scikit-learn k-means (quantile and k-means++ starts, the better kept)
    on the channel's weighted distinct values, centres rounded to int8, values mapped to the nearest."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    used, counts = np.unique(row, return_counts=True)
    if len(used) <= clusters:
        return row
    points, weights = used.astype(np.float64)[:, None], counts.astype(np.float64)
    spread = np.quantile(row.astype(np.float64), (np.arange(clusters) + 0.5) / clusters)[:, None]
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = [KMeans(n_clusters=clusters, init=init, n_init=1, random_state=0).fit(points, sample_weight=weights)
                for init in (spread, "k-means++")]
    best = min(fits, key=lambda km: km.inertia_)
    centres = np.unique(np.clip(np.rint(best.cluster_centers_[:, 0]), used[0], used[-1]).astype(np.int8))
    nearest = np.abs(used.astype(np.int16)[:, None] - centres.astype(np.int16)[None, :]).argmin(axis=1)
    return centres[nearest][np.searchsorted(used, row)]


def kmeans_compress(tflite: bytes, bits: int) -> bytes:
    model = Model.from_bytes(tflite)
    for b, (channels, inner) in filter_channels(model).items():
        values = np.frombuffer(model.buffers[b], np.int8)
        model.buffers[b] = cluster_tensor(values, channels, inner, 1 << bits, kmeans_values).tobytes()
    return bytes(model.pack())


def squared_error(original: bytes, clustered: bytes) -> int:
    a, b = Model.from_bytes(original), Model.from_bytes(clustered)
    return int(sum(np.sum((np.frombuffer(a.buffers[k], np.int8).astype(np.int64)
                           - np.frombuffer(b.buffers[k], np.int8)) ** 2) for k in filter_channels(a)))


def one_layer(original: bytes, clustered: bytes, buffer: int) -> bytes:
    model = Model.from_bytes(original)
    model.buffers[buffer] = Model.from_bytes(clustered).buffers[buffer]
    return bytes(model.pack())


def layer_names(tflite: bytes) -> dict[int, str]:
    model = Model.from_bytes(tflite)
    names = {}
    for op in range(len(model.operators)):
        t = model.op_inputs(op)[1] if len(model.op_inputs(op)) > 1 else -1
        b = model.constant_buffer(t) if t >= 0 else None
        if b in filter_channels(model):
            names[b] = f"{model.opcode_name(op)} {list(model.tensors[t].shape)}"
    return names


def train(recipe: str, x: np.ndarray, y: np.ndarray):
    import keras

    from tflm_swap.cascade.models import compile_classifier, default_cnn
    from tflm_swap.cascade.training import fit_classifier

    keras.utils.set_random_seed(0)
    cnn = default_cnn(x.shape[1:], 10)
    print(f"training ({recipe})", file=sys.stderr, flush=True)
    if recipe == "old":
        compile_classifier(cnn)
        cnn.fit(x, y, epochs=3, batch_size=128, verbose=0)
    else:
        fit_classifier(cnn, x, y, 6, 128, verbose=0)
        compile_classifier(cnn)  # the loss fine-tuning trains
    return cnn


def study(recipe: str, x_train, y_train, x_val, y_val) -> dict:
    import keras

    from tflm_swap.converters.keras import to_tflite

    cnn = train(recipe, x_train, y_train)
    tflite = to_tflite(cnn, representative_data=x_train[:500], quantization="int8")
    base = classifier_accuracy(tflite, x_val, y_val)

    def loss(data: bytes) -> float:
        return round(base - classifier_accuracy(data, x_val, y_val), 2)

    result = {"recipe": recipe, "int8_val_accuracy": base, "bits": {}}
    for bits in BITS:
        print(f"{recipe}: {bits} bits", file=sys.stderr, flush=True)
        kmeans, exact = kmeans_compress(tflite, bits), compress(tflite, bits)
        calibration = x_train[:CALIBRATION]
        keras.utils.set_random_seed(0)
        row = {"kmeans": loss(kmeans), "exact": loss(exact), "kmeans_sse": squared_error(tflite, kmeans),
               "exact_sse": squared_error(tflite, exact),
               "per_tensor": loss(compress(tflite, bits, per_channel=False)),
               "bias_corrected": loss(compress(tflite, bits, data=calibration)),
               "per_tensor_bias_corrected": loss(compress(tflite, bits, per_channel=False, data=calibration)),
               "fine_tuned": loss(compress(cnn, bits, data=(x_train, y_train)))}
        if bits == 4:
            row["one_layer"] = {name: {"kmeans": loss(one_layer(tflite, kmeans, b)),
                                       "exact": loss(one_layer(tflite, exact, b))}
                                for b, name in layer_names(tflite).items()}
        result["bits"][bits] = row
    return result


def markdown(results: list[dict]) -> str:
    lines = ["| CNN (int8 validation %) | bits | k-means / exact per channel (loss pt) | squared error k-means / exact "
             "| + bias correction | per tensor / + bias correction | fine-tuned |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for bits, row in r["bits"].items():
            lines.append(f"| {r['recipe']} ({r['int8_val_accuracy']:.2f}) | {bits} | {row['kmeans']:.2f} / "
                         f"{row['exact']:.2f} | {row['kmeans_sse']:,} / {row['exact_sse']:,} | "
                         f"{row['bias_corrected']:.2f} | {row['per_tensor']:.2f} / "
                         f"{row['per_tensor_bias_corrected']:.2f} | {row['fine_tuned']:.2f} |")
    lines += ["", "| CNN | layer clustered alone at 4 bits | loss pt k-means / exact |", "|---|---|---|"]
    for r in results:
        for name, row in r["bits"][4]["one_layer"].items():
            lines.append(f"| {r['recipe']} | {name} | {row['kmeans']:.2f} / {row['exact']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "compression_results"))
    args = parser.parse_args()
    from tflm_swap.cascade.data import load_npz

    x, y = load_npz(Path(args.shared) / "datasets" / "mnist.npz")
    x_train, y_train, x_val, y_val = x[:50_000], y[:50_000], x[50_000:60_000], y[50_000:60_000]
    results = [study(recipe, x_train, y_train, x_val, y_val) for recipe in ("old", "fit_classifier")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "compression_study.json", json.dumps(results, indent=1).encode())
    table = markdown(results)
    write_atomic(out / "compression_study.md", table.encode())
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
