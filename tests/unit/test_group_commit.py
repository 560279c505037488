from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError

from application.group_commit import GroupCommit


class Item:
    """Like an aggregate: its pending events are handed over once, then gone."""

    def __init__(self, name: str) -> None:
        self.pending = [name]

    def collect_events(self) -> list[str]:
        events, self.pending = self.pending, []
        return events


class Store:
    """Saves atomically; refuses a whole save if any item is a duplicate."""

    def __init__(self) -> None:
        self.saved: list[Any] = []
        self.calls: list[int] = []
        self.gate = threading.Event()

    def save(self, *items: Any) -> None:
        self.gate.wait(5)
        self.calls.append(len(items))
        if len(set(items)) < len(items) or set(items) & set(self.saved):
            raise IntegrityError("duplicate")
        self.saved.extend(items)


def test_concurrent_saves_share_transactions_and_a_conflict_stays_with_its_caller() -> None:
    store = Store()
    commit = GroupCommit(store.save)

    def save(item: str) -> str:
        try:
            commit.save(Item(item))
        except IntegrityError:
            return "refused"
        return "saved"

    with ThreadPoolExecutor(max_workers=12) as pool:
        futures = [pool.submit(save, item) for item in [*"abcdefghij", "a"]]
        store.gate.set()
        outcomes = [f.result() for f in futures]
    assert outcomes.count("saved") == 10
    assert outcomes.count("refused") == 1
    assert sorted(store.saved) == sorted("abcdefghij")
    assert len(store.calls) < 11 + 11  # batched: fewer transactions than one per save, plus retries
    assert max(store.calls) > 1


def test_a_lone_save_raises_its_own_error() -> None:
    store = Store()
    store.gate.set()
    commit = GroupCommit(store.save)
    commit.save(Item("x"))
    with pytest.raises(IntegrityError):
        commit.save(Item("x"))
    assert store.saved == ["x"]
