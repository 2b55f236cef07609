"""Class groups by hierarchical clustering (scikit-learn), and the automatic choice of their number.

Two signatures of a class are supported: the mean penultimate activation of the trained
monolithic model over the class's samples ('activations', Ward linkage on standardised means), and
its row of the row-normalised, symmetrised *soft* confusion matrix ('confusion': the model's mean
predicted probabilities per true class, average linkage on 1 - confusion affinity; an accurate
model makes too few hard mistakes on its training data to group by them). Both are
deterministic: agglomerative clustering has no random state, and groups are numbered by their
smallest class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import TflmSwapError

METHODS = ("activations", "confusion")


@dataclass
class GroupChoice:
    """One candidate number of groups and the figures the objective weighed."""

    n_groups: int
    groups: list[list[int]]
    route_accuracy: float  # of a cheap proxy router (logistic regression on pooled pixels)
    loaded_fraction: float  # router share + one specialist's target share of the monolithic weights
    objective: float


def cluster_classes(signatures: np.ndarray, n_groups: int, method: str = "activations") -> list[list[int]]:
    """Group classes (rows of `signatures`) into `n_groups` clusters; sorted lists of class ids."""
    from sklearn.cluster import AgglomerativeClustering

    n_classes = len(signatures)
    if not 2 <= n_groups <= n_classes:
        raise TflmSwapError(f"n_groups must be between 2 and the number of classes ({n_classes}), got {n_groups}")
    if method == "activations":
        z = (signatures - signatures.mean(0)) / (signatures.std(0) + 1e-8)
        tree = AgglomerativeClustering(n_clusters=1, linkage="ward", compute_full_tree=True).fit(z)
    elif method == "confusion":
        tree = AgglomerativeClustering(n_clusters=1, metric="precomputed", linkage="average",
                                       compute_full_tree=True).fit(signatures)
    else:
        raise TflmSwapError(f"unknown group method {method!r}; choose one of {METHODS}")
    return _cut_largest_first(tree.children_, n_classes, n_groups)


def _cut_largest_first(children: np.ndarray, n_leaves: int, n_groups: int) -> list[list[int]]:
    """Cut the dendrogram top-down, always splitting the largest cluster (ties: the later merge),
    so that groups stay balanced and hence specialists similar in size."""
    def leaves(node: int) -> list[int]:
        if node < n_leaves:
            return [node]
        a, b = children[node - n_leaves]
        return leaves(int(a)) + leaves(int(b))

    clusters = [2 * n_leaves - 2]
    while len(clusters) < n_groups:
        node = max((c for c in clusters if c >= n_leaves), key=lambda c: (len(leaves(c)), c))
        clusters.remove(node)
        clusters.extend(int(c) for c in children[node - n_leaves])
    return sorted((sorted(leaves(c)) for c in clusters), key=lambda g: g[0])


def class_signatures(model, x: np.ndarray, y: np.ndarray, n_classes: int, method: str = "activations",
                     batch_size: int = 256) -> np.ndarray:
    """Per-class signature for `cluster_classes`: mean penultimate activation, or a confusion distance."""
    if method == "activations":
        from .models import penultimate

        feats = penultimate(model).predict(x, batch_size=batch_size, verbose=0)
        missing = [c for c in range(n_classes) if not np.any(y == c)]
        if missing:
            raise TflmSwapError(f"classes {missing} have no samples; every class needs examples to be grouped")
        return np.stack([feats[y == c].mean(0) for c in range(n_classes)])
    if method == "confusion":
        from .training import teacher_probabilities

        probs = teacher_probabilities(model, x, batch_size=batch_size)
        cm = np.zeros((n_classes, n_classes))
        np.add.at(cm, y, probs)  # soft confusion: an accurate model makes too few hard mistakes to group by
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1e-12)
        affinity = (cm + cm.T) / 2
        np.fill_diagonal(affinity, 0)
        distance = 1.0 - affinity / max(affinity.max(), 1e-12)
        np.fill_diagonal(distance, 0)
        return distance
    raise TflmSwapError(f"unknown group method {method!r}; choose one of {METHODS}")


def specialist_fraction(group_size: int, n_classes: int, total: float = 1.0, cap: float = 0.4,
                        floor: float = 0.15) -> float:
    """Default size target of one specialist as a share of the monolithic weights: its share of the
    classes times `total` (so that the specialists together are about the monolithic size), clipped
    to [floor, cap] (router + one specialist stay under half of the monolithic weights)."""
    return float(np.clip(total * group_size / n_classes, floor, cap))


def choose_groups(signatures: np.ndarray, x: np.ndarray, y: np.ndarray, candidates: tuple[int, ...],
                  method: str = "activations", router_fraction: float = 0.1, accuracy_weight: float = 10.0,
                  seed: int = 0, max_samples: int = 3000) -> list[GroupChoice]:
    """Score each candidate number of groups; the best (lowest objective) comes first.

    objective = loaded_fraction + accuracy_weight * (1 - route_accuracy), where loaded_fraction is
    the router's share plus the class-weighted mean specialist target share (`specialist_fraction`) of the
    monolithic weights, and route_accuracy is that of a logistic regression on 2x-pooled pixels predicting the
    group (a cheap stand-in for the tiny router, measured on a held-out third). With the default
    weight, one point of routing accuracy is worth 10% of the monolithic weights.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    n = min(len(x), max_samples)
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(x))[:n]
    feats = _pooled(x[pick])
    choices = []
    for k in candidates:
        if not 2 <= k <= len(signatures):
            continue
        groups = cluster_classes(signatures, k, method)
        g = group_labels(y[pick], groups)
        xa, xb, ga, gb = train_test_split(feats, g, test_size=1 / 3, random_state=seed)
        acc = float(LogisticRegression(max_iter=300).fit(xa, ga).score(xb, gb))
        n_classes = len(signatures)
        loaded = router_fraction + sum(len(gr) / n_classes * specialist_fraction(len(gr), n_classes) for gr in groups)
        choices.append(GroupChoice(k, groups, acc, loaded, loaded + accuracy_weight * (1 - acc)))
    if not choices:
        raise TflmSwapError(f"no usable candidate number of groups in {candidates} for {len(signatures)} classes")
    return sorted(choices, key=lambda c: (c.objective, c.n_groups))


def group_labels(y: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """Group index of every label."""
    lookup = class_to_group(groups)
    return lookup[np.asarray(y, dtype=np.int64)]


def class_to_group(groups: list[list[int]]) -> np.ndarray:
    """Array mapping class id -> group index (checks the groups partition 0..n_classes-1)."""
    check_partition(groups)
    n = sum(len(g) for g in groups)
    lookup = np.empty(n, dtype=np.int64)
    for gi, g in enumerate(groups):
        lookup[g] = gi
    return lookup


def check_partition(groups: list[list[int]], n_classes: int | None = None) -> None:
    """Raise unless `groups` are non-empty and cover 0..n_classes-1 exactly once."""
    flat = [c for g in groups for c in g]
    n = len(flat) if n_classes is None else n_classes
    if any(len(g) == 0 for g in groups):
        raise TflmSwapError("class groups must not be empty")
    if sorted(flat) != list(range(n)):
        dup = sorted({c for c in flat if flat.count(c) > 1})
        miss = sorted(set(range(n)) - set(flat))
        extra = sorted(set(flat) - set(range(n)))
        raise TflmSwapError(f"class groups are not a partition of the labels 0..{n - 1}: "
                            f"duplicated {dup}, missing {miss}, out of range {extra}")


def _pooled(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    if h >= 8:
        x = x[:, :h, :w].reshape(len(x), h // 2, 2, w // 2, 2, -1).mean((2, 4))
    return x.reshape(len(x), -1)
