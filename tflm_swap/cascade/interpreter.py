"""CascadeInterpreter: route each input with the tiny router, run the chosen specialist(s), and
return scores in the original label space, keeping the hottest specialists resident in a RAM budget.

Scores: with router probabilities p over groups and a specialist's probabilities q over its
classes, class c of an evaluated group g scores p[g] * q[c]; a class of a group that was not run
scores p[g] / |g| (uniform within the group); a single-class group needs no specialist (p[g]). The
scores of one input sum to 1. Probabilities come from int8 logits through an exp table
(`scores.int8_softmax`), as the generated C API computes them, so both give the same bits.
Fallback when the router's top probability is below the threshold: 'top2' runs the two most
likely groups' specialists, 'full' runs the monolithic model instead, 'none' trusts the router.

Memory: `ram_budget` counts the weight bytes of the models held (router always; specialists
while resident). A specialist that is not resident is loaded (its weight bytes are counted as
loaded by that inference) after evicting others by the `cache` policy: 'lru' (least recently
used) or 'lfu' (least frequently used). With `prefetch=True`, after each inference the most
likely next specialist (most frequent successor of the current group so far, else the most
frequent group) is loaded on a background thread while the caller prepares the next input.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter, OrderedDict, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BudgetError, TflmSwapError
from ..format.model import Model
from ..interpreters import quantize_input
from .bundle import FALLBACK_POLICIES, CascadeBundle, MemberInfo, extract_member
from .scores import probabilities

CACHE_POLICIES = ("lru", "lfu")
BACKENDS = ("litert", "tflm")
_MONO = -1  # cache key of the monolithic model


@dataclass
class InferenceRecord:
    """What one inference did."""

    group: int  # the router's top group
    confidence: float  # its probability
    groups_run: list[int]  # specialists run (or [] with the monolithic fallback)
    monolithic: bool  # the 'full' fallback ran
    bytes_loaded: int  # weight bytes read from flash on demand by this inference
    weights_used: int  # weight bytes of every model run (router + specialists or monolithic)
    prefetched_bytes: int  # weight bytes loaded in the background after it
    seconds: float


class _LiteRTRunner:
    """One member on LiteRT through SwapInterpreter (whole model as one resident stage)."""

    def __init__(self, path: Path, options: dict):
        from ..runtime.interpreter import SwapInterpreter

        self.interpreter = SwapInterpreter(path, ram_budget=None, prefetch=0, **options)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], quantize_input(x, self.input))
        self.interpreter.invoke()
        return probabilities(self.interpreter.get_tensor(self.output["index"]), self.output)

    def close(self) -> None:
        self.interpreter.close()


class _TflmRunner:
    """One member on the official TFLite Micro Python interpreter (plain inline model bytes)."""

    def __init__(self, data: bytes):
        from ..interpreters import tflm_interpreter

        self.interpreter = tflm_interpreter(bytes(Model.from_bytes(data).without_external()))
        self.input = _tflm_details(self.interpreter.get_input_details(0))
        self.output = _tflm_details(self.interpreter.get_output_details(0))

    def run(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_input(quantize_input(x, self.input), 0)
        self.interpreter.invoke()
        return probabilities(self.interpreter.get_output(0), self.output)

    def close(self) -> None:
        self.interpreter = None


class CascadeInterpreter:
    """Run a cascade bundle on LiteRT (via SwapInterpreter) or TFLite Micro within a RAM budget.

    Args:
        bundle: a CascadeBundle, or the path / bytes of a bundle file.
        ram_budget: weight bytes that may be held at once (router + resident models); None: no limit.
        cache: 'lru' or 'lfu' eviction of resident specialists.
        prefetch: load the most likely next specialist in the background after each inference.
        backend: 'litert' or 'tflm'.
        threshold, fallback: override the bundle's low-confidence threshold and policy.
        cache_dir: where LiteRT members are extracted (a temporary directory by default), each as a
            flat file named by its SHA-256 (`bundle.extract_member`), reused only when its bytes match.
        litert_options: passed to SwapInterpreter (backend, reference_kernels, default_delegates,
            num_threads); default_delegates defaults to False so that weights are held once.
    """

    def __init__(self, bundle: CascadeBundle | str | Path | bytes, ram_budget: int | None = None,
                 cache: str = "lru", prefetch: bool = False, backend: str = "litert",
                 threshold: float | None = None, fallback: str | None = None,
                 cache_dir: str | Path | None = None, litert_options: dict | None = None):
        self.bundle = _as_bundle(bundle)
        if cache not in CACHE_POLICIES:
            raise TflmSwapError(f"cache policy {cache!r} is not one of {CACHE_POLICIES}")
        if backend not in BACKENDS:
            raise TflmSwapError(f"backend {backend!r} is not one of {BACKENDS}")
        self.fallback = fallback or self.bundle.fallback["policy"]
        if self.fallback not in FALLBACK_POLICIES or (self.fallback == "full" and self.bundle.monolithic is None):
            raise TflmSwapError(f"fallback {self.fallback!r} is not usable with this bundle "
                                f"(policies {FALLBACK_POLICIES}; 'full' needs the monolithic member)")
        self.threshold = self.bundle.threshold if threshold is None else float(threshold)
        self.cache, self.backend, self.prefetch, self.ram_budget = cache, backend, prefetch, ram_budget
        self._litert_options = {"default_delegates": False, **(litert_options or {})}
        self._check_budget()
        self._own_dir = cache_dir is None
        self._dir = Path(tempfile.mkdtemp(prefix="tflm_swap_cascade_") if cache_dir is None else cache_dir)
        self._resident: OrderedDict[int, object] = OrderedDict()
        self._uses: Counter[int] = Counter()
        self._successors: defaultdict[int, Counter[int]] = defaultdict(Counter)
        self._last_group: int | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._prefetched = 0
        self.records: list[InferenceRecord] = []
        self._router = self._open(self.bundle.router)

    # ------------------------------------------------------------------------------------ API
    def classify(self, x: np.ndarray) -> np.ndarray:
        """Scores over the original labels (sum 1) for one input of the bundle's input shape."""
        x = np.asarray(x, dtype=np.float32)
        if list(x.shape) != list(self.bundle.input_shape):
            raise TflmSwapError(f"input shape {list(x.shape)}, expected {self.bundle.input_shape}")
        self._wait_prefetch()
        started = time.perf_counter()
        p = self._router.run(x[np.newaxis])
        order = np.argsort(-p, kind="stable")
        top = int(order[0])
        confident = p[top] >= self.threshold or self.fallback == "none"
        loaded, used = 0, self.bundle.router.weight_bytes
        if not confident and self.fallback == "full":
            runner, loaded = self._acquire(_MONO)
            scores, run, used = runner.run(x[np.newaxis]), [], used + self.bundle.monolithic.weight_bytes
        else:
            run = [top] if confident else [int(g) for g in order[:2]]
            scores = self._group_prior(p)
            for g in run:
                q, got = self._specialist(g, x)
                loaded += got
                used += self.bundle.specialists[g].weight_bytes
                scores[self.bundle.groups[g]] = p[g] * q
        self._note(top)
        self.records.append(InferenceRecord(top, float(p[top]), run, not run, loaded, used, 0,
                                            time.perf_counter() - started))
        self._start_prefetch(top)
        return scores

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Scores [N, n_classes] for a batch, one inference per input."""
        return np.stack([self.classify(xi) for xi in np.asarray(x, dtype=np.float32)])

    def route(self, x: np.ndarray) -> np.ndarray:
        """Router probabilities [N, n_groups] (no specialist run, nothing recorded)."""
        return np.stack([self._router.run(xi[np.newaxis]) for xi in np.asarray(x, dtype=np.float32)])

    def stats(self) -> dict:
        """Totals over the inferences so far."""
        self._wait_prefetch()
        n = max(len(self.records), 1)
        loaded = sum(r.bytes_loaded for r in self.records)
        return {
            "inferences": len(self.records),
            "bytes_loaded": loaded,
            "prefetched_bytes": self._prefetched,
            "bytes_loaded_per_inference": loaded / n,
            "weights_used_per_inference": sum(r.weights_used for r in self.records) / n,
            "fallback_rate": sum(len(r.groups_run) != 1 for r in self.records) / n,
            "resident": sorted(self._resident),
            "resident_bytes": self._resident_bytes(),
            "ram_budget": self.ram_budget,
            "mean_latency_s": sum(r.seconds for r in self.records) / n,
        }

    def close(self) -> None:
        """Stop the prefetch thread, release every model and remove extracted members."""
        if not hasattr(self, "_resident"):  # __init__ failed before the runtime state existed
            return
        self._wait_prefetch()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for runner in list(self._resident.values()) + [getattr(self, "_router", None)]:
            if runner is not None:
                runner.close()
        self._resident.clear()
        self._router = None
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> CascadeInterpreter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to release
            pass

    # -------------------------------------------------------------------------------- internals
    def _group_prior(self, p: np.ndarray) -> np.ndarray:
        scores = np.zeros(self.bundle.n_classes, dtype=np.float64)
        for g, classes in enumerate(self.bundle.groups):
            scores[classes] = p[g] / len(classes)
        return scores

    def _specialist(self, g: int, x: np.ndarray) -> tuple[np.ndarray, int]:
        if self.bundle.specialists[g].member is None:
            return np.ones(1), 0
        runner, loaded = self._acquire(g)
        return runner.run(x[np.newaxis]), loaded

    def _info(self, key: int) -> MemberInfo:
        return self.bundle.monolithic if key == _MONO else self.bundle.specialists[key]

    def _acquire(self, key: int) -> tuple[object, int]:
        """The runner for `key`, loading it (after evictions) when not resident; (runner, bytes loaded)."""
        self._uses[key] += 1
        if key in self._resident:
            self._resident.move_to_end(key)
            return self._resident[key], 0
        info = self._info(key)
        self._make_room(info.weight_bytes, keep=key)
        self._resident[key] = self._open(info)
        return self._resident[key], info.weight_bytes

    def _make_room(self, need: int, keep: int) -> None:
        if self.ram_budget is None:
            return
        while self._resident and self._resident_bytes() + need > self.ram_budget - self.bundle.router.weight_bytes:
            victim = self._victim(keep)
            if victim is None:
                break
            self._resident.pop(victim).close()

    def _victim(self, keep: int) -> int | None:
        keys = [k for k in self._resident if k != keep]
        if not keys:
            return None
        if self.cache == "lfu":
            return min(keys, key=lambda k: (self._uses[k], list(self._resident).index(k)))
        return keys[0]

    def _resident_bytes(self) -> int:
        return sum(self._info(k).weight_bytes for k in self._resident)

    def _open(self, info: MemberInfo):
        data = self.bundle.member_bytes(info)
        if self.backend == "tflm":
            return _TflmRunner(data)
        return _LiteRTRunner(extract_member(self._dir, info.member, data), self._litert_options)

    def _check_budget(self) -> None:
        if self.ram_budget is None:
            return
        sizes = [s.weight_bytes for s in self.bundle.specialists]
        if self.fallback == "full":
            sizes.append(self.bundle.monolithic.weight_bytes)
        need = self.bundle.router.weight_bytes + max(sizes)
        if self.ram_budget < need:
            raise BudgetError(f"RAM budget {self.ram_budget} bytes is too small for this cascade: the router "
                              f"({self.bundle.router.weight_bytes} B) and the largest model it may load "
                              f"need {need} bytes")

    def _note(self, group: int) -> None:
        if self._last_group is not None:
            self._successors[self._last_group][group] += 1
        self._last_group = group

    def _likely_next(self, group: int) -> int:
        successors = self._successors[group] or Counter(r.group for r in self.records)
        return successors.most_common(1)[0][0]

    def _start_prefetch(self, group: int) -> None:
        if not self.prefetch:
            return
        nxt = self._likely_next(group)
        if nxt in self._resident or self.bundle.specialists[nxt].member is None:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tflm_swap-cascade")
        record = self.records[-1]

        def load() -> None:
            info = self._info(nxt)
            self._make_room(info.weight_bytes, keep=nxt)
            self._resident[nxt] = self._open(info)
            record.prefetched_bytes += info.weight_bytes
            self._prefetched += info.weight_bytes

        self._pending = self._executor.submit(load)

    def _wait_prefetch(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()


def _as_bundle(bundle) -> CascadeBundle:
    if isinstance(bundle, CascadeBundle):
        return bundle
    if isinstance(bundle, (bytes, bytearray, memoryview)):
        return CascadeBundle.from_bytes(bytes(bundle))
    return CascadeBundle.load(bundle)


def _tflm_details(d: dict) -> dict:
    q = d.get("quantization_parameters", {})
    scales, zeros = list(q.get("scales", [])), list(q.get("zero_points", []))
    return {"dtype": d["dtype"], "shape": d["shape"],
            "quantization": (float(scales[0]), int(zeros[0])) if scales else (0.0, 0)}
