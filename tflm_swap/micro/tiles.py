"""Choosing weight tiles for a RAM budget (`--ram-budget` of `convert --target tflm` and `plan --target tflm`).

Every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED whose weights are external (at least
`min_segment_bytes`) can stay whole behind load operators (one read per weight buffer, the stock
kernel) or become a tiled kernel reading 2, 4, 8, ... tiles (down to one channel group per tile).
Fewer tiles mean fewer flash reads and the stock kernels; so `choose_tiles` starts with every
operator whole and, while the predicted arena exceeds the budget, splits further the operator whose
step holds the most live bytes (activations + its staged weights or tile buffers) among those that can
still be split. The predicted arena is the planner's TFLM layout of the rewritten graph (`predict_head`,
exact) plus the persistent part (`predict_tail`: the stock model's, measured, plus an upper bound
per inserted or tiled operator). With every operator at its finest tiles and still too large, it
raises `BudgetError` naming that smallest arena and the operator at its peak. `offline_plan=True`
evaluates every candidate with the planner's packed layout written as TFLM's offline plan (what
`--ram-budget` uses), so the choice accounts for the tighter arena.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..converters.tflm import MicroModel, rewrite_for_tflm
from ..converters.tflm_tiles import TileChoice, TileGeometry, tile_geometry
from ..errors import BudgetError, TflmSwapError, UnsupportedModelError
from ..format.flash_image import DEFAULT_ALIGNMENT
from ..format.model import Model
from ..format.segments import DEFAULT_MIN_SEGMENT_BYTES, align
from ..planner import ARENA_ALIGNMENT, Block, live_bytes
from .predict import arena_blocks, predict_head, predict_tail


@dataclass(frozen=True)
class TilePlan:
    """A tiling of a model for the TFLM target and what it costs."""

    tiles: dict[int, TileChoice]  # source operator -> choice (operators not listed: whole, load ops)
    micro: MicroModel
    head: int  # predicted non-persistent arena (exact)
    tail: int  # predicted persistent arena (upper bound with tiled operators)
    peak_op: int  # source operator at the step with the most live bytes
    peak_bytes: int
    bound: int  # the planner's lower bound for this tiling: most 16-byte-aligned bytes live at one step

    @property
    def arena(self) -> int:
        return self.head + self.tail

    @property
    def flash_bytes(self) -> int:
        return self.micro.flash_bytes_per_inference

    @property
    def reads(self) -> int:
        return self.micro.reads_per_inference


def stock_tail(model: Model) -> int:
    """TFLM's persistent arena for the stock model: measured on the host TFLM, else on the official
    tflite-micro interpreter (a few hundred bytes off the host figure)."""
    import numpy as np

    from .host import io_specs, run_host_tflm
    from .toolchain import NativeToolError

    plain = bytes(model.without_external())  # TFLM cannot read Buffer.offset
    try:
        zeros = [np.zeros(shape, dtype) for shape, dtype in io_specs(plain, "inputs")]
        return run_host_tflm(plain, None, [zeros]).arena_tail
    except NativeToolError:
        from ..interpreters import tflm_arena

        return tflm_arena(plain).tail


def tileable_operators(model: Model, min_segment_bytes: int = DEFAULT_MIN_SEGMENT_BYTES
                       ) -> dict[int, TileGeometry]:
    """Operators that can be tiled and whose filter is external (at least `min_segment_bytes`)."""
    found = {}
    for op in range(len(model.operators)):
        try:
            g = tile_geometry(model, op)
        except (UnsupportedModelError, IndexError, AttributeError):
            continue
        if g.max_tiles >= 1 and model.tensor_nbytes(g.filter) >= min_segment_bytes:
            found[op] = g
    return found


def tile_levels(geometry: TileGeometry) -> list[int]:
    """Tile counts tried for an operator, coarsest first: 1, 2, 4, ... and the finest (one channel
    group per tile), each giving fewer channels per tile than the one before."""
    counts, seen, n = [], set(), 1
    while n < geometry.max_tiles:
        counts.append(n)
        n *= 2
    counts.append(geometry.max_tiles)
    levels = []
    for n in counts:
        per_tile = geometry.tile_channels(n)
        if per_tile not in seen:
            seen.add(per_tile)
            levels.append(n)
    return levels


def normalize_tiles(tiles: Mapping[int, int | TileChoice] | None, prefetch: bool) -> dict[int, TileChoice]:
    """`{op: count}` or `{op: TileChoice}` as TileChoices (counts take `prefetch`); a count below 1
    raises TflmSwapError."""
    result = {}
    for op, choice in (tiles or {}).items():
        if isinstance(choice, TileChoice):
            result[op] = choice
        elif isinstance(choice, int) and not isinstance(choice, bool) and choice >= 1:
            result[op] = TileChoice(choice, prefetch)
        else:
            raise TflmSwapError(f"operator {op}: tile count {choice!r} must be an integer >= 1")
    return result


def evaluate(model: Model, tiles: dict[int, TileChoice], stock_tail: int, *, prefetch: bool = False,
             verify_crc: bool = False, min_segment_bytes: int = DEFAULT_MIN_SEGMENT_BYTES,
             alignment: int = DEFAULT_ALIGNMENT, offline_plan: bool = False) -> TilePlan:
    """Rewrite `model` with `tiles` (and the offline arena plan) and predict its arena."""
    micro = rewrite_for_tflm(model, min_segment_bytes=min_segment_bytes, prefetch=prefetch, verify_crc=verify_crc,
                             alignment=alignment, tiles=tiles, offline_plan=offline_plan)
    blocks = arena_blocks(micro)
    timeline = live_bytes(blocks, len(micro.graph_model.operators))
    source_at = _source_positions(micro)
    peak_op = max(source_at, key=lambda k: timeline[source_at[k]], default=0)
    peak = timeline[source_at[peak_op]] if source_at else 0
    aligned = [Block(b.name, align(b.size, ARENA_ALIGNMENT), b.first, b.last, b.kind) for b in blocks]
    bound = max(live_bytes(aligned, len(micro.graph_model.operators)), default=0)
    return TilePlan(dict(tiles), micro, predict_head(micro), predict_tail(micro, stock_tail), peak_op, peak, bound)


def _source_positions(micro: MicroModel) -> dict[int, int]:
    """Source operator -> its index in the rewritten graph."""
    inserted = {s.op for s in micro.loads}
    kept = [i for i in range(len(micro.graph_model.operators)) if i not in inserted]
    return dict(enumerate(kept))


def choose_tiles(model: Model, budget: int, stock_tail: int, *, prefetch: bool = False, verify_crc: bool = False,
                 min_segment_bytes: int = DEFAULT_MIN_SEGMENT_BYTES, alignment: int = DEFAULT_ALIGNMENT,
                 offline_plan: bool = False) -> TilePlan:
    """The tiling with the fewest splits (flash reads) whose predicted arena fits `budget` bytes
    (see the module docstring); raises BudgetError naming the smallest arena reachable."""
    if budget <= 0:
        raise TflmSwapError(f"RAM budget {budget} must be positive")
    options = dict(prefetch=prefetch, verify_crc=verify_crc, min_segment_bytes=min_segment_bytes, alignment=alignment,
                   offline_plan=offline_plan)
    geometries = tileable_operators(model, min_segment_bytes)
    levels = {op: tile_levels(g) for op, g in geometries.items()}
    level: dict[int, int] = {}  # op -> index into levels[op]; absent: whole (load operators)
    while True:
        plan = evaluate(model, _choices(levels, level, prefetch), stock_tail, **options)
        if plan.arena <= budget:
            return plan
        op = _to_split(plan, levels, level)
        if op is None:
            raise BudgetError(_too_small(model, budget, plan))
        level[op] = level.get(op, -1) + 1


def smallest_tiling(model: Model, stock_tail: int, **options) -> TilePlan:
    """Every tileable operator at its finest tiles: the smallest arena `choose_tiles` can reach."""
    geometries = tileable_operators(model, options.get("min_segment_bytes", DEFAULT_MIN_SEGMENT_BYTES))
    tiles = {op: TileChoice(g.max_tiles, options.get("prefetch", False)) for op, g in geometries.items()}
    return evaluate(model, tiles, stock_tail, **options)


def _choices(levels: dict[int, list[int]], level: dict[int, int], prefetch: bool) -> dict[int, TileChoice]:
    return {op: TileChoice(levels[op][i], prefetch) for op, i in level.items()}


def _to_split(plan: TilePlan, levels: dict[int, list[int]], level: dict[int, int]) -> int | None:
    """The operator to split further: most live bytes at its step, among those not at their finest."""
    timeline = live_bytes(arena_blocks(plan.micro), len(plan.micro.graph_model.operators))
    at = _source_positions(plan.micro)
    candidates = [op for op in levels if level.get(op, -1) + 1 < len(levels[op])]
    return max(candidates, key=lambda op: (timeline[at[op]], -op), default=None)


def _too_small(model: Model, budget: int, plan: TilePlan) -> str:
    kind = model.opcode_name(plan.peak_op)
    return (f"RAM budget {budget} bytes is below the smallest TFLM arena this model reaches with weight tiles: "
            f"{plan.arena} bytes predicted ({plan.head} planned + {plan.tail} TFLM persistent), set by "
            f"operator {plan.peak_op} ({kind}), whose step holds {plan.peak_bytes} bytes of live activations "
            "and weight tiles")
