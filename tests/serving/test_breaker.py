"""The circuit breaker's states on a clock the test moves."""

from __future__ import annotations

import asyncio

import pytest

from serving.breaker import Breaker
from serving.failures import StageFailed, call_stage


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_failures_in_a_row_then_lets_one_trial_through() -> None:
    clock = Clock()
    b = Breaker("recall", failures=3, cooldown_s=2.0, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    b.success()  # a success in between: the count starts again
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert not b.allow() and "3 failures in a row" in b.reason()  # open: skipped at once
    clock.now += 2.5
    assert b.allow()  # half-open: one trial...
    assert not b.allow()  # ...and only one while it is in flight
    b.failure()
    assert not b.allow()  # the trial failed: open again for a cooldown
    clock.now += 2.5
    assert b.allow()
    b.success()
    assert b.allow() and b.allow()  # closed
    assert Breaker("x", failures=0, cooldown_s=1.0).allow()  # 0 switches it off


def test_an_open_breaker_skips_the_call_without_making_it() -> None:
    clock = Clock()
    b = Breaker("recall", failures=1, cooldown_s=5.0, clock=clock)
    calls = []

    async def slow():
        calls.append(1)
        await asyncio.sleep(10)

    async def run():
        with pytest.raises(StageFailed, match="timeout after 50 ms"):
            await call_stage("recall", slow, 50, b)
        with pytest.raises(StageFailed, match="skipped: 1 failures in a row"):
            await call_stage("recall", slow, 50, b)

    asyncio.run(run())
    assert len(calls) == 1  # the second request waited for nothing
