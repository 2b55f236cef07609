"""The planner: memory and flash-traffic plans computed from the graph alone (pure: model in,
numbers out), and what the runtimes choose from them.

    memory     liveness of activations and weight segments, strategies (resident, per-operator,
               prefetch k), lower bounds, TFLite Micro's greedy arena layout   -> plan_model, Plan
    latency    one inference simulated with flash reads overlapped with compute -> estimate_latency
    stages     stage partitions of the LiteRT stage runtime and their cost model -> partition_stages

The stage partition's policy constants (MIN_RESIDENT_BYTES, the cost models) live in
`tflm_swap.planner.stages`; patch them there.
"""

from .latency import LatencyEstimate, estimate_latency
from .memory import (
    ARENA_ALIGNMENT,
    Block,
    OpCost,
    Plan,
    StrategyPlan,
    WeightGroup,
    activation_blocks,
    activation_tensors,
    greedy_arena,
    live_bytes,
    op_macs,
    packed_arena,
    plan_model,
    weight_blocks,
    weight_groups,
)
from .stages import (
    BUILTIN_COSTS,
    XNNPACK_COSTS,
    XNNPACK_PAGED_COSTS,
    CostModel,
    Stage,
    min_stage_budget,
    partition_stages,
    simulate_invoke,
    stage_of,
    streamed_bytes,
)

__all__ = [
    "ARENA_ALIGNMENT", "BUILTIN_COSTS", "XNNPACK_COSTS", "XNNPACK_PAGED_COSTS", "Block", "CostModel",
    "LatencyEstimate", "OpCost", "Plan", "Stage", "StrategyPlan", "WeightGroup", "activation_blocks",
    "activation_tensors", "packed_arena",
    "estimate_latency", "greedy_arena", "live_bytes", "min_stage_budget", "op_macs", "partition_stages",
    "plan_model", "simulate_invoke", "stage_of", "streamed_bytes", "weight_blocks", "weight_groups",
]
