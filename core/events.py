"""Feedback events and their durable log: the record of what users did, written before anything is acknowledged.

`FeedbackEvent` is the public contract (HTTP `POST /feedback`, gRPC `Feedback`). The log is a sink behind
one small interface (`append`, `dirty_profiles`, `mark_pushed`, `events`, `push_lock`), opened by
`open_event_log(settings)`: the local default is SQLite in WAL mode with `synchronous=FULL` (`EventLog`), so
an acknowledged event survives a SIGKILL or power loss; in a cluster, where Feedback replicas run on several
nodes, it is a Redis stream (`core.events_redis`). In the same transaction as the event, the user's profile
(recent-item sequence and counters) is advanced, so the log and the profile the online store must converge
to can never disagree; a profile is "dirty" until pushed. Each profile version carries an update time that
rises strictly per user: pushes use it as Feast's event timestamp, so an online store that keeps the newest
row (Feast's Redis store does) cannot be overwritten by a replica pushing an older version late.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from core.settings import Settings

EventType = Literal["click", "view", "rate", "favorite", "purchase"]
MAX_FUTURE = timedelta(minutes=5)  # clock skew tolerated on client timestamps
MAX_PAST = timedelta(days=365 * 30)
# A rebuilt online row carries its user's latest event time, at most MAX_FUTURE ahead (client timestamps): a
# profile re-pushed after a rebuild is stamped past that, or Feast's Redis store would keep the rebuilt row.
REPUSH_LEAD_S = MAX_FUTURE.total_seconds() + 1


class FeedbackEvent(BaseModel):
    """One thing a user did with an item. `event_id` makes retries idempotent (stored once)."""

    model_config = ConfigDict(extra="forbid")

    event_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$",
                                 description="client id of the event; without one it is derived from the "
                                             "content when a timestamp is given, else generated")
    # strict: "7", true or 7.0 are a client's type error, not an id (JSON numbers 4 and 4.5 are both ratings)
    user_id: int = Field(ge=0, le=2**62, strict=True)
    item_id: int = Field(ge=1, le=2**62, strict=True)
    event_type: EventType
    value: float | None = Field(default=None, ge=0.5, le=5.0, strict=True,
                                description="the rating (required for rate)")
    timestamp: datetime | None = Field(default=None, description="when it happened; server time if absent")
    request_id: str | None = Field(default=None, max_length=64, description="the recommendation it answers")

    @model_validator(mode="after")
    def _check(self) -> FeedbackEvent:
        if self.event_type == "rate" and self.value is None:
            raise ValueError("value: a rate event needs a value (the rating, 0.5-5)")
        if self.timestamp is not None:
            ts = self.timestamp if self.timestamp.tzinfo else self.timestamp.replace(tzinfo=UTC)
            now = datetime.now(UTC)
            if ts > now + MAX_FUTURE:
                raise ValueError("timestamp: more than 5 minutes in the future")
            if ts < now - MAX_PAST:
                raise ValueError("timestamp: more than 30 years in the past")
            self.timestamp = ts
        return self

    def key(self) -> str:
        """The stored id: the client's, else a hash of the content (a retried event maps to the same id)."""
        if self.event_id:
            return self.event_id
        if self.timestamp is None:
            raise ValueError("an event without a timestamp has no content key; call stamped() first")
        raw = json.dumps([self.user_id, self.item_id, self.event_type, self.value, self.timestamp.isoformat(),
                          self.request_id])
        return "h:" + hashlib.sha256(raw.encode()).hexdigest()[:32]

    def stamped(self, now: float) -> FeedbackEvent:
        """With a timestamp; events arriving without one get the server's time and a generated id."""
        if self.timestamp is not None:
            return self
        import uuid

        return self.model_copy(update={"timestamp": datetime.fromtimestamp(now, UTC),
                                       "event_id": self.event_id or f"g:{uuid.uuid4().hex}"})


class FeedbackBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[FeedbackEvent] = Field(min_length=1, max_length=1000)


@dataclass
class Profile:
    """The user_profile row the online store converges to (all fields of the Feast view), plus `seen_items`, the
    user_history row: every item the user reached by a non-repeatable event type, however old (the profile's
    `recent_items` is only the model's input window)."""

    recent_items: list[int]
    n_interactions: int
    mean_rating: float
    favourite_genres: list[str]
    age: int = -1
    gender: str = ""
    occupation: str = ""
    seen_items: list[int] | None = None  # None: a profile stored before the log kept it (recent_items stands in)
    # Interactions per genre, the log's own (not a Feast field): favourite_genres is its top 3, as offline.
    genre_counts: dict[str, float] | None = None

    def apply(self, e: FeedbackEvent, max_len: int, repeatable: frozenset[str] = frozenset(),
              max_seen: int = 10_000, genres: list[str] | tuple[str, ...] = ()) -> None:
        """Most recent last, no repeats (an item seen again moves to the end), at most `max_len` ids; the item
        joins `seen_items` (at most `max_seen`, the most recent) unless its event type is `repeatable`; its
        `genres` count towards the taste, so `favourite_genres` follows feedback like the recent items do."""
        if genres:
            if self.genre_counts is None:  # stored before counts were kept: the favourites by rank stand in
                n = len(self.favourite_genres)
                self.genre_counts = {g: float(n - i) for i, g in enumerate(self.favourite_genres)}
            for g in genres:
                self.genre_counts[g] = self.genre_counts.get(g, 0.0) + 1.0
            self.favourite_genres = favourites(self.genre_counts)
        if self.seen_items is None:
            self.seen_items = list(self.recent_items)
        if e.event_type not in repeatable:
            if e.item_id in self.seen_items:
                self.seen_items.remove(e.item_id)
            self.seen_items = [*self.seen_items, e.item_id][-max_seen:]
        if e.item_id in self.recent_items:
            self.recent_items.remove(e.item_id)
        self.recent_items = [*self.recent_items, e.item_id][-max_len:]
        if e.value is not None:  # a running mean over the interactions so far (all carried a rating in training)
            self.mean_rating = (self.mean_rating * self.n_interactions + e.value) / (self.n_interactions + 1)
        self.n_interactions += 1


@dataclass(frozen=True)
class AppendResult:
    accepted: list[str]  # event ids stored now
    duplicates: list[str]  # event ids already in the log (not applied again)
    users: list[int]  # users whose profile changed


class DirtyProfile(NamedTuple):
    """A profile version not yet in the online store; `updated` (epoch s) is its event time for the push."""

    user_id: int
    version: int
    profile: Profile
    updated: float


EVENT_COLUMNS = ("seq", "event_id", "user_id", "item_id", "event_type", "value", "ts", "request_id", "received")


class FeedbackLog(Protocol):
    """What the Feedback stage, retraining and `recsys report` need of a log (SQLite or Redis)."""

    def append(self, events: list[FeedbackEvent], base: Callable[[list[int]], dict[int, Profile]],
               now: float | None = None, genres: dict[int, list[str]] | None = None) -> AppendResult: ...
    def profile(self, user_id: int) -> Profile | None: ...
    def dirty_profiles(self, user_ids: list[int] | None = None, limit: int = 500) -> list[DirtyProfile]: ...
    def mark_pushed(self, pushed: list[tuple[int, int]]) -> None: ...
    def mark_all_dirty(self) -> int: ...
    def events(self, user_id: int | None = None) -> list[dict[str, Any]]: ...
    def delete_user(self, user_id: int) -> int: ...
    def tombstones(self) -> dict[int, float]: ...
    def item_stream(self, cursor: str, limit: int = 5000) -> tuple[list[tuple[int, float]], str]: ...
    def push_lock(self) -> Any: ...
    def close(self) -> None: ...


def open_event_log(settings: Settings) -> FeedbackLog:
    """The configured log: `event_log_url` (redis://…) in a cluster, else the SQLite file."""
    rules: dict[str, Any] = {"repeatable": frozenset(settings.repeat_event_types),
                             "max_seen": settings.max_seen_items}
    if settings.event_log_url:
        from core.events_redis import RedisEventLog

        return RedisEventLog(settings.event_log_url, settings.sequence_length, **rules)
    return EventLog(settings.event_log_path, settings.sequence_length, **rules)


def has_event_log(settings: Settings) -> bool:
    """Whether anything can have been logged (a SQLite file that was never created holds nothing)."""
    return bool(settings.event_log_url) or settings.event_log_path.exists()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    user_id INTEGER NOT NULL,
    item_id INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    value REAL,
    ts TEXT NOT NULL,
    request_id TEXT,
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user ON events (user_id);
CREATE TABLE IF NOT EXISTS profiles (
    user_id INTEGER PRIMARY KEY,
    profile TEXT NOT NULL,
    version INTEGER NOT NULL,
    pushed INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tombstones (
    user_id INTEGER PRIMARY KEY,
    deleted_at REAL NOT NULL
);
"""


class EventLog:
    """SQLite event log + profile state; safe across processes (WAL, IMMEDIATE transactions, busy timeout)."""

    def __init__(self, path: Path, max_len: int, repeatable: frozenset[str] = frozenset(),
                 max_seen: int = 10_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_len = max_len
        self.repeatable, self.max_seen = repeatable, max_seen
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # fsync at every commit: an ack is a promise
        self._db.execute("PRAGMA secure_delete=ON")  # a deleted user's bytes are overwritten, not left in free pages
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()  # one connection, used from the replica's worker threads in turn

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def push_lock(self) -> Iterator[None]:
        """One push at a time across the processes sharing this file (Feast's SQLite store overwrites
        unconditionally, so two replicas reading versions 5 and 6 could land them in the opposite order)."""
        import fcntl

        with open(self.path.with_suffix(".push.lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def known_users(self, user_ids: Iterable[int]) -> set[int]:
        ids = list(set(user_ids))
        with self._lock:
            rows = self._db.execute(f"SELECT user_id FROM profiles WHERE user_id IN ({','.join('?' * len(ids))})",
                                    ids).fetchall()
        return {r[0] for r in rows}

    def append(self, events: list[FeedbackEvent], base: Callable[[list[int]], dict[int, Profile]],
               now: float | None = None, genres: dict[int, list[str]] | None = None) -> AppendResult:
        """Store new events and advance their users' profiles in one durable transaction.

        `base(user_ids)` gives the starting profile of users the log has not seen (their online row); `genres`
        the events' items' genres (the taste counts).
        """
        now = time.time() if now is None else now
        events = [e.stamped(now) for e in events]
        fresh = {e.user_id for e in events} - self.known_users(e.user_id for e in events)
        starts = base(sorted(fresh)) if fresh else {}
        with self._lock:
            return self._append(events, starts, now, genres or {})

    def _append(self, events: list[FeedbackEvent], starts: dict[int, Profile], now: float,
                genres: dict[int, list[str]]) -> AppendResult:
        accepted, duplicates, profiles = [], [], {}
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for e in events:
                key = e.key()
                cur = db.execute(
                    "INSERT OR IGNORE INTO events (event_id, user_id, item_id, event_type, value, ts, request_id,"
                    " received) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, e.user_id, e.item_id, e.event_type, e.value, e.timestamp.isoformat(), e.request_id, now))
                if cur.rowcount == 0:
                    duplicates.append(key)
                    continue
                accepted.append(key)
                if e.user_id not in profiles:
                    profiles[e.user_id] = self._profile(e.user_id) or starts.get(e.user_id) or empty_profile()
                profiles[e.user_id].apply(e, self.max_len, self.repeatable, self.max_seen, genres.get(e.item_id, ()))
            for uid, p in profiles.items():
                db.execute(
                    "INSERT INTO profiles (user_id, profile, version, pushed, updated) VALUES (?, ?, 1, 0, ?) "
                    "ON CONFLICT (user_id) DO UPDATE SET profile = excluded.profile, version = version + 1, "
                    "updated = ROUND(MAX(excluded.updated, updated + 0.000001), 6)",  # rising per user, in µs
                    (uid, json.dumps(p.__dict__), now))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return AppendResult(accepted, duplicates, sorted(profiles))

    def profile(self, user_id: int) -> Profile | None:
        """The user's profile as the log has it (what the online store converges to), None if never seen."""
        with self._lock:
            return self._profile(user_id)

    def _profile(self, user_id: int) -> Profile | None:
        row = self._db.execute("SELECT profile FROM profiles WHERE user_id = ?", (user_id,)).fetchone()
        return Profile(**json.loads(row[0])) if row else None

    def dirty_profiles(self, user_ids: list[int] | None = None, limit: int = 500) -> list[DirtyProfile]:
        """Profiles not yet pushed to the online store at their latest version, oldest update first."""
        sql = "SELECT user_id, version, profile, updated FROM profiles WHERE pushed < version"
        args: list[Any] = []
        if user_ids is not None:
            sql += f" AND user_id IN ({','.join('?' * len(user_ids))})"
            args = list(user_ids)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY updated LIMIT ?", [*args, limit]).fetchall()
        return [DirtyProfile(u, v, Profile(**json.loads(p)), t) for u, v, p, t in rows]

    def mark_pushed(self, pushed: list[tuple[int, int]]) -> None:
        """Record (user, version) as in the online store; a newer version written meanwhile stays dirty."""
        with self._lock:
            self._db.executemany("UPDATE profiles SET pushed = MAX(pushed, ?) WHERE user_id = ?",
                                 [(v, u) for u, v in pushed])

    def mark_all_dirty(self) -> int:
        """Every profile must be pushed again (the online store was rebuilt from older data); returns how many."""
        with self._lock:
            return self._db.execute("UPDATE profiles SET pushed = 0, updated = ROUND(MAX(updated + 0.000001, ?), 6)",
                                    (time.time() + REPUSH_LEAD_S,)).rowcount

    def item_stream(self, cursor: str, limit: int = 5000) -> tuple[list[tuple[int, float]], str]:
        """(item_id, received) of the events after `cursor` ("0": from the first), and the cursor after them: what
        the popularity channel counts (`serving.popularity`)."""
        with self._lock:
            rows = self._db.execute("SELECT seq, item_id, received FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (int(cursor), limit)).fetchall()
        return ([(int(i), float(t)) for _, i, t in rows], str(rows[-1][0])) if rows else ([], cursor)

    def events(self, user_id: int | None = None) -> list[dict[str, Any]]:
        """Stored events in arrival order (for training sets, joins with impressions, and tests)."""
        cols = EVENT_COLUMNS
        sql = f"SELECT {', '.join(cols)} FROM events"
        where = " WHERE user_id = ?" if user_id is not None else ""
        with self._lock:
            rows = self._db.execute(sql + where + " ORDER BY seq", () if user_id is None else (user_id,)).fetchall()
        return [dict(zip(cols, r, strict=True)) for r in rows]


    def delete_user(self, user_id: int) -> int:
        """Erase the user's events, leave an empty profile (dirty: its push blanks the online rows, retried by the
        replay loop like any push) and a tombstone (later data loads drop their earlier interactions); returns how
        many events were erased. The WAL is checkpointed and truncated so no copy of them stays on disk."""
        now = time.time()
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                n = db.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
                db.execute(
                    "INSERT INTO profiles (user_id, profile, version, pushed, updated) VALUES (?, ?, 1, 0, ?) "
                    "ON CONFLICT (user_id) DO UPDATE SET profile = excluded.profile, version = version + 1, "
                    "updated = ROUND(MAX(excluded.updated, updated + 0.000001), 6)",
                    (user_id, json.dumps(erased_profile().__dict__), now + REPUSH_LEAD_S))
                db.execute("INSERT INTO tombstones (user_id, deleted_at) VALUES (?, ?) ON CONFLICT (user_id) "
                           "DO UPDATE SET deleted_at = excluded.deleted_at", (user_id, now))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n

    def tombstones(self) -> dict[int, float]:
        """Deleted users → when (epoch s): their interactions up to then stay out of every later data load."""
        with self._lock:
            return {int(u): float(t) for u, t in self._db.execute("SELECT user_id, deleted_at FROM tombstones")}


def favourites(counts: dict[str, float], n: int = 3) -> list[str]:
    """The top-n genres by count, ties by name: the rule the offline profile table uses."""
    return [g for g, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def erased_profile() -> Profile:
    """What a deleted user's online rows become: nothing about them (serving reads it as an unknown user)."""
    return Profile(recent_items=[], n_interactions=0, mean_rating=0.0, favourite_genres=[], seen_items=[])


def empty_profile() -> Profile:
    return Profile(recent_items=[], n_interactions=0, mean_rating=0.0, favourite_genres=[])
