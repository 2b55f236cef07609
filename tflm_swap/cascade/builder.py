"""CascadeBuilder: monolithic model -> class groups -> router + slimmed specialists -> int8 bundle.

scikit-learn style: configuration in `__init__`, work in `fit`, results in attributes ending in `_`.
TensorFlow/Keras is imported here (training); the runtime (bundle, interpreter) never imports it.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from ..converters.convert import convert
from ..errors import TflmSwapError
from .bundle import FALLBACK_POLICIES, CascadeBundle
from .groups import METHODS, choose_groups, class_signatures, cluster_classes, group_labels, specialist_fraction
from .models import default_cnn
from .router import choose_threshold, make_router, train_router
from .slimming import count_cost, prunable_layers, select_channels, slim_copy
from .training import fit_classifier, mixed_targets, teacher_probabilities

SIGNATURE_SAMPLES = 5000
CALIBRATION_SAMPLES = 200
THRESHOLD_SAMPLES = 10_000  # inputs the automatic fallback threshold is chosen on


class CascadeBuilder:
    """Build a cascade (router + one slimmed specialist per class group) from a model and labelled data.

    Args:
        n_groups: number of class groups; None chooses among `candidate_groups` (see
            `groups.choose_groups`: router share + one specialist's share of the monolithic weights,
            plus `accuracy_weight` x the error of a cheap proxy router).
        candidate_groups: numbers of groups tried when `n_groups` is None.
        group_method: 'activations' (mean penultimate activations, Ward) or 'confusion'.
        epochs: training epochs of the monolithic model when a model-building function is given.
            Every member is trained with cosine learning-rate decay and its batch-norm statistics
            recomputed afterwards (`training.fit_classifier`); a trained model is taken as it is.
        shift: augmentation of every member's training: images moved by up to this many pixels.
        router_fn: `fn(input_shape, n_groups)` -> Keras model; default: `models.default_router`, narrowed
            until it has at most `router_share` of the monolithic weights and MACs.
        router_epochs: router training epochs.
        specialist_share: size target of each specialist as a share of the monolithic weights;
            None: its share of the classes, clipped to [0.15, 0.4] (`groups.specialist_fraction`).
        gamma_l1: L1 strength on batch-norm gammas during the sparsity fine-tuning.
        sparsity_epochs, finetune_epochs: specialist fine-tuning before and after pruning.
        prune_threshold: prune channels with |gamma| below this instead of meeting `specialist_share`.
        min_channels: channels every prunable layer keeps.
        distill, temperature: weight of the monolithic model's softened probabilities (softmax of
            logits / temperature) in the targets of the router (summed per group) and of the
            specialists (restricted to the group); 0 trains on the labels alone.
        fallback, threshold: low-confidence policy ('top2', 'full', 'none') and router threshold;
            threshold 'auto' takes the highest one whose expected weights and MACs per inference
            (router probabilities on training inputs, Keras counts) stay within `target_share` of the
            monolithic model's (`router.choose_threshold`).
        include_monolithic: put the monolithic int8 model in the bundle (needed by fallback 'full').
        seed: seeds Python, NumPy and TensorFlow (keras.utils.set_random_seed) and the group choice.
        verbose: Keras `verbose` for training (progress bars); 0 silences everything.

    Attributes after `fit`: model_ (monolithic Keras model), groups_, group_choices_, router_,
    specialists_ (Keras models, None for a single-class group), kept_channels_, threshold_ (the
    fallback threshold used) and threshold_choice_ (its expected cost), monolithic_tflite_,
    bundle_ (CascadeBundle).
    """

    def __init__(self, n_groups: int | None = None, candidate_groups: tuple[int, ...] = (2, 3, 4),
                 group_method: str = "activations", epochs: int = 10, batch_size: int = 64,
                 learning_rate: float = 1e-3, router_fn: Callable | None = None, router_share: float = 0.10,
                 router_epochs: int = 10, specialist_share: float | None = None, gamma_l1: float = 1e-4,
                 sparsity_epochs: int = 3, finetune_epochs: int = 3, prune_threshold: float | None = None,
                 min_channels: int = 4, fallback: str = "top2", threshold: float | str = 0.9,
                 target_share: float = 0.4, distill: float = 0.5, temperature: float = 2.0, shift: int = 0,
                 include_monolithic: bool = True, accuracy_weight: float = 10.0, seed: int = 0,
                 verbose: int | str = "auto"):
        self.n_groups, self.candidate_groups, self.group_method = n_groups, candidate_groups, group_method
        self.epochs, self.batch_size, self.learning_rate = epochs, batch_size, learning_rate
        self.router_fn, self.router_share, self.router_epochs = router_fn, router_share, router_epochs
        self.specialist_share, self.gamma_l1 = specialist_share, gamma_l1
        self.sparsity_epochs, self.finetune_epochs = sparsity_epochs, finetune_epochs
        self.prune_threshold, self.min_channels = prune_threshold, min_channels
        self.fallback, self.threshold, self.include_monolithic = fallback, threshold, include_monolithic
        self.target_share, self.distill, self.temperature, self.shift = target_share, distill, temperature, shift
        self.accuracy_weight, self.seed, self.verbose = accuracy_weight, seed, verbose

    # ---------------------------------------------------------------------------------- fit
    def fit(self, model, x: np.ndarray, y: np.ndarray) -> CascadeBuilder:
        """Train (if `model` is a building function `fn(input_shape, n_classes)`) or take the trained
        Keras `model`, then find groups, train the router and the specialists, and bundle them.

        `x`: float images [N, H, W, C] as the model takes them; `y`: integer labels 0..K-1.
        """
        import keras

        x, y = self._check_data(x, y)
        self._check_options()
        keras.utils.set_random_seed(self.seed)
        self.n_classes_ = int(y.max()) + 1
        self.model_ = self._monolithic(model, x, y)
        if not prunable_layers(self.model_):
            raise TflmSwapError("the model has no Conv2D/Dense layer followed by BatchNormalization: network "
                                "slimming needs batch norm after the layers to prune")
        self._log("[cascade] finding class groups")
        self.groups_ = self._find_groups(x, y)
        self._log(f"[cascade] groups: {self.groups_}")
        self.mono_cost_ = count_cost(self.model_)
        self.teacher_ = teacher_probabilities(self.model_, x, self.temperature) if self.distill > 0 else None
        self.router_ = self._router(x, y)
        self.specialists_, self.kept_channels_, self.thresholds_ = [], [], []
        for g, classes in enumerate(tqdm(self.groups_, desc="specialists", disable=self.verbose == 0)):
            self._specialist(g, classes, x, y)
        self.threshold_, self.threshold_choice_ = self._fallback_threshold(x)
        self.bundle_ = self._bundle(x, y)
        return self

    def _check_data(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        x, y = np.asarray(x, dtype=np.float32), np.asarray(y).astype(np.int64).reshape(-1)
        if x.ndim != 4:
            raise TflmSwapError(f"x must be images [N, H, W, C], got shape {x.shape} (add a channel axis)")
        if len(x) != len(y):
            raise TflmSwapError(f"x has {len(x)} samples but y has {len(y)} labels")
        if len(y) == 0 or y.min() < 0 or len(np.unique(y)) < 2:
            raise TflmSwapError("y must hold integer labels 0..K-1 with at least two classes")
        missing = np.setdiff1d(np.arange(min(int(y.max()) + 1, len(y) + 1)), y)
        if len(missing) or int(y.max()) >= len(y):  # checked before a K-way model is built and trained
            raise TflmSwapError(f"y must hold every label 0..K-1 (K = {int(y.max()) + 1}): labels "
                                f"{missing[:10].tolist()} have no samples")
        return x, y

    def _check_options(self) -> None:
        if self.group_method not in METHODS:
            raise TflmSwapError(f"group_method {self.group_method!r} is not one of {METHODS}")
        if self.fallback not in FALLBACK_POLICIES:
            raise TflmSwapError(f"fallback {self.fallback!r} is not one of {FALLBACK_POLICIES}")
        if self.fallback == "full" and not self.include_monolithic:
            raise TflmSwapError("fallback 'full' needs include_monolithic=True")
        if isinstance(self.threshold, str) and self.threshold != "auto":
            raise TflmSwapError(f"threshold must be a number in [0, 1] or 'auto', got {self.threshold!r}")
        if not 0.0 <= self.distill < 1.0 or self.temperature <= 0:
            raise TflmSwapError(f"distill must be in [0, 1) and temperature > 0, got distill={self.distill}, "
                                f"temperature={self.temperature}")

    def _monolithic(self, model, x, y):
        if hasattr(model, "layers") and hasattr(model, "predict"):
            return model
        fn = model if callable(model) else (default_cnn if model is None else None)
        if fn is None:
            raise TflmSwapError(f"model must be a trained Keras model, a function (input_shape, n_classes) -> "
                                f"model, or None for the default CNN; got {type(model).__name__}")
        net = fn(tuple(x.shape[1:]), self.n_classes_)
        self._log(f"[cascade] training the monolithic model ({self.epochs} epochs)")
        fit_classifier(net, x, y, self.epochs, self.batch_size, self.learning_rate, verbose=self.verbose,
                       seed=self.seed, shift=self.shift)
        return net

    def _find_groups(self, x, y) -> list[list[int]]:
        pick = np.random.default_rng(self.seed).permutation(len(x))[:SIGNATURE_SAMPLES]
        signatures = class_signatures(self.model_, x[pick], y[pick], self.n_classes_, self.group_method)
        self.group_choices_ = []
        if self.n_groups is not None:
            return cluster_classes(signatures, self.n_groups, self.group_method)
        self.group_choices_ = choose_groups(signatures, x, y, self.candidate_groups, self.group_method,
                                            self.router_share, self.accuracy_weight, self.seed)
        return self.group_choices_[0].groups

    def _router(self, x, y):
        weights, macs = self.mono_cost_
        limit = (int(weights * self.router_share), int(macs * self.router_share))
        router = make_router(tuple(x.shape[1:]), len(self.groups_), limit, self.router_fn)
        self._log(f"[cascade] training the router ({self.router_epochs} epochs)")
        teacher = None
        if self.teacher_ is not None:  # the monolithic model's probability of each group
            teacher = np.stack([self.teacher_[:, g].sum(1) for g in self.groups_], axis=1)
        return train_router(router, x, group_labels(y, self.groups_), self.router_epochs, self.batch_size,
                            verbose=self.verbose, teacher=teacher, distill=self.distill, seed=self.seed,
                            shift=self.shift)

    def _specialist(self, g: int, classes: list[int], x, y) -> None:
        if len(classes) == 1:
            self.specialists_.append(None)
            self.kept_channels_.append({})
            self.thresholds_.append(None)
            return
        mask = np.isin(y, classes)
        xs, ys = x[mask], np.searchsorted(classes, y[mask])
        if self.teacher_ is not None:
            ys = mixed_targets(ys, self.teacher_[mask][:, classes], self.distill)
        share = self.specialist_share or specialist_fraction(len(classes), self.n_classes_)
        wide = slim_copy(self.model_, None, head=classes, gamma_l1=self.gamma_l1)
        self._train(wide, xs, ys, self.sparsity_epochs, f"group {g} {classes}: sparsity fine-tuning")
        keep, threshold = select_channels(wide, int(self.mono_cost_[0] * share), min_channels=self.min_channels,
                                          threshold=self.prune_threshold)
        slim = slim_copy(wide, keep)
        self._train(slim, xs, ys, self.finetune_epochs, f"group {g}: fine-tuning the pruned specialist")
        self.specialists_.append(slim)
        self.kept_channels_.append({k: v.tolist() for k, v in keep.items()})
        self.thresholds_.append(threshold)

    def _train(self, model, x, y, epochs: int, what: str) -> None:
        if epochs <= 0:
            return
        self._log(f"[cascade] {what} ({epochs} epochs, {len(x)} samples)")
        fit_classifier(model, x, y, epochs, self.batch_size, self.learning_rate, verbose=self.verbose, seed=self.seed,
                       shift=self.shift)

    def _fallback_threshold(self, x) -> tuple[float, dict | None]:
        if self.threshold != "auto":
            return float(self.threshold), None
        pick = np.random.default_rng(self.seed + 1).permutation(len(x))[:THRESHOLD_SAMPLES]
        probs = teacher_probabilities(self.router_, x[pick])
        mono = np.asarray(self.mono_cost_, dtype=np.float64)  # (weights, MACs): both must meet the target
        costs = [(0, 0) if m is None else count_cost(m) for m in self.specialists_]
        threshold, expected = choose_threshold(probs, count_cost(self.router_), costs, mono, self.fallback,
                                               self.target_share * mono)
        share = expected / mono
        self._log(f"[cascade] fallback threshold {threshold} (expected weights / MACs per inference "
                  f"{100 * share[0]:.1f}% / {100 * share[1]:.1f}% of the monolithic model)")
        return threshold, {"threshold": threshold, "expected_weight_share": float(share[0]),
                           "expected_mac_share": float(share[1]), "target_share": self.target_share}

    def _bundle(self, x, y) -> CascadeBundle:
        self._log("[cascade] converting to int8 and segmenting")
        with _quiet():
            return self._convert_all(x, y)

    def _convert_all(self, x, y) -> CascadeBundle:
        rng = np.random.default_rng(self.seed)
        calib = x[rng.permutation(len(x))[:CALIBRATION_SAMPLES]]
        router = convert(self.router_, representative_data=calib).data
        specialists = []
        for classes, model in zip(self.groups_, self.specialists_):
            if model is None:
                specialists.append(None)
                continue
            xs = x[np.isin(y, classes)]
            sample = xs[rng.permutation(len(xs))[:CALIBRATION_SAMPLES]]
            specialists.append(convert(model, representative_data=sample).data)
        mono = convert(self.model_, representative_data=calib)
        self.monolithic_tflite_ = mono.data
        extra = [{"kept_channels": {k: len(v) for k, v in kc.items()}, "prune_threshold": t}
                 for kc, t in zip(self.kept_channels_, self.thresholds_)]
        stats = {"monolithic_weight_bytes": _weight_bytes(mono.data), "seed": self.seed,
                 "group_method": self.group_method,
                 "group_choices": [{"n_groups": c.n_groups, "groups": c.groups,
                                    "proxy_route_accuracy": c.route_accuracy,
                                    "loaded_fraction": c.loaded_fraction, "objective": c.objective}
                                   for c in self.group_choices_],
                 "threshold_choice": self.threshold_choice_, "distill": self.distill, "temperature": self.temperature,
                 "shift": self.shift}
        return CascadeBundle.create(self.groups_, router, specialists,
                                    mono.data if self.include_monolithic else None, self.fallback,
                                    self.threshold_, stats, extra)

    def _log(self, text: str) -> None:
        if self.verbose != 0:
            print(text, flush=True)


@contextlib.contextmanager
def _quiet():
    """Silence the TFLite converter's Python-level chatter (it prints the exported signatures)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _weight_bytes(data: bytes) -> int:
    from .stats import model_stats

    return model_stats(data)["weight_bytes"]


def build(model, x: np.ndarray, y: np.ndarray, **options) -> CascadeBuilder:
    """`CascadeBuilder(**options).fit(model, x, y)`; the bundle is `.bundle_` (save with `.bundle_.save`)."""
    return CascadeBuilder(**options).fit(model, x, y)
