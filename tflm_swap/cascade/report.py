"""Evaluation of a cascade against its monolithic model: accuracy, costs, latency, table and plot."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np

from ..fileio import write_atomic
from ..interpreters import dequantize_output, litert_interpreter, quantize_input
from ..units import format_bytes
from .bundle import CascadeBundle
from .groups import group_labels
from .interpreter import CascadeInterpreter

ROWS = (
    ("monolithic float top-1", "mono_float_top1", "{:.4f}"),
    ("monolithic int8 top-1", "mono_int8_top1", "{:.4f}"),
    ("router top-1 (groups)", "router_top1", "{:.4f}"),
    ("cascade top-1", "cascade_top1", "{:.4f}"),
    ("cascade - monolithic int8 (points)", "delta_points", "{:+.2f}"),
    ("low-confidence fallback rate", "fallback_rate", "{:.4f}"),
    ("monolithic weights / MACs", "mono_cost", "{}"),
    ("params: monolithic / router / specialists", "params", "{}"),
    ("router weights / MACs (% of monolithic)", "router_pct", "{}"),
    ("specialists' weights, total (% of monolithic)", "specialists_pct", "{:.1f}%"),
    ("weights used per inference, mean (%)", "used_pct", "{:.1f}%"),
    ("weights used per inference, max (router + 2 specialists, or + monolithic)", "used_max_pct", "{:.1f}%"),
    ("MACs per inference, mean (% of monolithic)", "macs_pct", "{:.1f}%"),
    ("flash bytes loaded per inference (budget: router + largest)", "loaded_per_inference", "{}"),
    ("host latency: monolithic int8 / cascade / cascade without loads", "latency", "{}"),
)


def evaluate(bundle: CascadeBundle, x: np.ndarray, y: np.ndarray, keras_model=None, backend: str = "litert",
             ram_budget: int | str | None = "tight", cache: str = "lru") -> dict:
    """Figures of the cascade on (x, y). `ram_budget='tight'`: `tight_budget(bundle)`."""
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y).reshape(-1)
    mono_bytes = bundle.monolithic.weight_bytes if bundle.monolithic else bundle.stats.get("monolithic_weight_bytes")
    result: dict = {"n": len(x), "n_groups": len(bundle.groups), "groups": bundle.groups, "backend": backend}
    if keras_model is not None:
        result["mono_float_top1"] = float(np.mean(np.argmax(keras_model.predict(x, verbose=0), 1) == y))
    if bundle.monolithic is not None:
        pred, seconds = _run_plain(bundle.member_bytes(bundle.monolithic), x)
        result["mono_int8_top1"], result["mono_latency_s"] = float(np.mean(pred == y)), seconds
    if ram_budget == "tight":
        ram_budget = tight_budget(bundle)
    with CascadeInterpreter(bundle, ram_budget=ram_budget, cache=cache, backend=backend) as ci:
        result["router_top1"] = float(np.mean(np.argmax(ci.route(x), 1) == group_labels(y, bundle.groups)))
        started = time.perf_counter()
        scores = ci.predict(x)
        result["cascade_latency_s"] = (time.perf_counter() - started) / len(x)
        stats, records = ci.stats(), ci.records
    resident = [r.seconds for r in records if r.bytes_loaded == 0]
    result["cascade_latency_resident_s"] = float(np.mean(resident)) if resident else None
    result["cascade_top1"] = float(np.mean(np.argmax(scores, 1) == y))
    result["ram_budget"] = ram_budget
    result.update(_costs(bundle, mono_bytes, stats, records))
    if "mono_int8_top1" in result:
        result["delta_points"] = 100 * (result["cascade_top1"] - result["mono_int8_top1"])
    return result


def tight_budget(bundle: CascadeBundle) -> int:
    """The smallest RAM budget the bundle's policy runs in: the router + the largest model it may load
    (the monolithic model too when low-confidence inputs fall back to it)."""
    sizes = [s.weight_bytes for s in bundle.specialists]
    if bundle.fallback.get("policy") == "full" and bundle.monolithic is not None:
        sizes.append(bundle.monolithic.weight_bytes)
    return bundle.router.weight_bytes + max(sizes)


def _costs(bundle: CascadeBundle, mono_bytes: int, stats: dict, records) -> dict:
    mono = bundle.monolithic
    mono_macs = mono.macs if mono else 0
    spec_macs = [s.macs for s in bundle.specialists]
    macs = [bundle.router.macs + sum(spec_macs[g] for g in r.groups_run) + (mono_macs if r.monolithic else 0)
            for r in records]
    largest_two = sorted((s.weight_bytes for s in bundle.specialists), reverse=True)[:2]
    worst = mono_bytes if bundle.fallback.get("policy") == "full" else sum(largest_two)
    return {
        "mono_weight_bytes": mono_bytes, "mono_macs": mono_macs, "mono_params": mono.params if mono else None,
        "router_params": bundle.router.params, "specialist_params": [s.params for s in bundle.specialists],
        "router_weight_bytes": bundle.router.weight_bytes, "router_macs": bundle.router.macs,
        "router_weight_pct": 100 * bundle.router.weight_bytes / mono_bytes,
        "router_macs_pct": 100 * bundle.router.macs / mono_macs if mono_macs else None,
        "specialist_weight_bytes": [s.weight_bytes for s in bundle.specialists],
        "specialists_pct": 100 * sum(s.weight_bytes for s in bundle.specialists) / mono_bytes,
        "used_per_inference": stats["weights_used_per_inference"],
        "used_pct": 100 * stats["weights_used_per_inference"] / mono_bytes,
        "used_max_pct": 100 * (bundle.router.weight_bytes + worst) / mono_bytes,
        "macs_pct": 100 * float(np.mean(macs)) / mono_macs if mono_macs else None,
        "loaded_per_inference_bytes": stats["bytes_loaded_per_inference"],
        "fallback_rate": stats["fallback_rate"],
    }


def _run_plain(data: bytes, x: np.ndarray) -> tuple[np.ndarray, float]:
    """argmax predictions of a plain LiteRT interpreter (builtin kernels, no XNNPACK) and seconds per input."""
    interpreter = litert_interpreter(data, default_delegates=False)
    interpreter.allocate_tensors()
    d_in, d_out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    preds = np.empty(len(x), dtype=np.int64)
    started = time.perf_counter()
    for i in range(len(x)):
        interpreter.set_tensor(d_in["index"], quantize_input(x[i : i + 1], d_in))
        interpreter.invoke()
        preds[i] = int(np.argmax(dequantize_output(interpreter.get_tensor(d_out["index"]), d_out)))
    return preds, (time.perf_counter() - started) / max(len(x), 1)


def format_table(results: dict[str, dict]) -> str:
    """A Markdown table: one row per figure, one column per named result (e.g. dataset)."""
    names = list(results)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, key, fmt in ROWS:
        cells = [_cell(r, key, fmt) for r in results.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(r: dict, key: str, fmt: str) -> str:
    if key == "mono_cost":
        return f"{format_bytes(r['mono_weight_bytes'])} / {r['mono_macs'] / 1e6:.2f} M"
    if key == "params":
        if r.get("router_params") is None:
            return "-"
        return f"{r.get('mono_params') or '-'} / {r['router_params']} / {', '.join(map(str, r['specialist_params']))}"
    if key == "router_pct":
        macs = "n/a" if r.get("router_macs_pct") is None else f"{r['router_macs_pct']:.1f}%"
        return f"{r['router_weight_pct']:.1f}% / {macs}"
    if key == "loaded_per_inference":
        return f"{r['loaded_per_inference_bytes']:.0f} B"
    if key == "latency":
        mono = r.get("mono_latency_s")
        warm = r.get("cascade_latency_resident_s")
        warm_text = "-" if warm is None else f"{warm * 1e3:.3f} ms"
        mono_text = "-" if mono is None else f"{mono * 1e3:.3f} ms"
        return f"{mono_text} / {r['cascade_latency_s'] * 1e3:.3f} ms / {warm_text}"
    value = r.get(key)
    return "-" if value is None else fmt.format(value)


def plot_tradeoff(sweep: dict[str, list[dict]], path: str | Path, inputs: tuple = (),
                  targets: dict | None = None) -> Path:
    """Accuracy against weights (left) and MACs (right) used per inference, % of the monolithic
    model, one point per number of groups; `targets` ({'used_pct', 'macs_pct', 'delta_points'})
    adds the cost limits and the accuracy floor below each monolithic model. The PNG is written
    atomically, never over one of `inputs`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, label in ((axes[0], "used_pct", "weights"), (axes[1], "macs_pct", "MACs")):
        for name, rows in sweep.items():
            _plot_sweep(ax, name, sorted(rows, key=lambda r: r["n_groups"]), key, targets)
        if targets and key in targets:
            ax.axvline(targets[key], color="grey", ls="--", lw=1, label=f"target: <= {targets[key]:.0f}%")
        ax.set_xlabel(f"{label} used per inference (% of monolithic int8)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("top-1 accuracy (%)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return write_atomic(path, buf.getvalue(), inputs)


def _plot_sweep(ax, name: str, rows: list[dict], key: str, targets: dict | None) -> None:
    rows = [r for r in rows if r.get(key) is not None]
    xs, ys = [r[key] for r in rows], [100 * r["cascade_top1"] for r in rows]
    line = ax.plot(xs, ys, "o-", label=f"{name} cascade")[0]
    for r, xv, yv in zip(rows, xs, ys):
        ax.annotate(f"{r['n_groups']} groups", (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if rows and rows[0].get("mono_int8_top1") is not None:
        mono = 100 * rows[0]["mono_int8_top1"]
        ax.plot([100], [mono], "s", color=line.get_color(), label=f"{name} monolithic int8")
        if targets and "delta_points" in targets:
            ax.axhline(mono + targets["delta_points"], color=line.get_color(), ls=":", lw=1,
                       label=f"{name}: monolithic {targets['delta_points']:+.1f} pt")
