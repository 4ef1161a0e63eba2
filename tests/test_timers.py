"""The supervisor loop's timers: due actions run in order, the rest wait."""

from __future__ import annotations

import time

import pytest

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


def test_an_action_scheduled_by_another_waits_for_the_next_turn() -> None:
    timers = Timers()
    ran: list[str] = []
    timers.schedule(0, lambda: timers.schedule(0, lambda: ran.append("chained")))

    first_wait = timers.run_due()
    ran_in_the_first_turn = list(ran)
    timers.run_due()

    # The loop gets to select between the two, without sleeping.
    assert (ran_in_the_first_turn, first_wait) == ([], 0.0)
    assert ran == ["chained"]


def test_steps_that_schedule_each_other_take_one_turn_each() -> None:
    timers = Timers()
    steps: list[int] = []

    def step() -> None:
        steps.append(len(steps))
        if len(steps) < 5:
            timers.schedule(0, step)

    timers.schedule(0, step)
    turns = 0
    while len(steps) < 5 and turns < 20:
        timers.run_due()
        turns += 1

    assert steps == [0, 1, 2, 3, 4]
    assert turns == 5


def test_an_action_runs_once_its_delay_has_passed() -> None:
    timers = Timers()
    ran: list[float] = []
    scheduled = time.monotonic()
    timers.schedule(0.05, lambda: ran.append(time.monotonic()))

    deadline = scheduled + 5
    while not ran and time.monotonic() < deadline:
        time.sleep(timers.run_due())

    assert ran and ran[0] - scheduled >= 0.05


def test_a_failing_action_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timers = Timers()
    ran: list[str] = []

    def fail() -> None:
        raise RuntimeError("a mistake")

    timers.schedule(0, fail)
    timers.schedule(0, lambda: ran.append("after"))
    timers.run_due()

    assert ran == ["after"]
    assert "A timed action failed" in caplog.text
    assert "a mistake" in caplog.text
