"""Stage partitions for the LiteRT stage runtime: contiguous operator ranges, streamed or kept
resident, chosen by simulating invokes under a cost model measured on the host (runtime policy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..errors import BudgetError
from .memory import Plan


@dataclass(frozen=True)
class Stage:
    """Operators first..last run as one sub-model; `segments` are the weights it needs.

    A `resident` stage is read once and kept across invokes; the others are streamed: read before
    each run (into one of prefetch + 1 slots) and released after it."""

    first: int
    last: int
    segments: tuple[int, ...]
    weight_bytes: int
    resident: bool = False


@dataclass(frozen=True)
class CostModel:
    """Seconds per unit of work, to choose a partition by simulating invokes (simulate_invoke).

    An operator computes for max(MACs x per_mac, weight bytes x per_weight_byte) (batch-1 fully
    connected layers are bound by memory, not arithmetic); preparing a streamed stage takes
    per_read_byte per weight byte and per_stage_build on the prefetch thread (read and CRC-check
    from the page cache, build the stage's interpreter; with XNNPACK, packing); running a streamed
    stage costs per_stage more on the invoking thread (plan its tensors, fault in its arena); each
    cut copies its crossing activations twice. Only the ratios matter.
    """

    per_mac: float
    per_weight_byte: float
    per_read_byte: float
    per_copy_byte: float = 0.1e-9
    per_stage: float = 0.15e-3
    per_stage_build: float = 0.25e-3


# Measured on the 2-core x86 host: ResNet50 and MobileNetV2 (float) invokes for MACs, the 72 MB MLP
# for weight bytes, SwapInterpreter's loads per invoke for reads (with XNNPACK: read + pack).
BUILTIN_COSTS = CostModel(per_mac=0.045e-9, per_weight_byte=0.045e-9, per_read_byte=0.22e-9)
XNNPACK_COSTS = CostModel(per_mac=0.009e-9, per_weight_byte=0.021e-9, per_read_byte=0.9e-9)
# XNNPACK with stages built once and their packed weights paged (runtime.compiled): a load faults
# the packed file's pages in and CRC-checks them, nothing is built (measured: MobileNetV2 in 8
# stages, 0.08 ns/byte paged in and ~0.1 ms per stage). The copy cost is kept although stages now
# pass activations on without copies: it stands for what the model does not count, each stage's
# own activation memory. Without it the model favours many more stages (ResNet50 at 48.7 MiB: 13
# instead of 5), which measured no faster and held 28 MiB more.
XNNPACK_PAGED_COSTS = CostModel(per_mac=0.009e-9, per_weight_byte=0.021e-9, per_read_byte=0.08e-9,
                                per_stage=0.1e-3, per_stage_build=0.0)
# Operators below this many weight bytes are not kept resident on their own account (a stage each
# would cost more than reading them).
MIN_RESIDENT_BYTES = 1 << 20
# Passes of _spread_streamed's search (each accepts one trade).
SPREAD_PASSES = 8


def partition_stages(plan: Plan, budget: int | None, prefetch: int = 1,
                     costs: CostModel | None = None) -> list[Stage]:
    """Cut the operator list into stages whose weights fit `budget` (bytes of weights held at once).

    One resident stage holds everything when the budget allows. Otherwise some stages may stay
    resident and the rest are streamed: a running streamed stage and the `prefetch` streamed stages
    prepared behind it take prefetch + 1 slots of `slot` bytes, so
    resident bytes + (prefetch + 1) * slot <= budget. Every slot size up to budget / (prefetch + 1)
    is tried (one per distinct operator size); for each, the operators above it and then the
    largest others that fit the rest of the budget stay resident. Streaming everything, with the
    cuts balanced (the fewest stages under the cap, then the smallest largest stage: the least
    peak weight memory), is a candidate too. The partition with the shortest simulated invoke wins
    (loads overlap compute; `costs`, default BUILTIN_COSTS), then the one reading fewer bytes.
    """
    if prefetch < 0:
        raise ValueError("prefetch depth must be >= 0")
    if budget is None or budget >= plan.external_bytes:
        return [replace(s, resident=True) for s in _cut(plan, cap=None)]
    largest, minimum = min_stage_budget(plan, 0), min_stage_budget(plan, prefetch)
    if budget < minimum:
        raise BudgetError(
            f"RAM budget {budget} bytes is too small: one operator needs {largest} bytes of weights, and "
            f"with prefetch {prefetch} the runtime holds {prefetch + 1} streamed stage(s) at once (or keeps "
            f"the largest operators resident), so the minimum budget is {minimum} bytes (prefetch 0: "
            f"{largest}). For smaller budgets, split large fully-connected layers when converting "
            "(tflm-swap convert --tile-fc SIZE, or convert(..., tile_bytes=SIZE)), or stream that "
            "operator's weights in tiles (the tflm_swap delegate)."
        )
    cap = budget // (prefetch + 1)
    best = _balanced_cut(plan, cap) if cap >= largest else None
    best_cost = None if best is None else _cost(plan, best, prefetch, costs)
    op_weights = [op.weight_bytes for op in plan.ops]
    for slot in sorted({w for w in op_weights if 0 < w <= cap}):
        stages = _pin_and_cut(plan, op_weights, budget - (prefetch + 1) * slot, slot)
        if stages is None or not _fits(stages, budget, prefetch):
            continue
        cost = _cost(plan, stages, prefetch, costs)
        if best_cost is None or cost < best_cost:
            best, best_cost, best_slot = stages, cost, slot
    if best is None:  # not reached: the minimum budget is met by one of the slot sizes tried
        raise BudgetError(f"no partition of the model fits {budget} bytes")
    if any(s.resident for s in best):
        best = _spread_streamed(plan, op_weights, (best, best_cost), best_slot, budget, prefetch, costs)
    return best


def streamed_bytes(stages: Sequence[Stage]) -> int:
    """Weight bytes read per invoke (resident stages are read once, not counted)."""
    return sum(s.weight_bytes for s in stages if not s.resident)


def _cost(plan: Plan, stages: list[Stage], prefetch: int, costs: CostModel | None) -> tuple[float, int]:
    return simulate_invoke(plan, stages, prefetch, costs), streamed_bytes(stages)


def simulate_invoke(plan: Plan, stages: Sequence[Stage], prefetch: int, costs: CostModel | None = None) -> float:
    """Seconds per invoke in a steady stream of invokes, by a CostModel: stage i computes
    once stage i-1 is done and its weights are in; the prefetch thread reads streamed stages in
    order, a stage's read starting once the streamed stage prefetch + 1 places before it is done
    (its slot is free). The second of two back-to-back invokes is timed, so that reading the next
    invoke's first stage during this one's last is counted."""
    c = costs or BUILTIN_COSTS
    work = []
    for s in stages:
        ops = plan.ops[s.first : s.last + 1]
        compute = sum(max(o.macs * c.per_mac, o.weight_bytes * c.per_weight_byte) for o in ops)
        crossing = sum(b.size for b in plan.activation_blocks if b.first < s.first <= b.last)
        compute += 2 * crossing * c.per_copy_byte + (0.0 if s.resident else c.per_stage)
        work.append((compute, None if s.resident else s.weight_bytes * c.per_read_byte + c.per_stage_build))
    clock = reader = 0.0
    finished: list[float] = []  # end times of streamed stages, in order
    ends = []
    for compute, read in work * 2:
        ready = 0.0
        if read is not None:
            gate = finished[-prefetch - 1] if len(finished) > prefetch else 0.0
            ready = reader = max(reader, gate) + read
        clock = max(clock, ready) + compute
        if read is not None:
            finished.append(clock)
        ends.append(clock)
    return ends[-1] - ends[len(work) - 1]


def _fits(stages: list[Stage], budget: int, prefetch: int) -> bool:
    streamed = [s.weight_bytes for s in stages if not s.resident]
    resident = sum(s.weight_bytes for s in stages if s.resident)
    return resident + (prefetch + 1) * max(streamed, default=0) <= budget


def _balanced_cut(plan: Plan, cap: int) -> list[Stage]:
    """All stages streamed: the fewest under `cap`, cut to make the largest as small as possible
    (binary search on the cap; greedy cutting is optimal for a given cap)."""
    count = len(_cut(plan, cap))
    lo, hi = min_stage_budget(plan, 0), cap
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if len(_cut(plan, mid)) <= count else (mid + 1, hi)
    return _cut(plan, lo)


def _pin_and_cut(plan: Plan, op_weights: list[int], reserve: int, slot: int) -> list[Stage] | None:
    """Keep resident the operators above `slot` and then the largest others that fit `reserve`
    (not those below MIN_RESIDENT_BYTES); stream the rest in stages of at most `slot`. None when
    the operators above `slot` do not fit."""
    pinned: set[int] = set()
    for op in sorted(range(plan.n_ops), key=lambda i: -op_weights[i]):
        w = op_weights[op]
        if w > slot or (w >= MIN_RESIDENT_BYTES and w <= reserve):
            if w > reserve:
                return None
            pinned.add(op)
            reserve -= w
    return _cut_around(plan, op_weights, pinned, slot) if pinned else None


def _spread_streamed(plan: Plan, op_weights: list[int], chosen: tuple[list[Stage], tuple[float, int]], slot: int,
                     budget: int, prefetch: int, costs: CostModel | None) -> list[Stage]:
    """Trade resident operators for streamed ones of no more weight where the simulated invoke gets
    shorter: mostly, streamed stages spread between resident ones, so that each read is hidden
    behind resident compute (equal-sized operators, e.g. tiles of one layer, leave the choice
    free; `_pin_and_cut` keeps the first ones). `chosen` is the partition and its cost to start
    from. First improvement, a few passes."""
    best, best_cost = chosen
    pinned = {op for s in best if s.resident for op in range(s.first, s.last + 1) if op_weights[op]}
    even = _evenly_streamed(op_weights, pinned, slot)
    candidate = _cut_around(plan, op_weights, even, slot)
    if _fits(candidate, budget, prefetch) and (cost := _cost(plan, candidate, prefetch, costs)) < best_cost:
        best, best_cost, pinned = candidate, cost, even
    for _ in range(SPREAD_PASSES):
        trade = _better_trade(plan, op_weights, pinned, slot, budget, prefetch, costs, best_cost)
        if trade is None:
            break
        best, best_cost, pinned = trade
    return best


def _better_trade(plan: Plan, op_weights: list[int], pinned: set[int], slot: int, budget: int, prefetch: int,
                  costs: CostModel | None, to_beat: tuple[float, int]):
    """The first trade of one resident operator for a streamed one of no more weight (at least
    MIN_RESIDENT_BYTES) whose partition fits and costs less than `to_beat`: (stages, cost, pinned),
    or None."""
    for kept in sorted(pinned):
        if op_weights[kept] > slot:  # cannot be streamed
            continue
        for other in range(plan.n_ops):
            if other in pinned or not MIN_RESIDENT_BYTES <= op_weights[other] <= op_weights[kept]:
                continue
            traded = pinned - {kept} | {other}
            candidate = _cut_around(plan, op_weights, traded, slot)
            if _fits(candidate, budget, prefetch) and (cost := _cost(plan, candidate, prefetch, costs)) < to_beat:
                return candidate, cost, traded
    return None


def _evenly_streamed(op_weights: list[int], pinned: set[int], slot: int) -> set[int]:
    """The same resident weight with the streamed operators of each size spread evenly among the
    operators of that size (e.g. the tiles of one layer)."""
    spread = set(pinned)
    for w in {op_weights[op] for op in pinned if op_weights[op] <= slot}:
        same = [op for op, v in enumerate(op_weights) if v == w]
        streamed = len(same) - len(pinned.intersection(same))
        if streamed:
            picks = {same[int((j + 0.5) * len(same) / streamed)] for j in range(streamed)}
            spread = spread - set(same) | (set(same) - picks)
    return spread


def _cut_around(plan: Plan, op_weights: list[int], pinned: set[int], slot: int) -> list[Stage]:
    """Stages for a set of resident operators: runs of them form resident stages, the operators
    between are streamed in stages of at most `slot`."""
    runs: list[list] = []  # [first, last, resident]; weightless operators join the run they are in
    for op in range(plan.n_ops):
        resident = op in pinned if op_weights[op] else None
        if runs and runs[-1][2] is None:  # leading weightless operators: take the first kind seen
            runs[-1][2] = resident
        if runs and (resident is None or runs[-1][2] == resident):
            runs[-1][1] = op
        else:
            runs.append([op, op, resident])
    stages: list[Stage] = []
    for first, last, resident in runs:
        if resident:
            stages.append(stage_of(plan, first, last, resident=True))
        else:
            stages.extend(_cut(plan, slot, range(first, last + 1)))
    return stages


def min_stage_budget(plan: Plan, prefetch: int = 1) -> int:
    """The smallest weights budget `partition_stages` accepts with `prefetch` stages prepared ahead.

    Streaming everything needs the largest operator's weights in each of prefetch + 1 slots; keeping
    the operators above a slot size resident needs their weights plus prefetch + 1 slots of that
    size; keeping everything resident needs all the weights. The least of these (prefetch 0: the
    largest operator's weights)."""
    op_weights = sorted((op.weight_bytes for op in plan.ops), reverse=True)
    if not op_weights or op_weights[0] == 0:
        return 0
    best, above = op_weights[0] * (prefetch + 1), 0
    for slot in op_weights:  # the larger operators before it stay resident
        if slot == 0:
            break
        best = min(best, above + (prefetch + 1) * slot)
        above += slot
    return min(best, plan.external_bytes)  # or everything resident


def _weights_of(plan: Plan, ops: range) -> int:
    return sum(g.size for g in plan.weight_groups if any(u in ops for u in g.users))


def _cut(plan: Plan, cap: int | None, ops: range | None = None) -> list[Stage]:
    """Greedy over `ops` (default: all): extend the current stage while its weights stay within
    `cap` (None: no cap)."""
    ops = range(plan.n_ops) if ops is None else ops
    stages: list[Stage] = []
    first = ops.start
    for op in ops:
        if cap is not None and op > first and _weights_of(plan, range(first, op + 1)) > cap:
            stages.append(_stage(plan, first, op - 1))
            first = op
    if len(ops):
        stages.append(_stage(plan, first, ops.stop - 1))
    return stages


def stage_of(plan: Plan, first: int, last: int, resident: bool = False) -> Stage:
    """The stage that runs operators first..last (e.g. as recorded by `tflm-swap stages`)."""
    if not 0 <= first <= last < plan.n_ops:
        raise ValueError(f"operators {first}..{last} are not a range of this {plan.n_ops}-operator graph")
    return replace(_stage(plan, first, last), resident=resident)


def _stage(plan: Plan, first: int, last: int) -> Stage:
    ops = range(first, last + 1)
    groups = [g for g in plan.weight_groups if any(u in ops for u in g.users)]
    return Stage(first, last, tuple(g.id for g in groups), sum(g.size for g in groups))
