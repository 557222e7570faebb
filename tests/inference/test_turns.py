"""Predictions take turns: one at a time (by default), in arrival order, a bounded queue."""

from __future__ import annotations

import threading
import time

import pytest

from app.errors import ResourceExhausted
from app.inference.service import FairTurns


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_turns_are_taken_in_arrival_order_and_the_queue_is_bounded() -> None:
    turns = FairTurns()
    entered: list[int] = []
    release = threading.Event()
    refused: list[int] = []

    def caller(number: int) -> None:
        try:
            with turns.turn(slots=1, queue_limit=5):
                entered.append(number)
                if number == 0:
                    release.wait(5)
        except ResourceExhausted:
            refused.append(number)

    threads = []
    for number in range(8):
        thread = threading.Thread(target=caller, args=(number,))
        thread.start()
        threads.append(thread)
        # Each arrives after the one before has its ticket; the first holds the only slot.
        wait_until(lambda n=number: turns._issued + len(refused) == n + 1)
    assert entered == [0]
    assert refused == [6, 7]  # five wait; the sixth and seventh are turned away at once
    release.set()
    for thread in threads:
        thread.join(5)
    assert entered == [0, 1, 2, 3, 4, 5]


def test_slots_let_several_in_and_a_refusal_names_the_limit() -> None:
    turns = FairTurns()
    with (
        turns.turn(slots=2, queue_limit=0),
        turns.turn(slots=2, queue_limit=0),
        pytest.raises(ResourceExhausted, match="the limit is 0"),
        turns.turn(slots=2, queue_limit=0),
    ):
        pass
    with turns.turn(slots=2, queue_limit=0):
        pass  # the slots are free again
