"""Catalogue operations while serving: the writer (CLI and admin API) and each replica's follower.

Writer order: embed (the same sentence-transformers model as the data set's items, `core.content`), push the
item rows to Feast's online store, then append to the catalogue log. The log append is the commit: followers
act on it, and only then is the item's row already readable. A failure before it leaves nothing served (a
pushed row of an item no one can recall is harmless) and the call is safe to repeat: an upsert is idempotent.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime

import grpc
import numpy as np
import pandas as pd
from pydantic import ValidationError

from core.artifacts import load_item_ids
from core.catalogue import (
    ITEM_PUSH_SOURCE,
    CatalogueItem,
    CatalogueState,
    ItemsUpsert,
    open_catalogue,
    parse_items,
    upsert_ops,
)
from core.errors import DataFormatError, MissingStepError, one_line
from core.settings import Settings
from serving.failures import Refusal
from serving.feature_server import online_store
from serving.grpc_api import first_error

log = logging.getLogger("ray.serve")
_LOCK = threading.Lock()


@contextmanager
def _local_lock() -> Iterator[None]:
    with _LOCK:
        yield


def parse_upsert(raw: bytes) -> list[CatalogueItem]:
    """POST /items body → items; malformed JSON 400, an invalid field 422 naming it (e.g. "items.2.title")."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refusal(400, grpc.StatusCode.INVALID_ARGUMENT, "malformed JSON body") from None
    try:
        items = ItemsUpsert.model_validate(body).items
        return parse_items([it.model_dump() for it in items])  # ids given twice
    except ValidationError as e:
        field, msg = first_error(e.errors())
        raise Refusal(422, grpc.StatusCode.INVALID_ARGUMENT, msg, field) from None
    except DataFormatError as e:
        raise Refusal(422, grpc.StatusCode.INVALID_ARGUMENT, str(e), "items") from None


class CatalogueWriter:
    """`push_lock`: what serialises writes to the online store with the replica's other writers. Feast's SQLite
    store shares one connection between threads, so two pushes at once interleave in one transaction and a row
    can be lost (20 concurrent upserts lost one here); the Feedback replica passes its event log's push lock."""

    def __init__(self, settings: Settings, store=None,
                 push_lock: Callable[[], AbstractContextManager] | None = None) -> None:
        self.settings = settings
        self.store = store or online_store(settings)
        self.log = open_catalogue(settings)
        self.push_lock = push_lock or _local_lock
        self._mean_rating: float | None = None
        self._encoder = None  # core.content_onnx.OnnxEncoder, False when there is no graph (torch then)
        self._encoder_lock = threading.Lock()
        self._used = 0.0  # time.monotonic() of the encoder's last use

    def embed(self, items: pd.DataFrame) -> np.ndarray:
        """The items' content vectors: with the ONNX graph `recsys features` built (no torch in this process),
        else with sentence-transformers (the same vectors; torch stays resident)."""
        with self._encoder_lock:
            self._used = time.monotonic()
            if self._encoder is None:
                from core.content_onnx import encoder, graph_dir

                self._encoder = encoder(self.settings.content_model, self.settings.model_cache) or False
                if not self._encoder:
                    log.warning("catalogue: no ONNX item encoder in %s (`recsys features` builds it); embedding "
                                "upserts with torch", graph_dir(self.settings.content_model,
                                                                self.settings.model_cache))
            enc = self._encoder
        try:
            if enc:
                return enc.embed_items(items)
            from core.content import embed_items

            return embed_items(items, self.settings.content_model)
        finally:
            self._used = time.monotonic()

    def release_idle(self, idle_s: float) -> bool:
        """Drop the ONNX encoder when unused for `idle_s` (an upsert is rare; loaded and used, the encoder held
        ~80 MB of the replica, its weights mapped, ~60 of which a drop and a heap trim gave back here; loading it
        again takes ~0.25 s). An embedding under way keeps its own reference. True when it was dropped."""
        with self._encoder_lock:
            if not self._encoder or time.monotonic() - self._used < idle_s:
                return False
            self._encoder = None
        import gc

        from serving.heap import trim_heap

        gc.collect()
        trim_heap()
        return True

    def _rows(self, ids: list[int], fields: tuple[str, ...]) -> dict[str, list]:
        return self.store.get_online_features(features=[f"item_features:{f}" for f in fields],
                                              entity_rows=[{"item_id": int(i)} for i in ids]).to_dict()

    def global_mean_rating(self) -> float:
        """A new item's mean rating, as the rebuild gives items without ratings: the mean over all rated
        interactions, i.e. the popularity-weighted mean of the items' means."""
        if self._mean_rating is None:
            try:
                ids = load_item_ids(self.settings)[1:].tolist()
            except MissingStepError:  # nothing exported, so nothing serves it yet; the next rebuild sets its row
                return 0.0
            rows = self._rows(ids, ("popularity", "item_mean_rating"))
            pop = np.array([p or 0 for p in rows["popularity"]], dtype=np.float64)
            mean = np.array([m or 0.0 for m in rows["item_mean_rating"]], dtype=np.float64)
            self._mean_rating = float((pop * mean).sum() / pop.sum()) if pop.sum() else 0.0
        return self._mean_rating

    def upsert(self, items: list[CatalogueItem]) -> dict:
        """Embed, push the online rows (an existing item keeps its popularity and mean rating), log. Answer: which
        ids were new and which updated, and the log cursor after them."""
        if not items:
            raise DataFormatError("no items to upsert")
        ids = [it.item_id for it in items]
        frame = pd.DataFrame([it.row() for it in items])
        content = self.embed(frame)
        have = self._rows(ids, ("title", "popularity", "item_mean_rating"))
        known = [t is not None for t in have["title"]]
        now = time.time()
        rows = pd.DataFrame({
            "item_id": np.asarray(ids, dtype=np.int64),
            "event_timestamp": datetime.fromtimestamp(now, UTC),
            "title": frame["title"].astype(str),
            "genres": [list(g) for g in frame["genres"]],
            "year": np.array([-1 if it.year is None else it.year for it in items], dtype=np.int64),
            "popularity": np.array([p if ok and p is not None else 0 for p, ok in zip(have["popularity"], known,
                                                                                   strict=True)], dtype=np.int64),
            "item_mean_rating": np.array([m if ok and m is not None else self.global_mean_rating()
                                          for m, ok in zip(have["item_mean_rating"], known, strict=True)],
                                         dtype=np.float32),
            "content_embedding": list(content.astype(np.float32)),
        })
        from feast.data_source import PushMode

        with self.push_lock():
            self.store.push(ITEM_PUSH_SOURCE, rows, to=PushMode.ONLINE)
        cursor = self.log.append(upsert_ops(items, content, now))
        return {"upserted": len(items), "new": [i for i, k in zip(ids, known, strict=True) if not k],
                "updated": [i for i, k in zip(ids, known, strict=True) if k], "cursor": cursor}

    def retire(self, item_ids: list[int]) -> dict:
        """Retire known items (every answer drops them within one poll); an unknown id refuses the whole call."""
        from core.catalogue import CatalogueOp

        ids = list(dict.fromkeys(int(i) for i in item_ids))
        if not ids:
            raise DataFormatError("no item ids to retire")
        titles = self._rows(ids, ("title",))["title"]
        unknown = [i for i, t in zip(ids, titles, strict=True) if t is None]
        if unknown:
            raise DataFormatError(f"unknown item ids (nothing retired): {unknown[:20]}")
        now = time.time()
        cursor = self.log.append([CatalogueOp("retire", i, now) for i in ids])
        return {"retired": ids, "cursor": cursor}

    def close(self) -> None:
        self.log.close()

    def __enter__(self) -> CatalogueWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CatalogueFollower:
    """A replica's copy of the catalogue state, brought up to date by `poll` (blocking: call it off the loop).
    A failed read (the log's store down) keeps the last state and says so once per change of message."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = CatalogueState()
        self._log = None
        self._error = ""
        self._lock = threading.Lock()  # the replica's loop and a request that met an unknown item may both poll

    def poll(self) -> set[int]:
        with self._lock:
            return self._poll()

    def _poll(self) -> set[int]:
        try:
            if self._log is None:
                self._log = open_catalogue(self.settings)
            changed = self.state.follow(self._log)
            self._error = ""
            return changed
        except Exception as e:  # keep serving the state we have
            msg = one_line(e)
            if msg != self._error:
                log.warning("catalogue: could not read the log (%s); serving the last state", msg)
            self._error = msg
            return set()
