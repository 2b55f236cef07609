"""Latency of one inference with per-operator loading: one flash channel reading segments in
first-use order, overlapped with compute up to the prefetch depth."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .memory import Plan


@dataclass
class LatencyEstimate:
    compute_s: float
    flash_s: float
    serial_s: float  # load, then compute, operator after operator
    overlapped_s: float  # with the given prefetch depth, one flash channel


def estimate_latency(
    plan: Plan, op_seconds: Sequence[float], bandwidth_bytes_per_s: float, prefetch: int = 1
) -> LatencyEstimate:
    """Simulate one inference: one flash channel reads segments in first-use order; a segment for
    operator j may start loading once operator j-prefetch-1 has finished (its buffer is free);
    operator j computes once operator j-1 is done and its segments are loaded."""
    if len(op_seconds) != plan.n_ops:
        raise ValueError(f"need {plan.n_ops} operator times, got {len(op_seconds)}")
    if bandwidth_bytes_per_s <= 0:
        raise ValueError("flash bandwidth must be positive")
    read_s = {g.id: g.size / bandwidth_bytes_per_s for g in plan.weight_groups}
    end = [0.0] * plan.n_ops
    loaded = {}
    flash_free = 0.0
    for g in sorted(plan.weight_groups, key=lambda g: (g.users[0], g.id)):
        gate = g.users[0] - prefetch - 1
        start = max(flash_free, _end_of_op(gate, plan, op_seconds, end, loaded))
        flash_free = loaded[g.id] = start + read_s[g.id]
    _finish_ops(plan, op_seconds, end, loaded)
    compute = float(sum(op_seconds))
    flash = float(sum(read_s.values()))
    return LatencyEstimate(compute, flash, compute + flash, end[-1] if end else 0.0)


def _end_of_op(op: int, plan: Plan, op_seconds, end: list[float], loaded: dict) -> float:
    """Finish time of operator `op` (0 before the start), computing earlier operators as needed."""
    if op < 0:
        return 0.0
    _finish_ops(plan, op_seconds, end, loaded, upto=op)
    return end[op]


def _finish_ops(plan: Plan, op_seconds, end: list[float], loaded: dict, upto: int | None = None) -> None:
    upto = plan.n_ops - 1 if upto is None else upto
    for i in range(upto + 1):
        if end[i]:
            continue
        ready = max((loaded[g.id] for g in plan.weight_groups if i in g.users), default=0.0)
        end[i] = max(end[i - 1] if i else 0.0, ready) + op_seconds[i]


# -------------------------------------------------------------------------------------- helpers
