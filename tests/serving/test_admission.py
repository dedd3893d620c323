"""Admission control (`serving.admission`): a bounded number of reads in progress, a bounded short wait, a fast
503 with Retry-After past it; driven with real asyncio tasks, and through the Ingress's real ASGI gate."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from serving import gate
from serving.admission import Admission
from serving.failures import Refusal


async def _hold(adm: Admission, release: asyncio.Event, log: list[str], name: str) -> None:
    try:
        async with adm.slot():
            log.append(f"{name} in")
            await release.wait()
    except Refusal as r:
        log.append(f"{name} refused: {r.message}")


def test_requests_within_the_limit_go_through_without_waiting() -> None:
    async def main() -> None:
        adm, release, log = Admission(limit=3, queue=0, wait_ms=10_000), asyncio.Event(), []
        tasks = [asyncio.create_task(_hold(adm, release, log, str(i))) for i in range(3)]
        await asyncio.sleep(0)
        assert log == ["0 in", "1 in", "2 in"] and adm.in_progress == 3
        release.set()
        await asyncio.gather(*tasks)
        assert (adm.in_progress, adm.refused) == (0, 0)

    asyncio.run(main())


def test_past_the_limit_one_waits_for_a_slot_and_past_the_queue_one_is_refused_at_once() -> None:
    async def main() -> None:
        adm, release, log = Admission(limit=2, queue=1, wait_ms=10_000), asyncio.Event(), []
        holders = [asyncio.create_task(_hold(adm, release, log, f"h{i}")) for i in range(2)]
        await asyncio.sleep(0)
        waiter = asyncio.create_task(_hold(adm, asyncio.Event(), log, "waiter"))
        await asyncio.sleep(0)
        assert adm.waiting == 1 and "waiter in" not in log
        with pytest.raises(Refusal) as refused:  # the queue (1) is full: no wait at all
            await adm.acquire()
        r = refused.value
        assert (r.http, r.code, r.retry_after) == (503, grpc.StatusCode.UNAVAILABLE, "1")
        assert r.message.startswith("overloaded: 2 requests in progress and 1 waiting")
        release.set()  # a holder leaves: the waiter gets its slot
        await asyncio.gather(*holders)
        await asyncio.sleep(0)
        assert "waiter in" in log and adm.in_progress == 1
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert (adm.in_progress, adm.waiting, adm.refused) == (0, 0, 1)

    asyncio.run(main())


def test_a_waiter_that_gets_no_slot_in_time_is_refused_while_the_slot_is_still_held() -> None:
    async def main() -> None:
        adm, release, log = Admission(limit=1, queue=5, wait_ms=20), asyncio.Event(), []
        holder = asyncio.create_task(_hold(adm, release, log, "holder"))
        await asyncio.sleep(0)
        await _hold(adm, asyncio.Event(), log, "late")
        assert log[-1] == "late refused: overloaded: no request slot freed within 20 ms; retry after 1 s"
        assert adm.in_progress == 1  # refused before the holder let go: the wait is bounded, not the holder
        release.set()
        await holder

    asyncio.run(main())


def test_refused_and_cancelled_waiters_leave_every_slot_free() -> None:
    """Timeouts and client cancellations racing with releases must not lose a slot (a lost slot is a replica
    that admits less and less until it refuses everything)."""
    async def main() -> None:
        adm = Admission(limit=4, queue=50, wait_ms=5)

        async def request(i: int) -> None:
            async with adm.slot():
                await asyncio.sleep(0.001 * (i % 7))

        for _ in range(5):
            tasks = [asyncio.create_task(request(i)) for i in range(60)]
            await asyncio.sleep(0.003)
            for t in tasks[::3]:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert (adm.in_progress, adm.waiting) == (0, 0) and adm.refused > 0
        for _ in range(4):  # all four slots free: taken without waiting
            await asyncio.wait_for(adm.acquire(), timeout=0.001)
        assert adm.in_progress == 4

    asyncio.run(main())


def test_no_limit_admits_everything() -> None:
    async def main() -> None:
        adm, release, log = Admission(limit=0, queue=0, wait_ms=0), asyncio.Event(), []
        tasks = [asyncio.create_task(_hold(adm, release, log, str(i))) for i in range(100)]
        await asyncio.sleep(0)
        assert len(log) == 100 and adm.refused == 0
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())


@pytest.fixture
def small_admission(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name, value in {"RECSYS_PROFILE": "ci", "RECSYS_HOME": str(tmp_path), "RECSYS_ADMISSION_LIMIT": "1",
                        "RECSYS_ADMISSION_QUEUE": "0"}.items():
        monkeypatch.setenv(name, value)
    gate.replica_settings.cache_clear()
    gate.replica_admission.cache_clear()
    yield
    gate.replica_settings.cache_clear()
    gate.replica_admission.cache_clear()


def test_the_http_gate_answers_503_with_retry_after_while_the_graph_is_full(small_admission) -> None:
    """Through the Ingress's ASGI gate: the second concurrent /recommend gets 503 at once (the graph behind the
    gate is never called for it); health probes are not admitted and so never refused; the slot frees after."""
    async def main() -> None:
        release, reached = asyncio.Event(), []

        async def graph(scope, receive, send) -> None:
            reached.append(scope["path"])
            if scope["path"] == "/recommend":
                await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        async def call(path: str) -> tuple[int, dict[bytes, bytes], bytes]:
            sent: list[dict] = []

            async def receive() -> dict:
                return {"type": "http.request", "body": b'{"user_id": 1}', "more_body": False}

            async def send(message: dict) -> None:
                sent.append(message)

            scope = {"type": "http", "method": "POST", "path": path, "query_string": b"", "http_version": "1.1",
                     "headers": [(b"content-length", b"14")]}
            await gate.Gate(graph)(scope, receive, send)
            start = next(m for m in sent if m["type"] == "http.response.start")
            return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])

        first = asyncio.create_task(call("/recommend"))
        await asyncio.sleep(0.01)
        status, headers, body = await call("/recommend")
        assert (status, headers[b"retry-after"]) == (503, b"1")
        assert json.loads(body)["error"].startswith("overloaded: 1 requests in progress")
        assert reached == ["/recommend"]
        assert (await call("/readyz"))[0] == 200
        release.set()
        assert (await first)[0] == 200
        assert (await call("/recommend"))[0] == 200  # the slot came back

    asyncio.run(main())


def test_the_cli_says_overloaded_as_the_graph_said_it_and_nothing_listening_as_start_it() -> None:
    from serving.client import grpc_failure

    class Failed(grpc.RpcError):
        def __init__(self, code: grpc.StatusCode, details: str) -> None:
            self._code, self._details = code, details

        def code(self) -> grpc.StatusCode:
            return self._code

        def details(self) -> str:
            return self._details

    busy = str(grpc_failure("h:1", Failed(grpc.StatusCode.UNAVAILABLE, "overloaded: no request slot freed")))
    assert busy == "grpc://h:1 answered UNAVAILABLE: overloaded: no request slot freed"
    lost = str(grpc_failure("h:1", Failed(grpc.StatusCode.UNAVAILABLE, "recall unavailable: timeout")))
    assert lost.startswith("grpc://h:1 answered UNAVAILABLE")
    down = str(grpc_failure("h:1", Failed(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")))
    assert down.startswith("no graph at grpc://h:1") and "recsys serve" in down
