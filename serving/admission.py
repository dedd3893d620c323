"""Admission control for /recommend: a bounded number in progress per Ingress replica, a short bounded wait for
a slot, and past that a fast refusal (HTTP 503 with Retry-After, gRPC UNAVAILABLE) instead of a slow answer.

Past the graph's capacity, admitting every request only stretches every answer until the stage timeouts fire
and answers degrade for everyone; refusing the excess at the door keeps admitted requests inside their stage
budgets and tells the rest when to come back. Per replica, nothing shared: the admitted load grows with the
Ingress replica count, and requests waiting here count as ongoing for Serve's autoscaler.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import grpc

from serving.failures import Refusal

RETRY_AFTER_S = "1"


class Admission:
    def __init__(self, limit: int, queue: int, wait_ms: float, on_refuse: Callable[[], None] = lambda: None) -> None:
        """`limit` in progress (0: no limit), at most `queue` waiting, each at most `wait_ms` for a slot."""
        self.limit, self.queue, self.wait_s, self.on_refuse = limit, queue, wait_ms / 1e3, on_refuse
        self.slots = asyncio.Semaphore(max(limit, 1))
        self.in_progress = self.waiting = self.refused = 0

    def _refuse(self, why: str) -> Refusal:
        self.refused += 1
        self.on_refuse()
        return Refusal(503, grpc.StatusCode.UNAVAILABLE, f"overloaded: {why}; retry after {RETRY_AFTER_S} s",
                       retry_after=RETRY_AFTER_S)

    async def acquire(self) -> None:
        """Take a slot (waiting for one within the bounds), or raise a Refusal (503 / UNAVAILABLE)."""
        if self.limit <= 0:
            return
        if self.slots.locked():
            if self.waiting >= self.queue:
                raise self._refuse(f"{self.limit} requests in progress and {self.waiting} waiting on this replica")
            self.waiting += 1
            try:
                async with asyncio.timeout(self.wait_s):
                    await self.slots.acquire()
            except TimeoutError:
                raise self._refuse(f"no request slot freed within {self.wait_s * 1e3:g} ms") from None
            finally:
                self.waiting -= 1
        else:
            await self.slots.acquire()  # a free slot: returns at once
        self.in_progress += 1

    def release(self) -> None:
        if self.limit > 0:
            self.in_progress -= 1
            self.slots.release()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """A slot held for the body of the `async with`; a Refusal if there is none."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()
