"""Coalesced user reads: the profiles requested while one online read runs are read together in the next one.

One reader thread per replica takes every user id queued since its last read and reads them in one store call
(one SQL query per feature view on the embedded SQLite store, one HTTP request to the feature server), then hands
the answers back to the event loop in one wake-up. Why not a thread hop per request (`asyncio.to_thread`):
at concurrency 8, eight pool threads contending for the GIL and the store's one connection cost 0.6 ms of CPU per
read here against 0.1 ms for the read itself; coalesced, 0.09 ms (README, measurement log). Nothing waits to fill
a batch: a read alone goes at once; a batch is only what queued behind the read before it.

The caller keeps its own timeout (`serving.features.read_user`): an answer that comes after it is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

Rows = Callable[[Sequence[int]], Sequence[Any]]  # ids → one store row per id, in order (raises: all failed)
Convert = Callable[[int, Any], Any]  # (id, row) → the answer (raises: that user's read failed)


class CoalescedReads:
    def __init__(self, rows: Rows, convert: Convert, max_batch: int = 64) -> None:
        self._rows, self._convert, self.max_batch = rows, convert, max_batch
        self._queue: queue.SimpleQueue[tuple[int, asyncio.AbstractEventLoop, asyncio.Future]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches = 0  # store reads made, and the users they carried: their ratio is the mean batch size
        self.users = 0

    async def read(self, user_id: int) -> Any:
        """This user's answer, read with whichever reads are queued with it; the store's exception if it failed."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._start()
        self._queue.put((user_id, loop, fut))
        return await fut

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="user-reads", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            answers = self._answer([user_id for user_id, _, _ in batch])
            self.batches, self.users = self.batches + 1, self.users + len(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
            for (_, loop, fut), answer in zip(batch, answers, strict=True):
                by_loop.setdefault(loop, []).append((fut, answer))
            for loop, pairs in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits for these any more
                    loop.call_soon_threadsafe(_deliver, pairs)

    def _answer(self, ids: list[int]) -> list[Any]:
        """One store read for all ids; each row converted on its own, so one bad row fails only its user."""
        try:
            rows = self._rows(ids)
        except Exception as e:  # the store is down or refused: every read in the batch gets the error
            return [e] * len(ids)
        out: list[Any] = []
        for user_id, row in zip(ids, rows, strict=True):
            try:
                out.append(self._convert(user_id, row))
            except Exception as e:
                out.append(e)
        return out


def _deliver(pairs: list[tuple[asyncio.Future, Any]]) -> None:
    """On the event loop: each waiting read gets its answer or its exception; one its caller gave up on is left."""
    for fut, answer in pairs:
        if fut.done():
            continue
        if isinstance(answer, Exception):
            fut.set_exception(answer)
        else:
            fut.set_result(answer)
