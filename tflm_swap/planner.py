"""Memory and flash-traffic plans computed from the graph alone (pure: model in, numbers out).

Time is measured in operator steps 0..n-1 (execution order). A *block* is anything that must sit in
RAM over a range of steps: an activation tensor, or a weight segment under some loading strategy.

Strategies
    resident     every external weight in RAM for the whole inference (the stock situation)
    per_op       a segment is loaded right before its first user and released after its last
    prefetch_k   as per_op, but a segment is loaded k operators ahead, to overlap reads with compute

For each strategy: `peak` is the most bytes live at once under that residency policy; `lower_bound`
is what any runtime needs at least (a segment reloaded at each use, so only the operators' own
weights and the next k operators' weights count); `arena` packs all blocks with the greedy
first-fit-by-size algorithm that TFLite Micro's GreedyMemoryPlanner uses, with 16-byte alignment.
Inline (small) constants stay in the graph flatbuffer and are reported apart as `inline_bytes`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from .errors import BudgetError, ManifestError
from .manifest import MANIFEST_NAME, Manifest
from .model import Model
from .segment import DEFAULT_MIN_SEGMENT_BYTES, align, layout_segments

ARENA_ALIGNMENT = 16


@dataclass(frozen=True)
class Block:
    """Bytes that must be resident from step `first` to step `last` inclusive."""

    name: str
    size: int
    first: int
    last: int
    kind: str  # "activation" or "weights"


@dataclass(frozen=True)
class WeightGroup:
    """A unit of weight loading (a segment): its size and the operators that read it."""

    id: int
    size: int
    users: tuple[int, ...]
    buffers: tuple[int, ...]


@dataclass
class OpCost:
    """One operator: live activation bytes, bytes of weights it reads, bytes first loaded for it,
    and an estimate of its multiply-accumulates (see op_macs)."""

    index: int
    opcode: str
    activation_bytes: int
    weight_bytes: int
    load_bytes: int
    macs: int = 0


@dataclass
class StrategyPlan:
    name: str
    prefetch: int | None  # None for `resident`
    timeline: list[int]  # bytes live at each step under this strategy
    peak: int
    lower_bound: int
    arena: int
    flash_bytes_per_inference: int


@dataclass
class Plan:
    """Everything the planner knows about one model."""

    source: str
    ops: list[OpCost]
    weight_groups: list[WeightGroup]
    activation_blocks: list[Block]
    inline_bytes: int
    strategies: dict[str, StrategyPlan] = field(default_factory=dict)

    @property
    def n_ops(self) -> int:
        return len(self.ops)

    @property
    def external_bytes(self) -> int:
        return sum(g.size for g in self.weight_groups)

    @property
    def activation_peak(self) -> int:
        return max((op.activation_bytes for op in self.ops), default=0)

    @property
    def activation_arena(self) -> int:
        return greedy_arena(self.activation_blocks)[0]

    @property
    def largest_op_weights(self) -> int:
        return max((op.weight_bytes for op in self.ops), default=0)

    def fit(self, budget: int) -> StrategyPlan:
        """The fastest strategy that fits `budget`: resident if it fits (no flash reads per inference),
        else the deepest prefetch that fits, else per-operator loading.

        Raises BudgetError naming the minimum budget when nothing fits.
        """
        fitting = [s for s in self.strategies.values() if s.arena <= budget]
        if not fitting:
            best = min(self.strategies.values(), key=lambda s: s.arena)
            op_need = self.strategies["per_op"].lower_bound
            if budget < op_need:
                why = (f"below what one operator needs ({op_need} bytes: its live activations plus its "
                       "weights); tile that operator's weights (the streaming delegate) or enlarge the budget")
            else:
                why = "too small for every loading strategy"
            raise BudgetError(
                f"RAM budget {budget} bytes is {why}; the minimum with per-operator loading is "
                f"{best.arena} bytes ({best.name})"
            )
        return min(fitting, key=lambda s: (s.flash_bytes_per_inference, -(s.prefetch or 0), s.arena))


# ------------------------------------------------------------------------------------ building
def plan_model(
    model: Model,
    prefetch_depths: Sequence[int] = (1, 2),
    min_segment_bytes: int = DEFAULT_MIN_SEGMENT_BYTES,
) -> Plan:
    """Plan a model. A segmented model is planned from its manifest; any other model from the
    segment layout `convert` would give it with `min_segment_bytes`."""
    model.check_single_graph()
    groups = weight_groups(model, min_segment_bytes)
    blocks = activation_blocks(model)
    n = len(model.operators)
    act_timeline = live_bytes(blocks, n)
    ops = [
        OpCost(
            index=i,
            opcode=model.opcode_name(i),
            activation_bytes=act_timeline[i],
            weight_bytes=sum(g.size for g in groups if i in g.users),
            load_bytes=sum(g.size for g in groups if g.users[0] == i),
            macs=op_macs(model, i),
        )
        for i in range(n)
    ]
    external = {b for g in groups for b in g.buffers}
    inline = sum(len(model.buffers[b]) for b in _constant_buffers(model) if b not in external)
    plan = Plan(model.source, ops, groups, blocks, inline)
    plan.strategies["resident"] = _strategy(plan, None)
    plan.strategies["per_op"] = _strategy(plan, 0)
    for k in prefetch_depths:
        plan.strategies[f"prefetch_{k}"] = _strategy(plan, k)
    return plan


def op_macs(model: Model, op: int) -> int:
    """Multiply-accumulates of operator `op`, estimated from shapes: for each constant input of
    rank >= 2 (a weight; biases are rank 1), output elements x weight elements / output channels
    (conv: H*W*Cout*Kh*Kw*Cin; depthwise: H*W*C*Kh*Kw; fully connected: N*Out*In). An operator
    without weights counts one per output element."""
    outputs = [t for t in model.op_outputs(op) if t >= 0]
    out_elems = sum(_elements(model, t) for t in outputs)
    channels = max(int(model.tensors[outputs[0]].shape[-1]), 1) if outputs and _rank(model, outputs[0]) else 1
    weights = [t for t in model.op_inputs(op) if t >= 0 and model.constant_buffer(t) is not None
               and _rank(model, t) >= 2]
    if not weights:
        return out_elems
    return sum(out_elems * _elements(model, t) // channels for t in weights)


def _rank(model: Model, tensor: int) -> int:
    shape = model.tensors[tensor].shape
    return 0 if shape is None else len(shape)


def _elements(model: Model, tensor: int) -> int:
    shape = model.tensors[tensor].shape
    return abs(math.prod(int(d) for d in shape)) if shape is not None and len(shape) else 1


def weight_groups(model: Model, min_segment_bytes: int = DEFAULT_MIN_SEGMENT_BYTES) -> list[WeightGroup]:
    """Loading units: the manifest's segments, or the layout `convert` would produce."""
    blob = model.metadata(MANIFEST_NAME)
    if blob is not None:
        manifest = Manifest.decode(blob)
        _check_manifest_refs(manifest, model)
        return [
            WeightGroup(s.id, s.size, tuple(s.users), tuple(e.buffer for e in s.entries))
            for s in manifest.segments
        ]
    return [
        WeightGroup(i, spec.packed_size(model), spec.users, spec.buffers)
        for i, spec in enumerate(layout_segments(model, min_segment_bytes))
    ]


def _check_manifest_refs(manifest: Manifest, model: Model) -> None:
    """The manifest may only name operators and buffers that exist in this graph."""
    n_ops, n_buffers = len(model.operators), len(model.buffers)
    for s in manifest.segments:
        if any(not 0 <= u < n_ops for u in s.users):
            raise ManifestError(f"segment {s.id} lists user operators {s.users}, but the graph has {n_ops}")
        if any(not 0 <= e.buffer < n_buffers for e in s.entries):
            raise ManifestError(f"segment {s.id} names a buffer outside the graph's {n_buffers} buffers")


def activation_blocks(model: Model) -> list[Block]:
    """Lifetimes of every non-constant tensor, as TFLite Micro's allocator computes them."""
    n = len(model.operators)
    first: dict[int, int] = {}
    last: dict[int, int] = {}

    def touch(t: int, step: int) -> None:
        first[t] = min(first.get(t, step), step)
        last[t] = max(last.get(t, step), step)

    for t in model.inputs:
        touch(t, 0)
    for i in range(n):
        for t in model.op_inputs(i) + model.op_outputs(i) + model.op_intermediates(i):
            touch(t, i)
    for t in model.outputs:
        touch(t, max(n - 1, 0))
    blocks = []
    for t in sorted(first):
        tensor = model.tensors[t]
        if tensor.isVariable:
            blocks.append(Block(model.tensor_name(t), model.tensor_nbytes(t), 0, max(n - 1, 0), "activation"))
        elif model.constant_buffer(t) is None:
            blocks.append(Block(model.tensor_name(t), model.tensor_nbytes(t), first[t], last[t], "activation"))
    return blocks


def weight_blocks(groups: list[WeightGroup], n_ops: int, prefetch: int | None) -> list[Block]:
    """Residency of each segment: whole inference (resident) or [first use - k, last use]."""
    last_step = max(n_ops - 1, 0)
    return [
        Block(f"segment {g.id}", g.size,
              0 if prefetch is None else max(0, g.users[0] - prefetch),
              last_step if prefetch is None else g.users[-1], "weights")
        for g in groups
    ]


def live_bytes(blocks: Sequence[Block], n_ops: int) -> list[int]:
    """Bytes live at each step."""
    timeline = [0] * n_ops
    for b in blocks:
        for step in range(b.first, b.last + 1):
            timeline[step] += b.size
    return timeline


def greedy_arena(blocks: Sequence[Block], alignment: int = ARENA_ALIGNMENT) -> tuple[int, list[int]]:
    """Place blocks like TFLM's GreedyMemoryPlanner: largest first, each at the lowest offset that
    does not overlap a placed block alive at the same time. Returns (arena size, offsets)."""
    # TFLM fills its sort array from the tail, then bubble-sorts stably: ties go in reverse input order.
    order = sorted(range(len(blocks)), key=lambda i: (-blocks[i].size, -i))
    placed: list[tuple[int, int, int, int]] = []  # offset, aligned size, first, last
    offsets = [0] * len(blocks)
    for i in order:
        b = blocks[i]
        size = align(b.size, alignment)
        busy = sorted((o, s) for o, s, f, last in placed if f <= b.last and b.first <= last)
        offset = 0
        for o, s in busy:
            if o >= offset + size:
                break
            offset = max(offset, o + s)
        placed.append((offset, size, b.first, b.last))
        offsets[i] = offset
    return max((o + s for o, s, _, _ in placed), default=0), offsets


def _strategy(plan: Plan, prefetch: int | None) -> StrategyPlan:
    n = plan.n_ops
    weights = weight_blocks(plan.weight_groups, n, prefetch)
    timeline = live_bytes(plan.activation_blocks + weights, n)
    if prefetch is None:
        name, lower, flash = "resident", plan.activation_peak + plan.external_bytes, 0
    else:
        name = "per_op" if prefetch == 0 else f"prefetch_{prefetch}"
        lower = max((plan.ops[i].activation_bytes + _window_weights(plan, i, prefetch) for i in range(n)),
                    default=0)
        flash = plan.external_bytes
    arena = greedy_arena(plan.activation_blocks + weights)[0]
    return StrategyPlan(name, prefetch, timeline, max(timeline, default=0), lower, arena, flash)


def _window_weights(plan: Plan, step: int, prefetch: int) -> int:
    """Bytes of the segments read by operators step..step+prefetch (each counted once)."""
    window = range(step, min(step + prefetch, plan.n_ops - 1) + 1)
    return sum(g.size for g in plan.weight_groups if any(u in window for u in g.users))


# ------------------------------------------------------------------------------------- latency
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
def _constant_buffers(model: Model) -> set[int]:
    return {b for t in range(len(model.tensors)) if (b := model.constant_buffer(t)) is not None}




# --------------------------------------------------------------------------------------- stages
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
