"""The router: a tiny Keras classifier of the class group, at most a share of the monolithic costs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import TflmSwapError
from .models import default_router
from .slimming import count_cost
from .training import balanced_weights, fit_classifier, mixed_targets

WIDTHS = (1.0, 0.75, 0.5, 0.35, 0.25)
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)


def _keras_cost(model) -> tuple[int, int]:
    try:
        return count_cost(model)
    except TflmSwapError:  # not a chain slimming understands: fall back to Keras's parameter count
        return int(model.count_params()), 0


def make_router(input_shape: tuple[int, ...], n_groups: int, limit: tuple[int, int],
                router_fn: Callable | None = None):
    """An untrained router within `limit` = (weights, MACs).

    The default router is tried at decreasing widths until it fits; a user `router_fn(input_shape,
    n_groups)` must fit as it is.
    """
    if router_fn is not None:
        model = router_fn(input_shape, n_groups)
        weights, macs = _keras_cost(model)
        if weights > limit[0] or macs > limit[1]:
            raise TflmSwapError(f"the router from router_fn has {weights} weights and {macs} MACs; the limit "
                                f"is {limit[0]} weights and {limit[1]} MACs")
        return model
    for width in WIDTHS:
        model = default_router(input_shape, n_groups, width)
        weights, macs = count_cost(model)
        if weights <= limit[0] and macs <= limit[1]:
            return model
    raise TflmSwapError(f"even the narrowest default router ({weights} weights, {macs} MACs) exceeds the limit "
                        f"of {limit[0]} weights and {limit[1]} MACs; pass router_fn or raise router_share")


def train_router(model, x: np.ndarray, groups_of_x: np.ndarray, epochs: int, batch_size: int,
                 learning_rate: float = 2e-3, verbose: int | str = "auto", teacher: np.ndarray | None = None,
                 distill: float = 0.0, seed: int = 0, shift: int = 0):
    """Fit the router on group labels (class-balanced: every group weighs the same in the loss), with
    cosine learning-rate decay and refreshed batch-norm statistics (`training.fit_classifier`).

    `teacher`: group probabilities [N, n_groups] of the monolithic model (its class probabilities
    summed per group); with `distill` > 0 the targets mix them in (`training.mixed_targets`), so the
    router is unsure where the monolithic model is, and those inputs fall back.
    """
    targets = groups_of_x if teacher is None or distill <= 0 else mixed_targets(groups_of_x, teacher, distill)
    fit_classifier(model, x, targets, epochs, batch_size, learning_rate, sample_weight=balanced_weights(groups_of_x),
                   verbose=verbose, seed=seed, shift=shift)
    return model

def choose_threshold(probs: np.ndarray, router_cost, specialist_costs, monolithic_cost, policy: str,
                     target_cost, grid: tuple[float, ...] = THRESHOLDS) -> tuple[float, np.ndarray | float]:
    """The highest fallback threshold (most fallbacks, hence the most accurate) whose expected cost
    per inference stays within `target_cost`, and that expected cost.

    Costs are numbers, or vectors of several metrics (e.g. weights and MACs) that must all stay
    within their target: `router_cost` [M], `specialist_costs` [n_groups, M], `monolithic_cost` [M],
    `target_cost` [M]. `probs`: router probabilities [N, n_groups] on held-out or training inputs.
    A confident input costs the router + the top group's specialist; a low-confidence one the router
    + the two most likely groups' specialists ('top2') or + the monolithic model ('full'). Without
    any threshold meeting the target, 0.0 (never fall back) is returned.
    """
    scalar = np.ndim(router_cost) == 0
    router, mono = np.atleast_1d(router_cost).astype(np.float64), np.atleast_1d(monolithic_cost).astype(np.float64)
    specs = np.asarray(specialist_costs, dtype=np.float64).reshape(len(specialist_costs), -1)
    order = np.argsort(-probs, axis=1)
    confident_cost = router + specs[order[:, 0]]  # [N, M]
    fallback_cost = router + (specs[order[:, 0]] + specs[order[:, 1]] if policy == "top2" else mono)
    top = probs.max(1)[:, None]
    for threshold in (*sorted(grid, reverse=True), 0.0):
        expected = np.mean(np.where(top >= threshold, confident_cost, fallback_cost), axis=0)
        if threshold == 0.0 or np.all(expected <= np.atleast_1d(target_cost)):
            return float(threshold), float(expected[0]) if scalar else expected
