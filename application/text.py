"""Text that PostgreSQL can store: its ``text`` and ``jsonb`` refuse the NUL character.

A NUL inside a value we accept would be recorded in the event store (which stores bytes) and
then fail every projection that writes it, for ever. So values are checked where they enter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def nul_paths(value: Any, path: str) -> list[str]:
    """The dotted paths of every string, or object key, in a JSON value that holds a NUL
    (walked without recursion: a body may nest as deep as the decoder allows)."""
    found: list[str] = []
    todo: list[tuple[Any, str]] = [(value, path)]
    while todo:
        item, where = todo.pop()
        if isinstance(item, str):
            if "\x00" in item:
                found.append(where)
        elif isinstance(item, Mapping):
            for key, child in item.items():
                if "\x00" in str(key):
                    found.append(where or "(key)")
                todo.append((child, f"{where}.{key}" if where else str(key)))
        elif isinstance(item, list | tuple):
            todo.extend(
                (child, f"{where}.{i}" if where else str(i)) for i, child in enumerate(item)
            )
    return sorted(found)


NUL_MESSAGE = "may not contain NUL characters"
