"""The popularity channel follows the event stream: decayed interaction counts, not only the last rebuild's.

popularity(i, now) = rebuilt(i) · d(now − built) + Σ over logged events e on i after `built` of d(now − received(e)),
with d(t) = 2^(−t / half-life): the rebuild's count (Feast's `popularity`, as of the export) ages like any event,
and every event logged since adds one. Events before `built` are already in the rebuilt count (a retrain merges
them), so they are skipped. Sums are kept as Σ exp((t − t0)/τ) against a reference t0, so an event costs one add
and a read one multiply; t0 moves forward before the exponent could overflow.
"""

from __future__ import annotations

import math

import numpy as np

START = "0"


class ItemHeat:
    """Decayed event counts per item, fed from the event log's `item_stream` by `poll`."""

    def __init__(self, half_life_s: float, since: float) -> None:
        self.tau = half_life_s / math.log(2)
        self.since = since  # events received before it are in the rebuilt counts already
        self.t0 = since
        self.sums: dict[int, float] = {}
        self.cursor = START

    def add(self, events: list[tuple[int, float]]) -> int:
        """Count these (item_id, received) events; returns how many were after `since`."""
        n = 0
        for item, t in events:
            if t <= self.since:
                continue
            if (t - self.t0) / self.tau > 300:
                self._rebase(t)
            self.sums[item] = self.sums.get(item, 0.0) + math.exp((t - self.t0) / self.tau)
            n += 1
        return n

    def _rebase(self, t: float) -> None:
        f = math.exp(-(t - self.t0) / self.tau)
        self.sums = {i: s * f for i, s in self.sums.items()}
        self.t0 = t

    def poll(self, log, limit: int = 5000) -> int:
        """Read the events logged since the last poll (all of them, a page at a time)."""
        n = 0
        while True:
            events, self.cursor = log.item_stream(self.cursor, limit)
            n += self.add(events)
            if len(events) < limit:
                return n

    def decayed(self, item_ids: np.ndarray, rebuilt: np.ndarray, now: float) -> np.ndarray:
        """popularity(i, now) for these items (see the module note), given their rebuilt counts."""
        base = rebuilt.astype(np.float64) * math.exp(-(now - self.since) / self.tau)
        if not self.sums:
            return base
        f = math.exp(-(now - self.t0) / self.tau)
        heat = np.fromiter((self.sums.get(int(i), 0.0) for i in item_ids), dtype=np.float64, count=len(item_ids))
        return base + heat * f
