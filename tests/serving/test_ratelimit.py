"""Per-key token bucket: a burst passes, the next request waits, keys do not share a bucket."""

from __future__ import annotations

import pytest

from serving.ratelimit import RateLimiter, retry_after


def test_burst_then_refill_at_the_rate():
    rl = RateLimiter(rate_per_s=10, burst=5)
    assert [rl.acquire("k", now=0.0) for _ in range(5)] == [0.0] * 5
    wait = rl.acquire("k", now=0.0)
    assert wait == pytest.approx(0.1)  # one token comes back every 1/rate seconds
    assert rl.acquire("k", now=0.1) == 0.0
    assert rl.acquire("other", now=0.1) == 0.0  # a different key has its own bucket
    assert rl.acquire("k", cost=3, now=0.15) == pytest.approx(0.25)  # 0.5 token there, 3 needed


def test_rate_zero_is_unlimited_and_retry_after_is_whole_seconds():
    rl = RateLimiter(rate_per_s=0, burst=1)
    assert all(rl.acquire("k", now=0.0) == 0.0 for _ in range(100))
    assert retry_after(0.01) == "1" and retry_after(1.2) == "2"


def test_keys_are_not_kept_in_clear():
    rl = RateLimiter(rate_per_s=1, burst=1)
    rl.acquire("secret-key-123", now=0.0)
    assert "secret-key-123" not in repr(rl._buckets)
