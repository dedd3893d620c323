"""Seeded generator of `/feedback` bodies that are invalid by construction: malformed JSON, wrong types, huge and
non-finite numbers, unknown fields, timestamps far in the future or past, bad batches, deep nesting.

Every body breaks at least one rule and none can be repaired by coercion, so a correct server refuses each with
a 4xx and a message, and stores nothing. Shared by the in-process parser test and the live graph test.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

BAD = {
    "user_id": [-1, "7", True, 1.5, None, [], {}, 2**63, -(2**70), "NaN", "", "１"],
    "item_id": [0, -5, "2", False, 2.25, None, [2], {"id": 2}, 2**64, "1e3"],
    "event_type": ["like", "", "CLICK", None, 1, ["click"], "click\x00", "rate; DROP TABLE events", "x" * 5000],
    "value": [0, 0.49, 5.01, -3, "4", True, [4], 1e308],
    "event_id": ["", "has space", "x" * 65, "ünï", 12, ["a"], "a/b", "<script>"],
    "request_id": ["r" * 65, 7, ["r"], {"r": 1}],
}
RAW = [b"", b"{", b"{not json", b"\xff\xfe\x00", b"null", b"[]", b"42", b'"click"', b"[" * 20_000,
       b'{"events": ' + b"[" * 15_000, b'{"user_id": NaN, "item_id": 1, "event_type": "click"}',
       b'{"user_id": 1, "item_id": Infinity, "event_type": "click"}', b'{"user_id": 1e999, "item_id": 1}']


def _future(rng: random.Random) -> str:
    return (datetime.now(UTC) + timedelta(days=rng.choice([1, 30, 365 * 100]))).isoformat()


def _past() -> str:
    return (datetime.now(UTC) - timedelta(days=365 * 40)).isoformat()


def bodies(n: int, user: int, item: int, seed: int = 0) -> list[bytes]:
    """`n` invalid bodies around a valid event for (user, item): one or more broken fields, a broken batch, or a
    raw malformed body."""
    rng = random.Random(seed)
    out: list[bytes] = []
    while len(out) < n:
        valid = {"user_id": user, "item_id": item, "event_type": "click"}
        kind = rng.random()
        if kind < 0.1:
            out.append(rng.choice(RAW))
            continue
        ev = dict(valid)
        if kind < 0.55:  # one or two fields with a wrong value
            for f in rng.sample(sorted(BAD), rng.choice([1, 2])):
                ev[f] = rng.choice(BAD[f])
                if f == "value":
                    ev["event_type"] = "rate"
        elif kind < 0.65:
            del ev[rng.choice(["user_id", "item_id", "event_type"])]
        elif kind < 0.72:
            ev["event_type"] = "rate"  # a rating without its value
        elif kind < 0.8:
            ev["timestamp"] = rng.choice([_future(rng), _past(), "yesterday", "2026-13-45T25:61:00", 1e30, [2026]])
        elif kind < 0.86:
            ev[rng.choice(["extra", "userId", "__proto__", "score"])] = rng.choice([1, "x", None])
        else:  # a batch: empty, not a list, over 1000, or one bad event among good ones
            shape = rng.choice(["empty", "dict", "many", "mixed", "nested"])
            batch = {"empty": [], "dict": {"0": valid}, "many": [valid] * 1001, "nested": [[valid]],
                     "mixed": [valid, {**valid, "item_id": rng.choice(BAD["item_id"])}, valid]}[shape]
            out.append(json.dumps({"events": batch}).encode())
            continue
        out.append(json.dumps(ev).encode())
    return out
