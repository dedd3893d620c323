"""The cluster's feedback event log: a Redis stream plus profile state, safe for Feedback replicas on many nodes.

The SQLite log is one file: fine for one machine, wrong for replicas on several nodes sharing a volume. Here
every append is one Lua script, which Redis runs atomically: it checks that none of the events is stored yet
and that each user's profile is still at the version this replica read (compare-and-set), then assigns the
sequence numbers, appends the events to the stream, writes the new profiles, bumps their versions and stamps a
per-user update time that rises strictly (server clock, +1 µs at least). On a conflict (another replica got
there first) the replica re-reads and recomputes, so two replicas can never both apply an event or lose each
other's profile update. Durability is the server's: an acknowledgement is only as durable as Redis' append-only
file, so opening the log checks `appendonly yes` and `appendfsync always` (fsync before the reply) and refuses
anything weaker.

All keys share one hash tag (`{recsys}`), so the scripts also run on a Redis Cluster.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from core.errors import ConfigError
from core.events import (
    EVENT_COLUMNS,
    REPUSH_LEAD_S,
    AppendResult,
    DirtyProfile,
    FeedbackEvent,
    Profile,
    empty_profile,
)

log = logging.getLogger(__name__)

_PREFIX = "{recsys}"
_NAMES = ("seq", "events", "ids", "profiles", "versions", "updated", "dirty", "pushed", "tombstones")
MAX_RETRIES = 50  # compare-and-set rounds before an append gives up (each lost round means another replica won)

# KEYS: seq events ids profiles versions updated dirty. ARGV: n_users n_events, then per user (uid, expected
# version, profile json), then per event the 8 stored fields. Returns {"ok"} or {"conflict", what}.
_APPEND = """
local nu, ne = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 0, nu - 1 do
  local uid = ARGV[3 + 3 * i]
  if (redis.call('HGET', KEYS[5], uid) or '0') ~= ARGV[4 + 3 * i] then return {'conflict', uid} end
end
local eb = 3 + 3 * nu
for j = 0, ne - 1 do
  if redis.call('HEXISTS', KEYS[3], ARGV[eb + 8 * j]) == 1 then return {'conflict', ARGV[eb + 8 * j]} end
end
local first = redis.call('INCRBY', KEYS[1], ne) - ne
for j = 0, ne - 1 do
  local o = eb + 8 * j
  redis.call('XADD', KEYS[2], '*', 'seq', first + j + 1, 'event_id', ARGV[o], 'user_id', ARGV[o + 1],
             'item_id', ARGV[o + 2], 'event_type', ARGV[o + 3], 'value', ARGV[o + 4], 'ts', ARGV[o + 5],
             'request_id', ARGV[o + 6], 'received', ARGV[o + 7])
  redis.call('HSET', KEYS[3], ARGV[o], first + j + 1)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 0, nu - 1 do
  local uid = ARGV[3 + 3 * i]
  local updated = math.max(now, tonumber(redis.call('HGET', KEYS[6], uid) or '0') + 0.000001)
  redis.call('HSET', KEYS[4], uid, ARGV[5 + 3 * i])
  redis.call('HINCRBY', KEYS[5], uid, 1)
  redis.call('HSET', KEYS[6], uid, string.format('%.6f', updated))
  redis.call('ZADD', KEYS[7], updated, uid)
end
return {'ok'}
"""

# KEYS: seq events ids profiles versions updated dirty tombstones. ARGV: uid, erased profile json, seconds ahead,
# the seq the caller's scan saw, n stream entries, the entries, then the event ids. Erases the user's events,
# leaves the erased profile dirty (its push blanks the online rows) and a tombstone; {'conflict'} if events were
# appended since the scan (the caller scans again).
_DELETE_USER = """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[4] then return {'conflict'} end
local uid, n = ARGV[1], tonumber(ARGV[5])
for i = 1, n do redis.call('XDEL', KEYS[2], ARGV[5 + i]) end
for j = 6 + n, #ARGV do redis.call('HDEL', KEYS[3], ARGV[j]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local updated = math.max(now + tonumber(ARGV[3]), tonumber(redis.call('HGET', KEYS[6], uid) or '0') + 0.000001)
redis.call('HSET', KEYS[4], uid, ARGV[2])
redis.call('HINCRBY', KEYS[5], uid, 1)
redis.call('HSET', KEYS[6], uid, string.format('%.6f', updated))
redis.call('ZADD', KEYS[7], updated, uid)
redis.call('HSET', KEYS[8], uid, string.format('%.6f', now))
return {'ok', n}
"""

# KEYS: seq events copy. ARGV: the seq the copy started at. XDEL only flags stream entries (their bytes stay in the
# stream's nodes, and so in the append-only file); a copy of the live entries, made by the caller with the same
# ids, replaces the stream if nothing was appended since.
_SWAP_COMPACTED = """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then return 1 end
local info = redis.call('XINFO', 'STREAM', KEYS[2])
local last
for i = 1, #info, 2 do if info[i] == 'last-generated-id' then last = info[i + 1] end end
if redis.call('EXISTS', KEYS[3]) == 0 then redis.call('DEL', KEYS[2]); return 1 end
redis.call('XSETID', KEYS[3], last)
redis.call('RENAME', KEYS[3], KEYS[2])
return 1
"""

# KEYS: versions pushed dirty. ARGV: uid, version pairs. pushed = max(pushed, version); clean when caught up.
_MARK_PUSHED = """
for i = 1, #ARGV, 2 do
  local uid, v = ARGV[i], tonumber(ARGV[i + 1])
  local cur = tonumber(redis.call('HGET', KEYS[2], uid) or '0')
  if v > cur then redis.call('HSET', KEYS[2], uid, v); cur = v end
  if cur >= tonumber(redis.call('HGET', KEYS[1], uid) or '0') then redis.call('ZREM', KEYS[3], uid) end
end
return 0
"""

# KEYS: updated pushed dirty. ARGV: seconds ahead of the server clock. Every profile dirty again (after the
# online store was rebuilt), its update time moved past any rebuilt row's event time, so the re-push wins.
_MARK_ALL_DIRTY = """
local all = redis.call('HGETALL', KEYS[1])
local t = redis.call('TIME')
local floor = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
redis.call('DEL', KEYS[2])
for i = 1, #all, 2 do
  local updated = math.max(floor, tonumber(all[i + 1]) + 0.000001)
  redis.call('HSET', KEYS[1], all[i], string.format('%.6f', updated))
  redis.call('ZADD', KEYS[3], updated, all[i])
end
return #all / 2
"""


class RedisEventLog:
    """Same interface as `core.events.EventLog`, stored in Redis (`redis://host:port/db`)."""

    def __init__(self, url: str, max_len: int, check_durability: bool = True, repeatable: frozenset[str] = frozenset(),
                 max_seen: int = 10_000) -> None:
        import redis

        self.url = url  # as configured: a password is `${REDIS_PASSWORD}` here, so messages never show it
        self.max_len = max_len
        self.repeatable, self.max_seen = repeatable, max_seen
        self.r = redis.Redis.from_url(os.path.expandvars(url), socket_timeout=10, socket_connect_timeout=5,
                                      health_check_interval=30)
        self.k = {n: f"{_PREFIX}:{n}" for n in _NAMES}
        self._append_script = self.r.register_script(_APPEND)
        self._mark_pushed_script = self.r.register_script(_MARK_PUSHED)
        self._mark_all_dirty_script = self.r.register_script(_MARK_ALL_DIRTY)
        self._delete_user_script = self.r.register_script(_DELETE_USER)
        self._swap_compacted_script = self.r.register_script(_SWAP_COMPACTED)
        if check_durability:
            self._check_durability()

    def _check_durability(self) -> None:
        import redis

        try:
            cfg = self.r.config_get("append*")
        except redis.ResponseError as e:  # managed Redis often hides CONFIG: say so, do not guess
            log.warning("event log: cannot read the Redis persistence settings (%s); acknowledgements are only "
                        "as durable as its append-only file", e)
            return
        if cfg.get("appendonly") != "yes" or cfg.get("appendfsync") != "always":
            raise ConfigError(f"event log Redis {self._where()} has appendonly={cfg.get('appendonly')} "
                              f"appendfsync={cfg.get('appendfsync')}: an acknowledged event could be lost; run it "
                              "with --appendonly yes --appendfsync always")

    def _where(self) -> str:
        kw = self.r.connection_pool.connection_kwargs
        return f"{kw.get('host')}:{kw.get('port')}/{kw.get('db', 0)}"

    def close(self) -> None:
        self.r.close()

    @contextmanager
    def push_lock(self) -> Iterator[None]:
        """One push at a time across replicas (a lease: a replica that dies mid-push frees it in 2 min). Stale
        pushes are also harmless where the online store keeps the newest event time, as Feast's Redis does."""
        with self.r.lock(f"{_PREFIX}:push-lock", timeout=120, blocking_timeout=10):
            yield

    def append(self, events: list[FeedbackEvent], base: Callable[[list[int]], dict[int, Profile]],
               now: float | None = None, genres: dict[int, list[str]] | None = None) -> AppendResult:
        """Store new events and advance their users' profiles in one atomic, fsynced script.

        `base(user_ids)` gives the starting profile of users the log has not seen (their online row).
        """
        now = time.time() if now is None else now
        events = [e.stamped(now) for e in events]
        starts: dict[int, Profile] = {}
        for _ in range(MAX_RETRIES):
            users = sorted({e.user_id for e in events})
            pipe = self.r.pipeline(transaction=True)  # one consistent snapshot of ids, versions, profiles
            pipe.hmget(self.k["ids"], [e.key() for e in events])
            pipe.hmget(self.k["versions"], users)
            pipe.hmget(self.k["profiles"], users)
            stored, versions, rows = pipe.execute()
            fresh = [u for u, v in zip(users, versions, strict=True) if v is None and u not in starts]
            if fresh:
                starts.update(base(fresh))
            profiles = {u: Profile(**json.loads(p)) if p else None for u, p in zip(users, rows, strict=True)}
            accepted, duplicates, changed, seen = [], [], {}, set()
            for e, s in zip(events, stored, strict=True):
                key = e.key()
                if s is not None or key in seen:
                    duplicates.append(key)
                    continue
                seen.add(key)
                accepted.append((key, e))
                if e.user_id not in changed:  # a copy: a lost round must not leave `starts` advanced
                    start = profiles[e.user_id] or starts.get(e.user_id)
                    changed[e.user_id] = Profile(**copy.deepcopy(start.__dict__)) if start else empty_profile()
                changed[e.user_id].apply(e, self.max_len, self.repeatable, self.max_seen,
                                         (genres or {}).get(e.item_id, ()))
            if not accepted:
                return AppendResult([], duplicates, [])
            expected = dict(zip(users, versions, strict=True))
            args: list[Any] = [len(changed), len(accepted)]
            for u, p in changed.items():
                args += [u, expected[u] or b"0", json.dumps(p.__dict__)]
            for key, e in accepted:
                args += [key, e.user_id, e.item_id, e.event_type, "" if e.value is None else repr(e.value),
                         e.timestamp.isoformat(), e.request_id or "", repr(now)]
            answer = self._append_script(keys=[self.k[n] for n in _NAMES[:7]], args=args)
            if answer[0] == b"ok":
                return AppendResult([k for k, _ in accepted], duplicates, sorted(changed))
        raise RuntimeError(f"event log: {MAX_RETRIES} conflicting appends in a row; retry the request")

    def profile(self, user_id: int) -> Profile | None:
        row = self.r.hget(self.k["profiles"], user_id)
        return Profile(**json.loads(row)) if row else None

    def dirty_profiles(self, user_ids: list[int] | None = None, limit: int = 500) -> list[DirtyProfile]:
        """Profiles not yet pushed at their latest version, oldest update first."""
        if user_ids is None:
            user_ids = [int(u) for u in self.r.zrange(self.k["dirty"], 0, limit - 1)]
        if not user_ids:
            return []
        pipe = self.r.pipeline(transaction=True)
        for name in ("versions", "pushed", "profiles", "updated"):
            pipe.hmget(self.k[name], user_ids)
        versions, pushed, rows, updated = pipe.execute()
        out = [DirtyProfile(u, int(v), Profile(**json.loads(p)), float(t))
               for u, v, d, p, t in zip(user_ids, versions, pushed, rows, updated, strict=True)
               if v is not None and int(d or 0) < int(v)]
        return sorted(out, key=lambda d: d.updated)[:limit]

    def mark_pushed(self, pushed: list[tuple[int, int]]) -> None:
        if pushed:
            self._mark_pushed_script(keys=[self.k["versions"], self.k["pushed"], self.k["dirty"]],
                                     args=[x for u, v in pushed for x in (u, v)])

    def mark_all_dirty(self) -> int:
        return int(self._mark_all_dirty_script(keys=[self.k["updated"], self.k["pushed"], self.k["dirty"]],
                                               args=[REPUSH_LEAD_S]))

    def delete_user(self, user_id: int) -> int:
        """As `EventLog.delete_user`: the user's stream entries are found by a scan, then erased in one script
        that refuses if anything was appended meanwhile (and is retried). The append-only file still holds them
        until it is rewritten, so a rewrite is started (BGREWRITEAOF) once they are gone from the data set."""
        import redis

        from core.events import erased_profile

        for _ in range(MAX_RETRIES):
            seq = (self.r.get(self.k["seq"]) or b"0").decode()
            entries, ids = self._entries_of(user_id)
            answer = self._delete_user_script(
                keys=[self.k[n] for n in ("seq", "events", "ids", "profiles", "versions", "updated", "dirty",
                                          "tombstones")],
                args=[user_id, json.dumps(erased_profile().__dict__), REPUSH_LEAD_S, seq, len(entries), *entries,
                      *ids])
            if answer[0] == b"ok":
                self._compact()
                try:
                    self.r.bgrewriteaof()
                except redis.ResponseError as e:  # one already running covers this deletion too
                    log.info("event log: append-only file rewrite not started (%s)", e)
                return int(answer[1])
        raise RuntimeError(f"event log: {MAX_RETRIES} appends raced the deletion of user {user_id}; retry")

    def _compact(self) -> None:
        """Rewrite the stream without the erased entries' bytes (same ids, same fields)."""
        tmp = f"{_PREFIX}:events-compact"
        for _ in range(MAX_RETRIES):
            seq = (self.r.get(self.k["seq"]) or b"0").decode()
            self.r.delete(tmp)
            start = "-"
            while True:
                page = self.r.xrange(self.k["events"], min=start, count=1000)
                pipe = self.r.pipeline(transaction=False)
                for entry, fields in page:
                    pipe.xadd(tmp, fields, id=entry)
                pipe.execute()
                if len(page) < 1000:
                    break
                start = "(" + page[-1][0].decode()
            if self._swap_compacted_script(keys=[self.k["seq"], self.k["events"], tmp], args=[seq]):
                return
        raise RuntimeError(f"event log: {MAX_RETRIES} appends raced the stream compaction; retry the deletion")

    def _entries_of(self, user_id: int) -> tuple[list[bytes], list[bytes]]:
        entries, ids, start = [], [], "-"
        while True:
            page = self.r.xrange(self.k["events"], min=start, count=1000)
            for entry, f in page:
                if int(f.get(b"user_id", b"-1")) == user_id:
                    entries.append(entry)
                    ids.append(f.get(b"event_id", b""))
            if len(page) < 1000:
                return entries, ids
            start = "(" + page[-1][0].decode()

    def tombstones(self) -> dict[int, float]:
        return {int(u): float(t) for u, t in self.r.hgetall(self.k["tombstones"]).items()}

    def item_stream(self, cursor: str, limit: int = 5000) -> tuple[list[tuple[int, float]], str]:
        """(item_id, received) of the stream's entries after `cursor` ("0": from the first), and the next cursor."""
        page = self.r.xrange(self.k["events"], min="-" if cursor == "0" else "(" + cursor, count=limit)
        if not page:
            return [], cursor
        return [(int(f[b"item_id"]), float(f[b"received"])) for _, f in page], page[-1][0].decode()

    def events(self, user_id: int | None = None) -> list[dict[str, Any]]:
        """Stored events in arrival order, read from the stream in pages."""
        out: list[dict[str, Any]] = []
        start = "-"
        while True:
            page = self.r.xrange(self.k["events"], min=start, count=1000)
            for _, f in page:
                row = {c: f.get(c.encode(), b"").decode() for c in EVENT_COLUMNS}
                e = {**row, "seq": int(row["seq"]), "user_id": int(row["user_id"]), "item_id": int(row["item_id"]),
                     "value": float(row["value"]) if row["value"] else None,
                     "request_id": row["request_id"] or None, "received": float(row["received"])}
                if user_id is None or e["user_id"] == user_id:
                    out.append(e)
            if len(page) < 1000:
                return out
            start = "(" + page[-1][0].decode()
