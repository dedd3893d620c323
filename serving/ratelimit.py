"""Per-key rate limit for write endpoints: a token bucket per API key, per Ingress replica.

A replica-local limit is what can be enforced without a shared store; with R Ingress replicas the cluster-wide
ceiling is R × rate, which the chart's replica count makes explicit. Keys are held as SHA-256 digests so the
limiter's memory never holds a key in clear text.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = max(1, burst)
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str, cost: int = 1, now: float | None = None) -> float:
        """0.0 if `cost` requests may pass now (tokens taken), else seconds until they could."""
        if self.rate <= 0:
            return 0.0  # unlimited
        now = time.monotonic() if now is None else now
        digest = hashlib.sha256(key.encode()).hexdigest()
        b = self._buckets.get(digest)
        if b is None:
            b = self._buckets[digest] = _Bucket(float(self.burst), now)
        b.tokens = min(self.burst, b.tokens + (now - b.stamp) * self.rate)
        b.stamp = now
        if b.tokens >= cost:
            b.tokens -= cost
            return 0.0
        return (cost - b.tokens) / self.rate


def retry_after(seconds: float) -> str:
    """Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
