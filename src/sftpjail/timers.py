"""Timers of the supervisor's loop: run an action once a delay has passed.

The supervisor's `selectors` loop has no asyncio to keep time for it.  A
heap of (due time, order, action) is enough: the loop asks `run_due` for
the actions that are due and for how long it may then wait in `select`.
The order number runs actions due at the same time first in, first out,
and spares the heap from ever comparing two actions.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable

Action = Callable[[], None]

# The loop wakes at least this often even with no timer due, so it notices
# the shutdown deadline, which has no timer of its own.
_LONGEST_WAIT = 1.0


class Timers:
    """Actions waiting for their time, soonest first."""

    def __init__(self) -> None:
        self._waiting: list[tuple[float, int, Action]] = []
        self._order = itertools.count()

    def schedule(self, delay: float, action: Action) -> None:
        """Run `action` once `delay` seconds have passed."""

        due = time.monotonic() + delay
        heapq.heappush(self._waiting, (due, next(self._order), action))

    def run_due(self) -> float:
        """Run every action that is due; return the wait until the next one."""

        while self._waiting:
            due, _order, action = self._waiting[0]
            wait = due - time.monotonic()
            if wait > 0:
                return min(wait, _LONGEST_WAIT)
            heapq.heappop(self._waiting)
            action()
        return _LONGEST_WAIT
