"""Text that PostgreSQL can store: its ``text`` and ``jsonb`` refuse the NUL character.

A NUL inside a value we accept would be recorded in the event store (which stores bytes) and
then fail every projection that writes it, for ever. So values are checked where they enter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def nul_paths(value: Any, path: str) -> list[str]:
    """The dotted paths of every string, or object key, in a JSON value that holds a NUL."""
    found: list[str] = []
    if isinstance(value, str):
        if "\x00" in value:
            found.append(path)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                found.append(path or "(key)")
            found.extend(nul_paths(item, where))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found.extend(nul_paths(item, f"{path}.{i}" if path else str(i)))
    return found


NUL_MESSAGE = "may not contain NUL characters"
