"""The router: a tiny Keras classifier of the class group, at most a share of the monolithic costs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import TflmSwapError
from .models import compile_classifier, default_router
from .slimming import count_cost

WIDTHS = (1.0, 0.75, 0.5, 0.35, 0.25)


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
                 learning_rate: float = 2e-3, verbose: int | str = "auto"):
    """Fit the router on group labels (class-balanced: every group weighs the same in the loss)."""
    counts = np.bincount(groups_of_x, minlength=int(groups_of_x.max()) + 1).astype(np.float64)
    weights = {g: float(len(groups_of_x) / (len(counts) * c)) for g, c in enumerate(counts) if c}
    compile_classifier(model, learning_rate)
    model.fit(x, groups_of_x, epochs=epochs, batch_size=batch_size, class_weight=weights, verbose=verbose)
    return model
