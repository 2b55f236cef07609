"""Compressed segments (issue 18): weight sharing by optimal clustering, palette-encoded in flash, decoded on load.

    python benchmarks/compression.py [--shared ../shared] [--out benchmarks/compression_results]
                                     [--inputs 200] [--mnist-epochs 6] [--no-mnist]

Per MLPerf Tiny int8 model in ../shared and per setting (4-bit per channel, the issue's target;
4-bit per tensor; 3- and 2-bit per channel):
- flash bytes: the segmented file's image (LiteRT, SwapInterpreter: every segment read once per
  inference) and the TFLM image's bytes read per inference (load operators), before / after, ratio;
- how many filter entries were stored per-channel, per-tensor or raw (where no table pays);
- host decode speed of the C decoder (delegates/micro/tests/bench_palette.c, gcc -O2, one core),
  MB/s of decoded output over all of the model's encoded entries;
- flash time per inference at 10, 40 and 80 MB/s: bytes / bandwidth before; after, stored bytes /
  bandwidth + decoded bytes / decode speed (decoding not overlapped with reading: an upper bound);
- output agreement with the uncompressed model on RANDOM inputs (no data set for these models here):
  top-1 agreement and SNR (dB) of the dequantised outputs, LiteRT reference kernels. For ad01 (an
  autoencoder) top-1 means nothing; its SNR is the figure.
MNIST: the default cascade CNN trained with the project's recipe (`fit_classifier`: cosine decay,
batch-norm refresh) on ../shared/datasets/mnist.npz (first 60,000 train, last 10,000 test), int8; test
accuracy before / after each setting: data-free, with bias correction (500 training images), and
fine-tuned with weights tied to their clusters (`finetune_clustered`) on the 60,000 training images.
Writes compression.json and compression.md into --out; exits 1 when a 4-bit per-channel target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tflm_swap import compress, convert  # noqa: E402
from tflm_swap.converters.compress import encoded_filters, filter_channels  # noqa: E402
from tflm_swap.converters.segment import segment_model  # noqa: E402
from tflm_swap.fileio import write_atomic  # noqa: E402
from tflm_swap.format import palette  # noqa: E402
from tflm_swap.format.manifest import read_manifest  # noqa: E402
from tflm_swap.format.model import Model  # noqa: E402
from tflm_swap.interpreters import litert_interpreter, random_inputs, run_litert  # noqa: E402
from tflm_swap.micro import rewrite_for_tflm  # noqa: E402

MODELS = ["ad01_int8", "kws_ref_model", "pretrainedResnet_quant", "vww_96_int8"]
SETTINGS = [(4, True), (4, False), (3, True), (2, True)]  # (bits, per channel)
BANDWIDTHS = (10e6, 40e6, 80e6)
TARGET_RATIO = 1.9
TARGET_DECODE = 500e6
TARGET_MNIST_LOSS = 0.3  # points


def setting_name(bits: int, per_channel: bool) -> str:
    return f"{bits}-bit {'per-channel' if per_channel else 'per-tensor'}"


def build_decoder(work: Path) -> Path:
    micro, common = ROOT / "delegates" / "micro", ROOT / "delegates" / "common"
    binary = work / "bench_palette"
    subprocess.run(["gcc", "-std=c99", "-O2", f"-I{micro}", f"-I{common}", str(micro / "tests" / "bench_palette.c"),
                    str(micro / "tswap_micro.c"), str(common / "tswap_crc32.c"), "-o", str(binary)], check=True)
    return binary


def decode_speed(binary: Path, blobs: list[bytes], work: Path) -> float:
    """Decoded bytes per second of the C decoder over all `blobs` (fastest of 5 rounds each)."""
    total_bytes, total_s = 0, 0.0
    for blob in blobs:
        entry = work / "entry.bin"
        entry.write_bytes(blob)
        count = palette.read_header(blob, "bench").count
        repeats = max(3, 20_000_000 // count)
        out = subprocess.run([str(binary), str(entry), str(repeats)], check=True, capture_output=True, text=True)
        n, seconds = out.stdout.split()
        total_bytes, total_s = total_bytes + int(n), total_s + float(seconds)
    return total_bytes / total_s


def agreement(original: bytes, compressed: bytes, n: int) -> dict:
    """Top-1 agreement and SNR of dequantised outputs on `n` random inputs (reference kernels)."""
    a, b = litert_interpreter(original, reference_kernels=True), litert_interpreter(compressed, reference_kernels=True)
    a.allocate_tensors()
    b.allocate_tensors()
    rng = np.random.default_rng(0)
    detail = a.get_output_details()[0]
    scale, zero = detail["quantization"]
    same, signal, noise = 0, 0.0, 0.0
    for _ in range(n):
        x = random_inputs(a.get_input_details(), rng)
        ya = (run_litert(a, x)[0].astype(np.float64) - zero) * (scale or 1.0)
        yb = (run_litert(b, x)[0].astype(np.float64) - zero) * (scale or 1.0)
        same += int(np.argmax(ya) == np.argmax(yb))
        signal, noise = signal + float(np.sum(ya**2)), noise + float(np.sum((ya - yb) ** 2))
    snr = float("inf") if noise == 0 else 10 * np.log10(signal / noise)
    return {"top1_agreement": same / n, "snr_db": snr}


def entry_kinds(blobs: dict[int, bytes], model: Model) -> dict[str, int]:
    kinds = {"per_channel": 0, "per_tensor": 0, "raw": 0}
    for b, (channels, _) in filter_channels(model).items():
        if b not in blobs:
            kinds["raw"] += 1
        else:
            shared = palette.read_header(blobs[b], "x").channels == 1 and channels > 1
            kinds["per_tensor" if shared else "per_channel"] += 1
    return kinds


def run_model(path: Path, binary: Path, work: Path, n_inputs: int) -> list[dict]:
    original = path.read_bytes()
    raw_file = convert(original)
    raw_tflm = rewrite_for_tflm(original)
    rows = []
    for bits, per_channel in SETTINGS:
        print(f"  {setting_name(bits, per_channel)}", file=sys.stderr, flush=True)
        clustered = compress(original, bits, per_channel, progress=True)
        data = segment_model(Model.from_bytes(clustered), encode=True)
        manifest = read_manifest(data)
        micro = rewrite_for_tflm(clustered, encode=True)
        model = Model.from_bytes(clustered)
        blobs = encoded_filters(model)
        speed = decode_speed(binary, list(blobs.values()), work) if blobs else float("nan")
        decoded = sum(len(model.buffers[b]) for b in blobs)
        before, after = raw_tflm.flash_bytes_per_inference, micro.flash_bytes_per_inference
        row = {
            "model": path.stem, "setting": setting_name(bits, per_channel), "bits": bits, "per_channel": per_channel,
            "file_image_before": raw_file.manifest.external_bytes, "file_image_after": manifest.external_bytes,
            "file_ratio": raw_file.manifest.external_bytes / manifest.external_bytes,
            "tflm_bytes_per_inference_before": before, "tflm_bytes_per_inference_after": after,
            "tflm_ratio": before / after, "file_size_before": len(raw_file.data), "file_size_after": len(data),
            "entries": entry_kinds(blobs, model), "decode_mb_s": speed / 1e6, "decoded_bytes": decoded,
            "flash_ms": {f"{bw / 1e6:g}MB/s": [1e3 * before / bw, 1e3 * (after / bw + decoded / speed)]
                         for bw in BANDWIDTHS},
            **agreement(original, clustered, n_inputs),
        }
        rows.append(row)
    return rows


def classifier_accuracy(data: bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy (%) of an int8 classifier on float images `x` (one batched LiteRT invoke)."""
    it = litert_interpreter(data)
    d_in, d_out = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(d_in["index"], [len(x), *x.shape[1:]])
    it.allocate_tensors()
    s, z = d_in["quantization"]
    it.set_tensor(d_in["index"], np.clip(np.round(x / s + z), -128, 127).astype(np.int8))
    it.invoke()
    return 100.0 * float(np.mean(np.argmax(it.get_tensor(d_out["index"]), axis=1) == y))


def mnist_accuracy(mnist: Path, epochs: int) -> list[dict]:
    """Test accuracy of the int8 MNIST CNN before and after each setting: data-free, with bias
    correction (500 training images as calibration), and fine-tuned with tied weights."""
    import keras

    from tflm_swap.cascade.data import load_npz, split_by_order
    from tflm_swap.cascade.models import default_cnn
    from tflm_swap.cascade.training import fit_classifier
    from tflm_swap.converters.finetune import FINETUNE_EPOCHS, finetune_clustered
    from tflm_swap.converters.keras import to_tflite

    x, y = load_npz(mnist)
    x_train, y_train, x_test, y_test = split_by_order(x, y, 10_000)
    keras.utils.set_random_seed(0)
    cnn = default_cnn(x_train.shape[1:], 10)
    print(f"MNIST: training the CNN ({epochs} epochs, cosine decay, batch-norm refresh)", file=sys.stderr, flush=True)
    fit_classifier(cnn, x_train, y_train, epochs, 128, verbose=0)
    tflite = to_tflite(cnn, representative_data=x_train[:500], quantization="int8", int8_io=True)

    def accuracy(data: bytes) -> float:
        return classifier_accuracy(data, x_test, y_test)

    base = accuracy(tflite)
    rows = [{"setting": "int8 (uncompressed)", "accuracy": base, "loss_pt": 0.0}]
    for bits, per_channel in SETTINGS:
        name = setting_name(bits, per_channel)
        print(f"MNIST {name}: data-free, bias-corrected, fine-tuned", file=sys.stderr, flush=True)
        row = {"setting": name, "accuracy": accuracy(compress(tflite, bits, per_channel)),
               "bias_corrected": accuracy(compress(tflite, bits, per_channel, data=x_train[:500]))}
        keras.utils.set_random_seed(0)
        tuned = to_tflite(finetune_clustered(cnn, (x_train, y_train), bits, per_channel),
                          representative_data=x_train[:500], quantization="int8", int8_io=True)
        clustered = compress(tuned, bits, per_channel)
        before, after = Model.from_bytes(tuned), Model.from_bytes(clustered)
        filters = filter_channels(before)  # the clustering after fine-tuning should find little to do
        row.update(fine_tuned=accuracy(clustered), fine_tune_epochs=FINETUNE_EPOCHS, filters=len(filters),
                   reclustered_filters=sum(before.buffers[b] != after.buffers[b] for b in filters))
        for key in ("accuracy", "bias_corrected", "fine_tuned"):
            row["loss_pt" if key == "accuracy" else f"{key}_loss_pt"] = base - row[key]
        rows.append(row)
    return rows


def markdown(rows: list[dict], mnist: list[dict], n_inputs: int) -> str:
    lines = ["| model | setting | file image B before -> after (x) | TFLM flash B/inference before -> after (x) "
             "| entries per-channel / per-tensor / raw | C decode MB/s | flash ms @10 / 40 / 80 MB/s before -> after "
             f"| top-1 agreement (random inputs, n={n_inputs}) | SNR dB (random inputs) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = r["entries"]
        ms = " / ".join(f"{a:.2f} -> {b:.2f}" for a, b in r["flash_ms"].values())
        lines.append(f"| {r['model']} | {r['setting']} | {r['file_image_before']:,} -> {r['file_image_after']:,} "
                     f"({r['file_ratio']:.2f}) | {r['tflm_bytes_per_inference_before']:,} -> "
                     f"{r['tflm_bytes_per_inference_after']:,} ({r['tflm_ratio']:.2f}) | {e['per_channel']} / "
                     f"{e['per_tensor']} / {e['raw']} | {r['decode_mb_s']:.0f} | {ms} | {r['top1_agreement']:.3f} "
                     f"| {r['snr_db']:.1f} |")
    if mnist:
        lines += ["", f"| MNIST CNN (int8 {mnist[0]['accuracy']:.2f} %, 10,000 test images) | data-free % (loss pt) "
                  "| + bias correction (500 calibration images) | fine-tuned, tied weights | filters changed by "
                  "clustering after fine-tuning |", "|---|---|---|---|---|"]
        lines += [f"| {m['setting']} | {m['accuracy']:.2f} ({m['loss_pt']:.2f}) | {m['bias_corrected']:.2f} "
                  f"({m['bias_corrected_loss_pt']:.2f}) | {m['fine_tuned']:.2f} ({m['fine_tuned_loss_pt']:.2f}, "
                  f"{m['fine_tune_epochs']} epochs) | {m['reclustered_filters']} of {m['filters']} |"
                  for m in mnist[1:]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "compression_results"))
    parser.add_argument("--inputs", type=int, default=200)
    parser.add_argument("--mnist-epochs", type=int, default=6)
    parser.add_argument("--no-mnist", action="store_true")
    args = parser.parse_args()
    shared, out = Path(args.shared), Path(args.out)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        binary = build_decoder(Path(tmp))
        for name in MODELS:
            print(name, file=sys.stderr, flush=True)
            rows += run_model(shared / "models" / "mlperf_tiny" / f"{name}.tflite", binary, Path(tmp), args.inputs)
    mnist = [] if args.no_mnist else mnist_accuracy(shared / "datasets" / "mnist.npz", args.mnist_epochs)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "compression.json", json.dumps({"models": rows, "mnist": mnist}, indent=1).encode())
    table = markdown(rows, mnist, args.inputs)
    write_atomic(out / "compression.md", table.encode())
    print(table)
    target = [r for r in rows if r["bits"] == 4 and r["per_channel"]]
    missed = [r["model"] for r in target if r["tflm_ratio"] < TARGET_RATIO or r["decode_mb_s"] * 1e6 < TARGET_DECODE]
    missed += ["MNIST"] if mnist and mnist[1]["loss_pt"] > TARGET_MNIST_LOSS else []
    if missed:
        print(f"targets missed (4-bit per-channel: >= {TARGET_RATIO}x flash bytes per inference, decode > "
              f"{TARGET_DECODE / 1e6:g} MB/s, MNIST loss <= {TARGET_MNIST_LOSS} pt): {missed}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
