"""Futures of the stage runtime's loads: a paged stage's page-in (`PageIn`, see runtime.compiled)
and an executor that runs loads at once on the calling thread (`InlineExecutor`, no prefetch)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

from .compiled import CompiledStage

Loaded = TypeVar("Loaded")


class PageIn(Generic[Loaded]):
    """A paged stage's load in progress, with the part of Future's surface SwapInterpreter uses:
    the result is `loaded`, once the stage's pages are in and pass their CRC32 (`crc`).

    `on_failure()` runs once if they do not (the caller gives the pages back), `on_done(seconds)`
    once they do, with the time the page-in took."""

    def __init__(self, stage: CompiledStage, crc: int, loaded: Loaded, on_failure: Callable[[], None],
                 on_done: Callable[[float], None]):
        self._stage, self._crc, self._pending_result = stage, crc, loaded
        self._on_failure, self._on_done = on_failure, on_done
        self._loaded: Loaded | None = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._loaded is not None or self._error is not None or self._stage.page_in_done()

    def exception(self) -> BaseException | None:
        try:
            self.result()
        except BaseException as exc:
            return exc
        return None

    def result(self) -> Loaded:
        if self._loaded is None and self._error is None:
            try:
                seconds = self._stage.finish_page_in(self._crc)
            except BaseException as exc:
                self._error = exc
                self._on_failure()  # not loaded after all: its pages go, and it is no longer held
            else:
                self._loaded = self._pending_result
                self._on_done(seconds)
        if self._error is not None:
            raise self._error
        return self._loaded


class InlineExecutor:
    """ThreadPoolExecutor's submit/shutdown, running each call at once on the calling thread."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # delivered by future.result(), as from a thread
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass
