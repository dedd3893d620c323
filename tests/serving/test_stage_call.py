"""`serving.failures.call_stage`: how one stage call ends — its answer, a StageFailed the Ingress turns into a flagged
degraded answer, or (only when this request itself is cancelled) a cancellation; and `within_budget`, the wait
for a stage whose answer may come after its budget.

The stage is an asyncio future standing in for Serve's DeploymentResponse (awaitable + `cancel()`); the live
graph's answers under 32 concurrent clients are measured by `make bench` (serving rows, error kinds).
"""

from __future__ import annotations

import asyncio
import warnings

import pytest

from serving.failures import StageFailed, call_stage, within_budget


class Stage:
    """A pending stage call: awaitable like a DeploymentResponse, and it records `cancel()`."""

    def __init__(self) -> None:
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.cancel_calls = 0

    def __await__(self):
        return self.future.__await__()

    def cancel(self) -> None:
        self.cancel_calls += 1
        self.future.cancel()


def test_an_answer_is_returned() -> None:
    async def main() -> str:
        stage = Stage()
        asyncio.get_running_loop().call_later(0.01, stage.future.set_result, "ranked")
        return await call_stage("ranking", stage, 1000)

    assert asyncio.run(main()) == "ranked"


def test_a_late_stage_is_cancelled_and_becomes_its_stage_failure() -> None:
    async def main() -> tuple[StageFailed, int]:
        stage = Stage()
        with pytest.raises(StageFailed) as e:
            await call_stage("ranking", stage, 20)
        return e.value, stage.cancel_calls

    failed, cancels = asyncio.run(main())
    assert (failed.stage, failed.reason, cancels) == ("ranking", "timeout after 20 ms", 1)


def test_a_call_cancelled_under_us_is_the_stages_failure_not_a_500() -> None:
    """Serve's router cancelled the call (overload), this request was not cancelled: degrade, don't crash."""
    async def main() -> StageFailed:
        stage = Stage()
        asyncio.get_running_loop().call_later(0.01, stage.future.cancel)
        with pytest.raises(StageFailed) as e:
            await call_stage("recall", stage, 1000)
        return e.value

    failed = asyncio.run(main())
    assert failed.stage == "recall" and "cancelled" in failed.reason


def test_a_cancelled_request_stays_cancelled() -> None:
    """The client went away (or the replica stops): the request's own cancellation must propagate."""
    async def main() -> bool:
        stage = Stage()
        task = asyncio.create_task(call_stage("features", stage, 1000))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return stage.future.cancelled()

    assert asyncio.run(main()) is True


def test_a_stage_run_in_this_replica_is_cut_at_its_timeout() -> None:
    """The ranking stage runs in the Ingress as a coroutine: past its timeout it is cancelled (its Triton call
    with it) and becomes the stage's failure; nothing is left un-awaited."""
    ended: list[str] = []

    async def rank() -> str:
        try:
            await asyncio.sleep(10)
            return "ranked"
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    async def main() -> StageFailed:
        with pytest.raises(StageFailed) as e:
            await call_stage("ranking", rank(), 20)
        return e.value

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "coroutine was never awaited" warning fails the test
        failed = asyncio.run(main())
    assert (failed.stage, failed.reason, ended) == ("ranking", "timeout after 20 ms", ["cancelled"])


def test_a_stage_error_says_what_failed_and_keeps_internals_in_the_log(caplog) -> None:
    """The reason reaches the client (degraded answer or 503): no address, actor id or traceback in it; the
    replica's log has the whole line."""

    class ActorDiedError(Exception):  # Ray's own carries the actor id and the node's address
        pass

    async def fail(e: Exception) -> StageFailed:
        async def stage() -> str:
            raise e

        with pytest.raises(StageFailed) as got:
            await call_stage("ranking", stage(), 1000)
        return got.value

    with caplog.at_level("WARNING", logger="ray.serve"):
        local = asyncio.run(fail(ValueError("item rows missing\nipv4:127.0.0.1:28101: connect failed")))
        actor = asyncio.run(fail(ActorDiedError("actor_id=7f3a… died on node 10.0.0.5")))
    assert (local.stage, local.reason) == ("ranking", "error (ValueError)")
    assert actor.reason == "replica unavailable (restarting or overloaded)"
    assert "ipv4:127.0.0.1:28101" in caplog.text and "actor_id=7f3a" in caplog.text


def test_within_budget_returns_an_answer_in_time_and_raises_its_failure() -> None:
    """An answer inside the budget is the request's; a stage failure inside it is raised, as call_stage's is."""
    later: list[str] = []

    async def answer(value: str, after: float) -> str:
        await asyncio.sleep(after)
        return value

    async def main() -> tuple[tuple[bool, str | None], StageFailed]:
        got = await within_budget(answer("copies", 0.01), 1.0, later.append)
        with pytest.raises(StageFailed) as e:
            await within_budget(call_stage("copy", answer("x", 10), 20), 1.0, later.append)
        return got, e.value

    got, failed = asyncio.run(main())
    assert got == (True, "copies") and failed.reason == "timeout after 20 ms" and later == []


def test_an_answer_past_the_budget_is_not_waited_for_and_is_kept_when_it_comes() -> None:
    """The copy stage's budget: the request goes on at the budget (not at the stage's timeout) while the call
    finishes on its own and its answer reaches `later` (the Ingress's near cache); a failure after the budget is
    dropped without an unretrieved-exception warning."""
    later: list[str] = []

    async def answer(value: str, after: float) -> str:
        await asyncio.sleep(after)
        return value

    async def fail(after: float) -> str:
        await asyncio.sleep(after)
        raise StageFailed("copy", "error (RuntimeError)")

    async def main() -> tuple[tuple[bool, str | None], float, tuple[bool, str | None]]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        got = await within_budget(call_stage("copy", answer("late copies", 0.2), 1000), 0.03, later.append)
        waited = loop.time() - t0
        failed = await within_budget(fail(0.05), 0.01, later.append)
        await asyncio.sleep(0.3)  # both calls end meanwhile
        return got, waited, failed

    errors: list[dict] = []

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        errors.append(context)

    async def run() -> tuple[tuple[bool, str | None], float, tuple[bool, str | None]]:
        asyncio.get_running_loop().set_exception_handler(handler)
        return await main()

    got, waited, failed = asyncio.run(run())
    assert got == (False, None) and waited < 0.15  # cut at the budget, not at the 200 ms answer
    assert failed == (False, None) and later == ["late copies"] and errors == []


def test_a_request_cancelled_within_the_budget_cancels_its_call() -> None:
    """The client went away: its call goes with it (as an awaited call_stage would), so the stage's breaker does
    not count it; a call that had already failed when the request was cancelled leaves no unretrieved error."""
    later: list[str] = []
    ended: list[str] = []
    errors: list[dict] = []

    async def answer() -> str:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise
        return "copies"

    gate = asyncio.Event()

    async def fail() -> str:
        await gate.wait()
        raise StageFailed("copy", "error (RuntimeError)")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
        task = asyncio.create_task(within_budget(answer(), 1.0, later.append))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        task = asyncio.create_task(within_budget(fail(), 1.0, later.append))
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.sleep(0)  # the call fails now; the request is cancelled before it hears of it
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert later == [] and ended == ["cancelled"] and errors == []
