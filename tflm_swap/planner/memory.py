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
from dataclasses import dataclass, field

from ..errors import BudgetError, ManifestError
from ..format.manifest import MANIFEST_NAME, Manifest
from ..format.model import Model
from ..format.segments import DEFAULT_MIN_SEGMENT_BYTES, align, layout_segments

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
            WeightGroup(s.id, s.decoded_size, tuple(s.users), tuple(e.buffer for e in s.entries))  # bytes in RAM
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
    return [b for _, b in activation_tensors(model)]


def activation_tensors(model: Model) -> list[tuple[int, Block]]:
    """(tensor index, block) of every non-constant tensor, in `activation_blocks` order."""
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
            blocks.append((t, Block(model.tensor_name(t), model.tensor_nbytes(t), 0, max(n - 1, 0), "activation")))
        elif model.constant_buffer(t) is None:
            blocks.append((t, Block(model.tensor_name(t), model.tensor_nbytes(t), first[t], last[t], "activation")))
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


def greedy_arena(blocks: Sequence[Block], alignment: int = ARENA_ALIGNMENT,
                 fixed: dict[int, int] | None = None) -> tuple[int, list[int]]:
    """Place blocks like TFLM's GreedyMemoryPlanner: largest first, each at the lowest offset that
    does not overlap a placed block alive at the same time. `fixed` (block index -> offset) are
    offline-planned blocks, placed first where they are, as TFLM does with an `OfflineMemoryAllocation`
    plan. Returns (arena size, offsets)."""
    fixed = fixed or {}
    # TFLM fills its sort array from the tail, then bubble-sorts stably: ties go in reverse input order.
    online = sorted((i for i in range(len(blocks)) if i not in fixed), key=lambda i: (-blocks[i].size, -i))
    placed: list[tuple[int, int, int, int]] = []  # offset, aligned size, first, last
    offsets = [0] * len(blocks)
    for i in sorted(fixed):
        placed.append((fixed[i], align(blocks[i].size, alignment), blocks[i].first, blocks[i].last))
        offsets[i] = fixed[i]
    for i in online:
        b = blocks[i]
        size = align(b.size, alignment)
        offsets[i] = _lowest_gap(placed, size, b.first, b.last)
        placed.append((offsets[i], size, b.first, b.last))
    return max((o + s for o, s, _, _ in placed), default=0), offsets


def _lowest_gap(placed, size: int, first: int, last: int) -> int:
    """The lowest offset where `size` bytes fit between the placed blocks alive in [first, last]."""
    busy = sorted((o, s) for o, s, f, l_ in placed if f <= last and first <= l_)
    offset = 0
    for o, s in busy:
        if o >= offset + size:
            break
        offset = max(offset, o + s)
    return offset


def _highest_gap(placed, size: int, first: int, last: int, ceiling: int) -> int | None:
    """The highest offset <= ceiling - size where `size` bytes fit between the placed blocks alive in
    [first, last], or None."""
    busy = [(o, o + s) for o, s, f, l_ in placed if f <= last and first <= l_]
    for top in sorted({ceiling, *(o for o, _ in busy if o <= ceiling)}, reverse=True):
        if top >= size and all(end <= top - size or start >= top for start, end in busy):
            return top - size
    return None


def packed_arena(blocks: Sequence[Block], online: Sequence[int] = (), alignment: int = ARENA_ALIGNMENT,
                 seconds: float = 1.0, seed: int = 0) -> tuple[int, dict[int, int]]:
    """A tighter layout than the greedy one, for TFLM's offline plan: offsets for every block except
    those in `online` (TFLM plans those itself, greedily, around the fixed ones: the scratch
    buffers). Tries TFLM's greedy order, orders by first use / lifetime / size x lifetime, each filled
    bottom-up or alternately from a ceiling down (the ping-pong of a chain), then random orders
    until `seconds` pass or the live-bytes lower bound is reached. Each candidate is scored by
    `greedy_arena` with it fixed, as TFLM would lay it out. Returns (arena, {block: offset})."""
    import random
    import time

    rng = random.Random(seed)
    planned = [i for i in range(len(blocks)) if i not in set(online) and blocks[i].size > 0]
    n_steps = max((b.last for b in blocks), default=-1) + 1
    bound = max(live_bytes([Block(b.name, align(b.size, alignment), b.first, b.last, b.kind) for b in blocks],
                           n_steps), default=0)
    base_size, base_offsets = greedy_arena(blocks, alignment)
    best = (base_size, {i: base_offsets[i] for i in planned})
    orders = [
        sorted(planned, key=lambda i: (-blocks[i].size, -i)),
        sorted(planned, key=lambda i: (blocks[i].first, -blocks[i].size)),
        sorted(planned, key=lambda i: (-(blocks[i].last - blocks[i].first), -blocks[i].size)),
        sorted(planned, key=lambda i: (-blocks[i].size * (blocks[i].last - blocks[i].first + 1), i)),
    ]
    deadline = time.monotonic() + seconds
    attempt = 0
    while best[0] > bound and (attempt < 2 * len(orders) or time.monotonic() < deadline):
        if attempt < 2 * len(orders):
            order, mode = orders[attempt // 2], attempt % 2
        else:
            order = sorted(planned, key=lambda i: -blocks[i].size * rng.uniform(0.5, 1.5))
            mode = rng.randrange(2)
        attempt += 1
        for ceiling in ([None] if mode == 0 else [bound, best[0] - alignment]):
            offsets = _place(blocks, order, alignment, ceiling, rng if attempt > 2 * len(orders) else None)
            size = greedy_arena(blocks, alignment, offsets)[0]
            if size < best[0]:
                best = (size, offsets)
    return best


def _place(blocks: Sequence[Block], order: Sequence[int], alignment: int, ceiling: int | None,
           rng=None) -> dict[int, int]:
    """First-fit placement in `order`: from the bottom, or (with a ceiling) alternately hanging each
    block from the ceiling and standing it on the floor, falling back to the floor."""
    placed: list[tuple[int, int, int, int]] = []
    offsets = {}
    for k, i in enumerate(order):
        b = blocks[i]
        size = align(b.size, alignment)
        offset = None
        if ceiling is not None and (k % 2 if rng is None else rng.randrange(2)):
            offset = _highest_gap(placed, size, b.first, b.last, ceiling)
            if offset is not None and offset % alignment:
                offset = None
        if offset is None:
            offset = _lowest_gap(placed, size, b.first, b.last)
        offsets[i] = offset
        placed.append((offset, size, b.first, b.last))
    return offsets


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


def _constant_buffers(model: Model) -> set[int]:
    return {b for t in range(len(model.tensors)) if (b := model.constant_buffer(t)) is not None}
