"""Turns per key for the threads of one process (a run's nodes finishing at once)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class _Turn:
    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()


class KeyedLocks:
    """``with locks(key):`` one thread at a time per key; a key's lock lives while in use."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._turns: weakref.WeakValueDictionary[Any, _Turn] = weakref.WeakValueDictionary()

    @contextmanager
    def __call__(self, key: Any) -> Iterator[None]:
        with self._guard:
            turn = self._turns.get(key)
            if turn is None:
                turn = self._turns[key] = _Turn()
        with turn.lock:
            yield
