"""Human-readable output: byte sizes, tables of a plan, and the memory-over-operators plot."""

from __future__ import annotations

import io
import re
from pathlib import Path

from .errors import TflmSwapError
from .fileio import write_atomic
from .planner import LatencyEstimate, Plan

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
}


def parse_size(text: str | int) -> int:
    """Parse '256KiB', '256k' (binary), '1MB' (decimal), '4096' into bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise TflmSwapError(f"cannot read size {text!r}: use e.g. 4096, 256KiB, 256k, 1MiB or 1MB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def at_least(minimum: int):
    """An argparse type: an integer >= `minimum` (argparse reports anything else as a usage error)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def probability(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1]")
    return value


def parse_rate(text: str) -> float:
    """Parse a bandwidth such as '40MB/s' or '32MiB/s' into bytes per second."""
    return float(parse_size(text.strip().removesuffix("/s")))


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def operator_table(plan: Plan) -> str:
    """One row per operator: live activations, weights read, weights first loaded there."""
    rows = [
        [str(op.index), op.opcode, str(op.activation_bytes), str(op.weight_bytes), str(op.load_bytes)]
        for op in plan.ops
    ]
    return _table(["op", "opcode", "activations", "weights", "loaded here"], rows)


def strategy_table(plan: Plan) -> str:
    """One row per loading strategy: peak, lower bound, TFLM-style arena, flash reads."""
    rows = [
        [s.name, format_bytes(s.peak), format_bytes(s.lower_bound), format_bytes(s.arena),
         f"{s.arena / s.lower_bound:.2f}" if s.lower_bound else "-",
         format_bytes(s.flash_bytes_per_inference)]
        for s in plan.strategies.values()
    ]
    return _table(["strategy", "peak live", "lower bound", "arena (greedy)", "arena/bound", "flash/inference"],
                  rows)


def summary(plan: Plan) -> str:
    return "\n".join([
        f"model: {plan.source}",
        f"operators: {plan.n_ops}   segments: {len(plan.weight_groups)}",
        f"external weights: {format_bytes(plan.external_bytes)}   inline constants (stay in the graph): "
        f"{format_bytes(plan.inline_bytes)}",
        f"largest operator's weights: {format_bytes(plan.largest_op_weights)}   "
        f"activation peak: {format_bytes(plan.activation_peak)} (lower bound), "
        f"{format_bytes(plan.activation_arena)} (greedy arena, as TFLM lays it out)",
    ])


def latency_lines(estimates: dict[str, LatencyEstimate], bandwidth: float) -> str:
    rows = [
        [name, f"{e.compute_s * 1e3:.3f}", f"{e.flash_s * 1e3:.3f}", f"{e.serial_s * 1e3:.3f}",
         f"{e.overlapped_s * 1e3:.3f}"]
        for name, e in estimates.items()
    ]
    title = f"estimated latency at {bandwidth / 1e6:.1f} MB/s flash reads (ms)"
    return title + "\n" + _table(["strategy", "compute", "flash", "no overlap", "with overlap"], rows)


def plot_plan(plan: Plan, path: str | Path, budget: int | None = None, inputs: tuple = ()) -> Path:
    """Plot bytes live at each operator, one line per strategy, with the RAM budget as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.8))
    steps = list(range(plan.n_ops))
    ax.step(steps, [op.activation_bytes for op in plan.ops], where="mid", color="0.5", linestyle=":",
            label="activations only")
    for s in plan.strategies.values():
        ax.step(steps, s.timeline, where="mid", label=f"{s.name} (arena {format_bytes(s.arena)})")
    if budget is not None:
        ax.axhline(budget, color="red", linestyle="--", label=f"RAM budget {format_bytes(budget)}")
    ax.set_xlabel("operator (execution order)")
    ax.set_ylabel("bytes live")
    ax.set_yscale("log")
    ax.set_title(f"Memory over operators: {Path(plan.source).name}")
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(path, buf.getvalue(), inputs)
