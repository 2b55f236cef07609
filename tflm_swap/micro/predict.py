"""Planner link: predict the TFLM arena of a rewritten graph and compare it with the lower bounds.

Overhead model (checked against TFLM's RecordingMicroAllocator on the MLPerf Tiny models):

- head (non-persistent: activations + staged weights) = the planner's TFLM-faithful greedy layout
  (`planner.greedy_arena`) of the rewritten graph's tensor lifetimes, where every loaded weight is
  an ordinary tensor live from its load operator to its last reader. Exact on all four models.
  A tiled operator adds its arena scratch buffers (tile buffers, depthwise window), each live at
  that operator only, after the tensors in request order (as TFLM's allocation info lists them).
- tail (persistent) = the stock model's tail + `TAIL_PER_LOAD_OP` bytes per inserted operator
  (TFLM's node + registration record and our 24-byte OpData; 64-bit host figure, within 16 bytes;
  `TAIL_PER_ENCODED_LOAD` more when it decodes an encoded segment)
  + at most `TAIL_PER_TILED_OP[kind]` per tiled operator (our OpData is larger than the stock
  kernel's, plus the scratch-buffer handles; an upper bound, measured 48..112 bytes), and with
  encoded tiles each tile's parsed palette header (`PALETTE_RECORD` bytes, the block rounded to 16).
- The per-operator lower bound (`plan.strategies['per_op'].lower_bound`: live activations plus the
  operator's own weights) bounds the head; head / bound is what the rewrite costs over the ideal.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..converters.tflm import OFFLINE_PLAN, MicroModel
from ..format.model import Model
from ..format.segments import DEFAULT_MIN_SEGMENT_BYTES
from ..planner import Block, activation_blocks, activation_tensors, greedy_arena, plan_model

TAIL_PER_LOAD_OP = 120  # bytes of TFLM persistent arena per inserted operator (64-bit host)
# Upper bound of the persistent bytes a tiled operator adds over the stock kernel it replaces.
TAIL_PER_TILED_OP = {"CONV_2D": 80, "DEPTHWISE_CONV_2D": 80, "FULLY_CONNECTED": 112}
TAIL_PER_ENCODED_LOAD = 48  # more for a load operator of an encoded segment (its parsed palette header)
PALETTE_RECORD = 28  # bytes of a tswap_palette: an encoded tiled operator keeps one per tile


@dataclass(frozen=True)
class ArenaPrediction:
    """Predicted TFLM arena of the rewritten graph next to the planner's bounds for the source."""

    head: int
    tail: int | None  # None without the stock model's tail
    per_op_bound: int
    prefetch_bound: int  # planner's prefetch_1 lower bound

    @property
    def total(self) -> int | None:
        return None if self.tail is None else self.head + self.tail

    @property
    def bound(self) -> int:
        """The bound the rewrite is judged against: prefetch_1's with prefetch, else per_op's."""
        return self.per_op_bound


def predict_arena(micro: MicroModel, source: bytes | Model, stock_tail: int | None = None,
                  min_segment_bytes: int = DEFAULT_MIN_SEGMENT_BYTES) -> ArenaPrediction:
    """Predict the arena TFLM allocates for `micro` (rewritten from `source`: bytes, or the `Model`
    parsed from them); `stock_tail` is the persistent arena TFLM reports for the source model (adds
    the tail prediction)."""
    head = predict_head(micro)
    source = source if isinstance(source, Model) else Model.from_bytes(source)
    plan = plan_model(source, prefetch_depths=(1,), min_segment_bytes=min_segment_bytes)
    tail = None if stock_tail is None else predict_tail(micro, stock_tail)
    return ArenaPrediction(head, tail, plan.strategies["per_op"].lower_bound,
                           plan.strategies["prefetch_1"].lower_bound)


def arena_blocks(micro: MicroModel) -> list[Block]:
    """What TFLM's planner lays out for the rewritten graph, in its order: every non-constant tensor
    (loaded weights included) by index, then the tiled operators' scratch buffers in request order."""
    graph = micro.graph_model if micro.graph_model is not None else Model.from_bytes(micro.graph)
    scratch = [Block(f"operator {t.op} scratch {i}", size, t.op, t.op, "scratch")
               for t in micro.tiled for i, size in enumerate(t.scratch)]
    return activation_blocks(graph) + scratch


def predict_head(micro: MicroModel) -> int:
    """TFLM's non-persistent arena for the rewritten graph: its greedy layout of `arena_blocks`, around
    the offsets of the graph's offline plan when it has one."""
    return greedy_arena(arena_blocks(micro), fixed=offline_offsets(micro))[0]


def offline_offsets(micro: MicroModel) -> dict[int, int]:
    """{index in `arena_blocks`: offset} of the graph's OfflineMemoryAllocation plan ({} without one)."""
    graph = micro.graph_model if micro.graph_model is not None else Model.from_bytes(micro.graph)
    blob = graph.metadata(OFFLINE_PLAN)
    if blob is None:
        return {}
    count = struct.unpack_from("<I", blob, 8)[0]
    words = struct.unpack_from(f"<{count}i", blob, 12)
    return {k: words[t] for k, (t, _) in enumerate(activation_tensors(graph)) if words[t] >= 0}


def predict_tail(micro: MicroModel, stock_tail: int) -> int:
    """TFLM's persistent arena for the rewritten graph, from the stock model's (an upper bound when
    the graph has tiled operators)."""
    return (stock_tail + TAIL_PER_LOAD_OP * len(micro.loads)
            + TAIL_PER_ENCODED_LOAD * sum(s.encoded for s in micro.loads)
            + sum(TAIL_PER_TILED_OP[t.kind] + (-(-PALETTE_RECORD * t.tiles // 16) * 16 if t.encoded else 0)
                  for t in micro.tiled))
