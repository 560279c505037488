"""The one place where optimistic-concurrency conflicts are retried.

Two writers that load the same aggregate version both try to record version N+1; the store
refuses the second (``eventsourcing.persistence.IntegrityError``). The loser reloads and runs the
command again. Attempts are bounded; past the bound the conflict surfaces as
:class:`ConcurrencyConflict`, never as a silent loss.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from eventsourcing.persistence import IntegrityError

from application.errors import ConcurrencyConflict as ConcurrencyConflict

P = ParamSpec("P")
T = TypeVar("T")

MAX_ATTEMPTS = 25
_BASE_DELAY_S = 0.002
_MAX_DELAY_S = 0.1


def retry_on_conflict(fn: Callable[P, T], *, attempts: int = MAX_ATTEMPTS) -> Callable[P, T]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        for attempt in range(attempts):
            try:
                return fn(*args, **kwargs)
            except IntegrityError:
                if attempt == attempts - 1:
                    break
                ceiling = min(_MAX_DELAY_S, _BASE_DELAY_S * 2**attempt)
                time.sleep(random.uniform(0, ceiling))  # noqa: S311 - jitter, not security
        raise ConcurrencyConflict(f"{fn.__qualname__} conflicted {attempts} times") from None

    return wrapper
