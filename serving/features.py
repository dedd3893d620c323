"""Features stage: the user's online profile (recent-item sequence, counters) and item rows from Feast.

Input: user_id (int) or item ids (list[int]). Output: `UserContext` / `ItemRows`.
One `FeatureStore` per replica (registry parsed once); one feature view per entity per request; a read that
can block runs off the event loop so the replica keeps serving: user reads coalesced on one reader thread
(`serving.user_reads`; on the loop from the embedded store in WAL mode, where a read cannot wait), item reads
in a thread when the cache misses.

Not a deployment of its own: the user read runs inside the Recall replica (its first consumer; a Serve hop
costs ~3–4 ms of CPU per request here, caller and callee together, more than the read), with its timeout and
cold-start answer (`read_user`); item rows in the ranking stage, cached per replica (`ItemCache`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.feature_store import embedded_online_path, in_wal
from core.settings import Settings
from serving.contracts import Degradation, UserContext
from serving.failures import public_reason
from serving.feature_server import online_store
from serving.id_lookup import IdLookup
from serving.user_reads import CoalescedReads

USER_FIELDS = ("recent_items", "n_interactions", "mean_rating", "favourite_genres")
USER_REFS = [f"user_profile:{f}" for f in USER_FIELDS] + ["user_history:seen_items"]
USER_COLUMNS = tuple(r.split(":")[1] for r in USER_REFS)  # a user row's keys (`FeatureReader.rows`)
ITEM_FIELDS = ("title", "genres", "year", "popularity", "item_mean_rating", "content_embedding")


@dataclass
class ItemRows:
    """Item features for a list of ids, in that order; `found[i]` False where the store has no row."""

    item_ids: np.ndarray  # (N,) raw ids
    found: np.ndarray  # (N,) bool
    title: list[str]
    genres: list[list[str]]
    year: np.ndarray  # (N,) int, -1 unknown
    popularity: np.ndarray  # (N,) int
    item_mean_rating: np.ndarray  # (N,) float
    content: np.ndarray  # (N, 384) float32
    slots: np.ndarray | None = None  # (N,) the item cache's slot of each row, when gathered from it
    loaded: np.ndarray | None = None  # (N,) when the cache read each of those rows from the store


def take_rows(rows: ItemRows, keep: np.ndarray | list[int]) -> ItemRows:
    idx = np.asarray(keep, dtype=np.int64)
    at = idx.tolist()
    return ItemRows(item_ids=rows.item_ids[idx], found=rows.found[idx], title=[rows.title[j] for j in at],
                    genres=[rows.genres[j] for j in at], year=rows.year[idx], popularity=rows.popularity[idx],
                    item_mean_rating=rows.item_mean_rating[idx], content=rows.content[idx],
                    slots=None if rows.slots is None else rows.slots[idx],
                    loaded=None if rows.loaded is None else rows.loaded[idx])


class DirectUserRead:
    """The user's two views read through the store's provider (`online_read`), as `get_online_features` ends up
    reading them: 0.04 ms a user here against 0.23 ms for the SDK call, whose request building and response
    conversion are most of it. Only on the SDK's own store (`feature_read: sdk`); the feature server is HTTP."""

    def __init__(self, store, views: dict[str, object]) -> None:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        self.store, self.provider = store, store._get_provider()
        self.groups = [(fv, [r.split(":")[1] for r in USER_REFS if r.startswith(name + ":")])
                       for name, fv in views.items()]  # each view with its features, once
        self._key, self._value, self._python = EntityKey, Value, feast_value_type_to_python_type

    @classmethod
    def of(cls, store) -> DirectUserRead | None:
        if not hasattr(store, "_get_provider"):
            return None
        try:
            fvs = {fv.name: fv for fv in store.list_feature_views()}
            views = {name: fvs[name] for name in {ref.split(":")[0] for ref in USER_REFS}}
        except Exception:  # no registry yet, or other views: the SDK call answers (or says what is missing)
            return None
        return cls(store, views)

    def read(self, user_ids: list[int]) -> list[dict[str, object]]:
        """`get_online_features(USER_REFS, [{"user_id": id}, ...]).to_dict()`, one row per user: {feature: value},
        one query per view for all of them."""
        keys = [self._key(join_keys=["user_id"], entity_values=[self._value(int64_val=int(u))]) for u in user_ids]
        out: list[dict[str, object]] = [dict.fromkeys(USER_COLUMNS) for _ in user_ids]
        for fv, feats in self.groups:
            got = self.provider.online_read(config=self.store.config, table=fv, entity_keys=keys,
                                            requested_features=feats)
            for row, (_, vals) in zip(out, got, strict=True):
                for f in feats:
                    if vals and f in vals:
                        row[f] = self._python(vals[f])
        return out


class FeatureReader:
    """Synchronous Feast online reads; the stages call them off the event loop (`read_user`, `ItemCache`)."""

    def __init__(self, settings: Settings, inline: bool | None = None) -> None:
        self.store = online_store(settings)  # a FeatureStore, or the feature server behind the same calls
        self._direct = DirectUserRead.of(self.store)
        self.reads = CoalescedReads(self.rows, self.profile)  # `read_user`'s path: one store read per batch
        # `read_user` reads on the event loop when the read cannot wait: the embedded SQLite store in WAL mode
        # (its readers never wait on a writer) read through its provider, ~0.1 ms of CPU. The reader thread's two
        # wake-ups cost ~0.35 ms more at concurrency 1 (README, measurement log). Anything over a network (Redis,
        # the feature server) or a file a writer can lock keeps the thread, where the stage's timeout holds.
        online = embedded_online_path(self.store) if self._direct is not None else None
        self.inline = (online is not None and in_wal(online)) if inline is None else inline

    def user(self, user_id: int) -> UserContext:
        return self.profile(user_id, self.rows([user_id])[0])

    def rows(self, user_ids: list[int]) -> list[dict[str, object]]:
        """The users' rows in one store read: {feature: value} each, None where a feature has no value."""
        if self._direct is not None:
            return self._direct.read(user_ids)
        got = self.store.get_online_features(features=USER_REFS,
                                             entity_rows=[{"user_id": int(u)} for u in user_ids]).to_dict()
        cols = {f: got.get(f) or [None] * len(user_ids) for f in USER_COLUMNS}
        return [{f: cols[f][j] for f in USER_COLUMNS} for j in range(len(user_ids))]

    @staticmethod
    def profile(user_id: int, row: dict[str, object]) -> UserContext:
        recent = row["recent_items"]
        if recent is None or (not recent and not row["n_interactions"]):  # no row, or a deleted user's blank
            return UserContext(user_id=user_id, known=False)
        seen = row.get("seen_items")
        return UserContext(user_id=user_id, known=True, recent_items=[int(i) for i in recent],
                           n_interactions=int(row["n_interactions"] or 0),
                           mean_rating=float(row["mean_rating"] or 0.0),
                           favourite_genres=list(row["favourite_genres"] or []),
                           seen_items=None if seen is None else [int(i) for i in seen])

    def items(self, item_ids: list[int] | np.ndarray, fields: tuple[str, ...] = ITEM_FIELDS) -> ItemRows:
        ids = np.asarray(item_ids, dtype=np.int64)
        out = self.store.get_online_features(features=[f"item_features:{f}" for f in fields],
                                             entity_rows=[{"item_id": int(i)} for i in ids]).to_dict()
        n = len(ids)

        def col(name: str, default):
            return out.get(name, [default] * n)

        titles = col("title", None)
        found = np.array([t is not None for t in titles], dtype=bool)
        embs = col("content_embedding", None)
        dim = next((len(e) for e in embs if e is not None), 384)
        content = np.zeros((n, dim), dtype=np.float32)
        for i, e in enumerate(embs):
            if e is not None:
                content[i] = e
        return ItemRows(
            item_ids=ids, found=found,
            title=[t or "" for t in titles],
            genres=[list(g or []) for g in col("genres", None)],
            year=np.array([-1 if y is None else y for y in col("year", None)], dtype=np.int64),
            popularity=np.array([0 if p is None else p for p in col("popularity", None)], dtype=np.int64),
            item_mean_rating=np.array([0.0 if m is None else m for m in col("item_mean_rating", None)],
                                      dtype=np.float32),
            content=content,
        )


_ARRAY_COLUMNS = ("found", "year", "popularity", "item_mean_rating", "content")  # ItemRows' numpy fields


class ItemCache:
    """Item rows kept for `ttl_s` per replica: item features change only when materialized, and reading ~200
    rows with their 384-d embeddings from the online store costs ~35 ms here against ~0.1 ms from memory.

    Rows live in column arrays (one slot per item), so a request gathers its candidates with one fancy
    index per column instead of stacking per-item rows (that stacking was a tenth of the ranking stage's CPU).
    """

    def __init__(self, reader: FeatureReader, ttl_s: float) -> None:
        self.reader = reader
        self.ttl_s = ttl_s
        self._slots = IdLookup()  # item id → row in the column arrays, for whole candidate lists at once
        self._size = 0  # rows taken
        self._derived: dict[object, tuple[np.ndarray, np.ndarray]] = {}  # key → (rows per slot, load time of each)
        self._loaded = np.zeros(0)  # monotonic time each slot was read
        self._cols: dict[str, np.ndarray] = {}
        self._title: list[str] = []
        self._genres: list[list[str]] = []
        self._lock = threading.Lock()

    def _store(self, rows: ItemRows, now: float) -> None:
        """Writers (reads in worker threads) take the lock; a new item's slot is published only once its row is
        written, so a request gathering on the event loop without the lock never sees a slot past the arrays."""
        with self._lock:
            new: dict[int, int] = {}
            slots = []
            for i, slot in zip(rows.item_ids.tolist(), self._slots.rows(rows.item_ids).tolist(), strict=True):
                if slot < 0:
                    slot = new.setdefault(i, self._size + len(new))
                slots.append(slot)
            size = self._size + len(new)
            if size > len(self._loaded):  # grow every column (doubling) before writing the new slots
                cap = max(size, 2 * len(self._loaded), 256)
                for name in _ARRAY_COLUMNS:
                    arr = getattr(rows, name)
                    old = self._cols.get(name)
                    grown = np.zeros((cap, *arr.shape[1:]), dtype=arr.dtype)
                    if old is not None:
                        grown[: len(old)] = old
                    self._cols[name] = grown
                loaded = np.full(cap, -np.inf)
                loaded[: len(self._loaded)] = self._loaded
                self._loaded = loaded
                self._title += [""] * (cap - len(self._title))
                self._genres += [[] for _ in range(cap - len(self._genres))]
            idx = np.asarray(slots, dtype=np.int64)
            for name in _ARRAY_COLUMNS:
                self._cols[name][idx] = getattr(rows, name)
            for j, slot in enumerate(slots):
                self._title[slot] = rows.title[j]
                self._genres[slot] = rows.genres[j]
            self._loaded[idx] = now
            self._slots.set(new.keys(), new.values())
            self._size = size

    def invalidate(self, item_ids: set[int] | list[int]) -> None:
        """Read these rows again at their next use (their catalogue upsert changed them)."""
        with self._lock:
            slots = self._slots.rows(list(item_ids))
            self._loaded[slots[slots >= 0]] = -np.inf

    def _stale(self, item_ids: list[int], now: float) -> tuple[np.ndarray, np.ndarray]:
        slots = self._slots.rows(item_ids)
        stale = slots < 0
        stale[~stale] = now - self._loaded[slots[~stale]] > self.ttl_s
        return slots, stale

    def fresh(self, item_ids: list[int]) -> ItemRows | None:
        """The rows from memory if every one is cached and fresh, else None (the caller reads, off the loop)."""
        if self.ttl_s <= 0 or len(item_ids) == 0:
            return None
        slots, stale = self._stale(item_ids, time.monotonic())
        return None if stale.any() else self._gather(item_ids, slots)

    def items(self, item_ids: list[int]) -> ItemRows:
        if self.ttl_s <= 0 or len(item_ids) == 0:
            return self.reader.items(item_ids)
        now = time.monotonic()
        slots, stale = self._stale(item_ids, now)
        if stale.any():
            self._store(self.reader.items(list(dict.fromkeys(np.asarray(item_ids)[stale].tolist()))), now)
            slots = self._slots.rows(item_ids)
        return self._gather(item_ids, slots)

    def _gather(self, item_ids: list[int], slots: np.ndarray) -> ItemRows:
        c = self._cols
        at = slots.tolist()
        return ItemRows(
            item_ids=np.asarray(item_ids, dtype=np.int64), found=c["found"][slots],
            title=[self._title[s] for s in at], genres=[self._genres[s] for s in at],
            year=c["year"][slots], popularity=c["popularity"][slots],
            item_mean_rating=c["item_mean_rating"][slots], content=c["content"][slots], slots=slots,
            loaded=self._loaded[slots],
        )

    def derived(self, key: object, rows: ItemRows, compute: Callable[[ItemRows], np.ndarray]) -> np.ndarray:
        """`compute(rows)` (one output row per item) kept per cache slot under `key`: rows gathered from the cache
        reuse what was computed since their slot was last read from the store, and only the others are computed.
        Rows that did not come from the cache (no `slots`) are computed whole."""
        if rows.slots is None or rows.loaded is None:
            return compute(rows)
        slots, loaded = rows.slots, rows.loaded
        table, stamp = self._derived.get(key, (None, None))
        if table is None or len(table) <= int(slots.max(initial=0)):
            out = compute(rows)
            size = max(len(self._loaded), int(slots.max(initial=0)) + 1)
            grown = np.zeros((size, *out.shape[1:]), dtype=out.dtype)
            stamp_grown = np.full(size, np.nan)
            if table is not None:
                grown[: len(table)], stamp_grown[: len(stamp)] = table, stamp
            table, stamp = grown, stamp_grown
            table[slots], stamp[slots] = out, loaded
            self._derived[key] = (table, stamp)
            return out
        todo = np.flatnonzero(stamp[slots] != loaded)
        if len(todo):
            table[slots[todo]] = compute(take_rows(rows, todo))
            stamp[slots[todo]] = loaded[todo]
        return table[slots]


async def read_user(reader: FeatureReader, user_id: int,
                    timeout_ms: float) -> tuple[UserContext, Degradation | None, float]:
    """The user's online features within the features stage's timeout, read off the event loop with the reads
    queued beside it (`FeatureReader.reads`), or on it where the read cannot wait (`FeatureReader.inline`), and
    the ms the read took (the stage's timing).

    Feast unreachable, failing or late → an unknown user (the cold-start answer), with the reason as a
    Degradation: the caller serves popularity and says so. A late read finishes on the reader thread, unused.
    """
    t0 = time.perf_counter()
    try:
        if reader.inline:
            return reader.user(user_id), None, (time.perf_counter() - t0) * 1e3
        async with asyncio.timeout(timeout_ms / 1e3):  # not wait_for: that wraps the call in a task of its own
            user = await reader.reads.read(user_id)
        return user, None, (time.perf_counter() - t0) * 1e3
    except TimeoutError:
        reason = f"timeout after {timeout_ms:.0f} ms"
    except Exception as e:  # store or feature server down, bad row: the request still gets an answer
        reason = "online store " + public_reason("features", e)
    degraded = Degradation(stage="features", reason=reason, fallback="cold-start (popularity)")
    return UserContext(user_id=user_id, known=False), degraded, (time.perf_counter() - t0) * 1e3
