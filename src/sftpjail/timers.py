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
import logging
import time
from collections.abc import Callable

Action = Callable[[], None]

logger = logging.getLogger("sftpjail.timers")

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
        """Run the actions due now; return how long the loop may then wait.

        An action scheduled by one of them waits for the next call, even
        when it is already due (a delay of 0 means "next turn"): the loop
        gets to `select` in between, so work split into steps that
        schedule each other lets other connections in.
        """

        now = time.monotonic()
        scheduled_before = next(self._order)
        while self._waiting:
            due, order, action = self._waiting[0]
            if due > now:
                return max(0.0, min(due - time.monotonic(), _LONGEST_WAIT))
            if order > scheduled_before:
                return 0.0
            heapq.heappop(self._waiting)
            _run(action)
        return _LONGEST_WAIT


def _run(action: Action) -> None:
    """Run one action; a failure is logged, never the end of the loop."""

    try:
        action()
    except Exception:
        # A mistake in one action (a measurement, a probe of the store)
        # must not end every session the supervisor serves.
        logger.exception("A timed action failed; the server carries on.")
