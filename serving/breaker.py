"""Circuit breaker per stage: a stage that keeps failing is skipped at once instead of costing every request its
whole timeout.

While Recall is down, each request otherwise waits `features_timeout_ms + recall_timeout_ms` before its degraded
answer: at 32 clients that queue is the outage's real cost. After `failures` failures in a row the breaker
opens: the stage is not called for `cooldown_s` (its degraded answer comes at once, flagged "skipped"); then one
request tries it again (half-open) and its outcome closes or re-opens the breaker. One breaker per stage and
replica: replicas learn on their own, nothing is shared.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Breaker:
    def __init__(self, stage: str, failures: int, cooldown_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stage, self.failures, self.cooldown_s, self.clock = stage, failures, cooldown_s, clock
        self.in_a_row = 0
        self.open_until = 0.0  # while now < open_until the stage is skipped
        self.trial = False  # a half-open trial call is in flight

    def allow(self) -> bool:
        """Whether this request may call the stage (closed, or the one half-open trial)."""
        if self.failures <= 0 or self.in_a_row < self.failures:
            return True
        if self.clock() < self.open_until or self.trial:
            return False
        self.trial = True
        return True

    def success(self) -> None:
        self.in_a_row, self.trial = 0, False

    def failure(self) -> None:
        self.in_a_row += 1
        self.trial = False
        if self.failures > 0 and self.in_a_row >= self.failures:
            self.open_until = self.clock() + self.cooldown_s

    def reason(self) -> str:
        left = max(0.0, self.open_until - self.clock())
        return f"skipped: {self.in_a_row} failures in a row, retried in {left:.1f} s"
