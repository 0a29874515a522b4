"""SingleFlight, the piece that lets simultaneous searches share one listing: shared results and
errors, and a forked child that never waits for a call its parent had in flight (nginx forks its
workers from a master that may be loading keys on another thread)."""

from __future__ import annotations

import os
import threading

import pytest

from mhsm_core.lookup import SingleFlight


def test_callers_at_the_same_time_share_one_call_and_its_error() -> None:
    flight, entered, release, calls = SingleFlight(), threading.Event(), threading.Event(), []

    def slow() -> str:
        calls.append(1)
        entered.set()
        release.wait(10)
        raise LookupError("the listing failed")

    outcomes: list[str] = []

    def caller() -> None:
        try:
            flight.do("list", slow)
        except LookupError as exc:
            outcomes.append(str(exc))

    first = threading.Thread(target=caller)
    first.start()
    assert entered.wait(10)
    others = [threading.Thread(target=caller) for _ in range(3)]
    for thread in others:
        thread.start()
    release.set()
    for thread in [first, *others]:
        thread.join(10)
    assert len(calls) == 1 and outcomes == ["the listing failed"] * 4
    assert flight.do("list", lambda: "again") == "again"  # a finished call is not remembered


def test_a_forked_child_does_not_wait_for_its_parents_call() -> None:
    flight, entered, release = SingleFlight(), threading.Event(), threading.Event()
    holder = threading.Thread(target=flight.do, args=("list", lambda: (entered.set(), release.wait(10))))
    holder.start()
    assert entered.wait(10)
    try:
        pid = os.fork()
        if pid == 0:  # the child: its own call, at once
            os._exit(0 if flight.do("list", lambda: "child") == "child" else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        holder.join(10)
    assert os.waitstatus_to_exitcode(status) == 0
