"""The supervisor loop's timers: due actions run in order, the rest wait."""

from __future__ import annotations

import time

from sftpjail.timers import Timers


def test_due_actions_run_in_the_order_they_were_scheduled() -> None:
    timers = Timers()
    ran: list[str] = []
    timers.schedule(0, lambda: ran.append("first"))
    timers.schedule(0, lambda: ran.append("second"))
    timers.schedule(-1, lambda: ran.append("overdue"))

    timers.run_due()

    assert ran == ["overdue", "first", "second"]


def test_an_action_not_yet_due_waits_and_sets_the_wait() -> None:
    timers = Timers()
    ran: list[str] = []
    timers.schedule(0.3, lambda: ran.append("later"))

    wait = timers.run_due()

    assert ran == []
    assert 0 < wait <= 0.3


def test_the_wait_is_capped_so_the_loop_wakes_up() -> None:
    timers = Timers()
    timers.schedule(60, lambda: None)

    assert timers.run_due() == 1.0
    assert Timers().run_due() == 1.0


def test_an_action_may_schedule_another_that_is_already_due() -> None:
    timers = Timers()
    ran: list[str] = []
    timers.schedule(0, lambda: timers.schedule(0, lambda: ran.append("chained")))

    timers.run_due()

    assert ran == ["chained"]


def test_an_action_runs_once_its_delay_has_passed() -> None:
    timers = Timers()
    ran: list[float] = []
    scheduled = time.monotonic()
    timers.schedule(0.05, lambda: ran.append(time.monotonic()))

    deadline = scheduled + 5
    while not ran and time.monotonic() < deadline:
        time.sleep(timers.run_due())

    assert ran and ran[0] - scheduled >= 0.05
