"""Combining: concurrent callers' items applied together, one batch at a time.

Made for the hot aggregates: every marketplace sale credits its seller and the platform's one
account, and saving each sale alone would serialise every worker thread on those accounts (each
save conflicting with the others and retrying). A caller hands its item over and waits; whoever
gets the turn applies everything handed over so far in one call. A batch that fails is applied
again item by item, so one bad item fails only its own caller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


class Combiner(Generic[T]):
    def __init__(self, apply: Callable[[Sequence[T]], object], max_batch: int = 500) -> None:
        self._apply = apply
        self._max_batch = max_batch
        self._pending: list[tuple[T, Future[None]]] = []
        self._pending_lock = threading.Lock()
        self._turn = threading.Lock()

    def submit(self, item: T) -> None:
        """Returns once ``item`` is applied (with others, or alone); raises what applying it
        alone raised."""
        done: Future[None] = Future()
        with self._pending_lock:
            self._pending.append((item, done))
        while not done.done():
            with self._turn:
                if done.done():  # the last turn's batch had it
                    break
                with self._pending_lock:
                    batch = self._pending[: self._max_batch]
                    del self._pending[: self._max_batch]
                self._run(batch)
        done.result()

    def _run(self, batch: list[tuple[T, Future[None]]]) -> None:
        try:
            self._apply([item for item, _ in batch])
        except Exception as error:  # noqa: BLE001 - handed to its caller, or each tried alone
            if len(batch) == 1:
                batch[0][1].set_exception(error)
                return
            for one in batch:
                self._run([one])
            return
        for _, done in batch:
            done.set_result(None)
