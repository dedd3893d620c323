"""The live catalogue: items upserted and retired while the graph serves, as one append-only log.

`recsys items upsert/retire` and the admin API write it (`serving.catalogue.CatalogueWriter`); every Recall,
Ingress and Copy replica follows it from a cursor (`CatalogueState.follow`), so a new item is recallable and a
retired one gone within one poll (`catalogue_poll_s`), with no restart; the next data load merges it into the
prepared items (`training.catalogue_data`), so the next retrain learns the new ids. It lives beside the event
log: a table of the same SQLite file on a laptop, a Redis stream on the cluster's Redis (replicas on many nodes).
An op is the whole truth about its item: an upsert carries the item's fields and its content embedding (computed
once by the writer, so every follower places it identically), a retire only the id; a later upsert re-lists.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import DataFormatError
from core.settings import Settings

ITEM_PUSH_SOURCE = "item_features_push"  # the Feast push source of item rows (feature_repo)
MAX_ITEMS_PER_CALL = 1_000  # one upsert call (file or API body); bigger catalogues go through `recsys data`


class CatalogueItem(BaseModel):
    """One item as a catalogue upsert gives it: strict types, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    item_id: int = Field(ge=1, le=2**62)
    title: str = Field(min_length=1, max_length=300)  # as shown, e.g. "Fargo (1996)"
    genres: list[str] = Field(default_factory=list, max_length=20)
    year: int | None = Field(default=None, ge=1800, le=2200)  # None: unknown
    text: str = Field(default="", max_length=2000)  # free text (description, tags): embedded with the title

    @field_validator("title", "text")
    @classmethod
    def _one_line(cls, v: str) -> str:
        return " ".join(v.split())

    @field_validator("genres")
    @classmethod
    def _genres(cls, v: list[str]) -> list[str]:
        out = [" ".join(g.split()) for g in v]
        if any(not g or len(g) > 50 for g in out):
            raise ValueError("each genre must be 1 to 50 characters")
        return list(dict.fromkeys(out))

    def row(self) -> dict[str, Any]:
        """The prepared-items row (`training.data.schema`): the free text stands in the tags column, an unknown
        year is None (the online row says -1)."""
        return {"item_id": self.item_id, "title": self.title, "year": self.year,
                "genres": list(self.genres), "tags": [self.text] if self.text else []}


class ItemsUpsert(BaseModel):
    """The admin API's upsert body (POST /items): the same fields as a file's rows."""

    model_config = ConfigDict(extra="forbid", strict=True)

    items: list[CatalogueItem] = Field(min_length=1, max_length=MAX_ITEMS_PER_CALL)


def _error_line(where: str, e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "item"
    return f"{where}: {loc}: {err['msg']}"


def parse_items(rows: Iterable[dict[str, Any]], where: str = "item") -> list[CatalogueItem]:
    """Validated items (JSON-like dicts); the first bad one raises DataFormatError naming its place and field, and
    an id given twice is refused (which version would win?)."""
    out: list[CatalogueItem] = []
    for n, row in enumerate(rows, start=1):
        try:
            out.append(CatalogueItem.model_validate(row))
        except ValidationError as e:
            raise DataFormatError(_error_line(f"{where} {n}", e)) from None
    ids = [i.item_id for i in out]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise DataFormatError(f"item ids given more than once: {twice[:10]}")
    if len(out) > MAX_ITEMS_PER_CALL:
        raise DataFormatError(f"{len(out)} items in one upsert; at most {MAX_ITEMS_PER_CALL} (split the file)")
    return out


def _csv_row(raw: dict[str, str | None], line: int) -> dict[str, Any]:
    """A CSV row in JSON types: item_id and year integers, genres split on '|' (MovieLens' convention)."""
    unknown = sorted(k for k in raw if k not in CatalogueItem.model_fields)
    if unknown:
        raise DataFormatError(f"line {line}: unknown column {unknown[0]!r} (columns: item_id, title, genres, year, "
                              "text)")
    row: dict[str, Any] = {k: (v or "").strip() for k, v in raw.items()}
    for key in ("item_id", "year"):
        if key in row:
            if row[key] == "" and key == "year":
                row[key] = None
                continue
            try:
                row[key] = int(row[key])
            except ValueError:
                raise DataFormatError(f"line {line}: {key}: {row[key]!r} is not an integer") from None
    if "genres" in row:
        row["genres"] = [g for g in row["genres"].split("|") if g.strip()]
    return row


def read_items_file(path: Path) -> list[CatalogueItem]:
    """Items from a CSV (header: item_id,title,genres,year,text; genres '|'-separated) or JSONL file (one object a
    line); the format is read from the suffix. Errors name the line and the field."""
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = [_csv_row(r, n) for n, r in enumerate(reader, start=2)]
        return parse_items(rows, where=f"{path.name} data row")
    if suffix in (".jsonl", ".ndjson", ".json"):
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path.name} line {n}: not JSON ({e.msg})") from None
            if not isinstance(rows[-1], dict):
                raise DataFormatError(f"{path.name} line {n}: expected a JSON object")
        return parse_items(rows, where=f"{path.name} object")
    raise DataFormatError(f"{path}: expected a .csv or .jsonl file")


def encode_vector(v: np.ndarray) -> str:
    return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()


def decode_vector(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype="<f4").copy()


@dataclass(frozen=True)
class CatalogueOp:
    op: Literal["upsert", "retire"]
    item_id: int
    at: float  # epoch s, the writer's clock
    item: CatalogueItem | None = None  # upsert only
    content: np.ndarray | None = None  # upsert only: (384,) the item's content embedding

    def payload(self) -> str:
        if self.op == "retire":
            return "{}"
        assert self.item is not None and self.content is not None
        return json.dumps({"item": self.item.model_dump(), "content": encode_vector(self.content)})

    @classmethod
    def parse(cls, op: str, item_id: int, at: float, payload: str) -> CatalogueOp:
        if op == "retire":
            return cls("retire", item_id, at)
        data = json.loads(payload)
        return cls("upsert", item_id, at, CatalogueItem.model_validate(data["item"]), decode_vector(data["content"]))


class CatalogueLog(Protocol):
    def append(self, ops: list[CatalogueOp]) -> str: ...
    def read(self, cursor: str, limit: int = 1000) -> tuple[list[CatalogueOp], str]: ...
    def close(self) -> None: ...


START = "0"  # the cursor before the first op, in both backends


class SqliteCatalogue:
    """The `catalogue` table of the event log's SQLite file (WAL, fsync per commit: an answered upsert is kept)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS catalogue (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "op TEXT NOT NULL, item_id INTEGER NOT NULL, payload TEXT NOT NULL, at REAL NOT NULL)")
        self._lock = threading.Lock()

    def append(self, ops: list[CatalogueOp]) -> str:
        """All of `ops` in one transaction; returns the cursor after them."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO catalogue (op, item_id, payload, at) VALUES (?, ?, ?, ?)",
                                     [(o.op, o.item_id, o.payload(), o.at) for o in ops])
                seq = self._db.execute("SELECT MAX(seq) FROM catalogue").fetchone()[0]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return str(seq or 0)

    def read(self, cursor: str, limit: int = 1000) -> tuple[list[CatalogueOp], str]:
        with self._lock:
            rows = self._db.execute("SELECT seq, op, item_id, at, payload FROM catalogue WHERE seq > ? ORDER BY seq "
                                    "LIMIT ?", (int(cursor), limit)).fetchall()
        if not rows:
            return [], cursor
        return [CatalogueOp.parse(op, item, at, payload) for _, op, item, at, payload in rows], str(rows[-1][0])

    def close(self) -> None:
        self._db.close()


class RedisCatalogue:
    """A stream beside the Redis event log (same hash tag): XADD appends, XRANGE from the cursor reads."""

    KEY = "{recsys}:catalogue"

    def __init__(self, url: str) -> None:
        import redis

        self.r = redis.Redis.from_url(os.path.expandvars(url), socket_timeout=10)  # `${REDIS_PASSWORD}` in a cluster

    def append(self, ops: list[CatalogueOp]) -> str:
        pipe = self.r.pipeline(transaction=True)
        for o in ops:
            pipe.xadd(self.KEY, {"op": o.op, "item_id": o.item_id, "at": repr(o.at), "payload": o.payload()})
        ids = pipe.execute()
        return ids[-1].decode() if ids else START

    def read(self, cursor: str, limit: int = 1000) -> tuple[list[CatalogueOp], str]:
        start = "-" if cursor == START else "(" + cursor
        rows = self.r.xrange(self.KEY, min=start, max="+", count=limit)
        if not rows:
            return [], cursor
        ops = [CatalogueOp.parse(f[b"op"].decode(), int(f[b"item_id"]), float(f[b"at"]), f[b"payload"].decode())
               for _, f in rows]
        return ops, rows[-1][0].decode()

    def close(self) -> None:
        self.r.close()


def open_catalogue(settings: Settings) -> CatalogueLog:
    """Where the event log is: the cluster's Redis (`event_log_url`), else the local SQLite file."""
    if settings.event_log_url:
        return RedisCatalogue(settings.event_log_url)
    return SqliteCatalogue(settings.event_log_path)


@dataclass
class CatalogueState:
    """The log folded: the latest upsert of each item still listed, and the retired ids. `follow` reads what was
    appended since the last call (many replicas each keep their own state, from the same log)."""

    items: dict[int, CatalogueOp] = field(default_factory=dict)  # item id → its latest upsert (not retired)
    retired: set[int] = field(default_factory=set)
    cursor: str = START

    def apply(self, ops: list[CatalogueOp]) -> set[int]:
        changed = set()
        for o in ops:
            changed.add(o.item_id)
            if o.op == "upsert":
                self.items[o.item_id] = o
                self.retired.discard(o.item_id)
            else:
                self.items.pop(o.item_id, None)
                self.retired.add(o.item_id)
        return changed

    def follow(self, log: CatalogueLog, limit: int = 1000) -> set[int]:
        """Apply every op after the cursor; returns the ids that changed."""
        changed: set[int] = set()
        while True:
            ops, self.cursor = log.read(self.cursor, limit)
            changed |= self.apply(ops)
            if len(ops) < limit:
                return changed


def read_state(settings: Settings) -> CatalogueState:
    """The whole catalogue log folded (an empty state when nothing was ever logged)."""
    state = CatalogueState()
    if not settings.event_log_url and not settings.event_log_path.exists():
        return state
    log = open_catalogue(settings)
    try:
        state.follow(log)
    finally:
        log.close()
    return state


def upsert_ops(items: list[CatalogueItem], content: np.ndarray, now: float | None = None) -> list[CatalogueOp]:
    now = time.time() if now is None else now
    return [CatalogueOp("upsert", it.item_id, now, it, content[j]) for j, it in enumerate(items)]
