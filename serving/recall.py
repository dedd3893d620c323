"""Recall stage: the user's online features → user encoder (ONNX) on the recent sequence → ANN search
(faiss HNSW) → top-N candidates.

Input: a user id (the deployment reads the features) or a `UserContext` (`Recaller`). Output: `Recalled` /
`Candidates` (raw item ids in recall order, scores, channel per item).
Items the user already has, and retired ones, are filtered; a popularity channel (decayed counts that follow the
event stream, `serving.popularity`) fills the pool and answers alone for a user with no usable history (cold
start). Items never trained on still have vectors: the item tower adds their content embedding, so they are in
the index too; items upserted into the live catalogue since the index was built get a vector from their content
and a "new" channel (`core.catalogue`). Exact search is the fallback when the ANN index is absent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from ray import serve

from core.artifacts import ONNX_FILE, load_recall_index, model_info, onnx_session, recall_index_built
from core.catalogue import CatalogueState
from core.errors import one_line
from core.events import open_event_log
from core.names import USER_ENCODER
from core.settings import Settings, load_settings
from serving.catalogue import CatalogueFollower
from serving.contracts import Candidates, Recalled, UserContext
from serving.features import FeatureReader, read_user
from serving.id_lookup import IdLookup
from serving.loopback import bind_loopback
from serving.popularity import ItemHeat

log = logging.getLogger("ray.serve")
VECTOR_CACHE = 20_000  # user vectors kept per replica, by history (64-d: ~6 MiB with their keys)


@dataclass(frozen=True)
class _NewItems:
    """Items upserted since the index was built: raw ids, content-only vectors, upsert times."""

    ids: np.ndarray
    vectors: np.ndarray
    at: np.ndarray

    @classmethod
    def empty(cls, d: int) -> _NewItems:
        return cls(np.zeros(0, dtype=np.int64), np.zeros((0, d), dtype=np.float32), np.zeros(0))


class Recaller:
    def __init__(self, settings: Settings, reader: FeatureReader | None = None,
                 catalogue: CatalogueState | None = None) -> None:
        self.n = settings.recall_candidates
        self.n_popular = settings.popular_candidates
        self.n_new = settings.new_item_candidates
        self.exact_max = settings.exact_recall_max_items
        self.index = load_recall_index(settings)
        self.index_of = self.index.index_of
        self.positions = IdLookup(self.index_of)
        self._vectors: OrderedDict[bytes, np.ndarray] = OrderedDict()
        info = model_info(settings, "user_encoder")
        self.version = info.version
        self.max_len = int(info.config["max_len"])
        self.encoder = onnx_session(settings.model_repo / USER_ENCODER / info.version / ONNX_FILE)
        reader = reader or FeatureReader(settings)
        self.rebuilt = reader.items(self.index.item_ids[1:], fields=("popularity",)).popularity
        self.heat = ItemHeat(settings.popularity_half_life_h * 3600, recall_index_built(settings))
        self.retired: frozenset[int] = frozenset()  # index positions of retired items
        self._retired_mask = np.zeros(len(self.index.item_ids), dtype=bool)  # the same, as a mask over positions
        self._retired_mask[0] = True  # position 0 is padding, never a candidate
        self.new_items = _NewItems.empty(self.index.embeddings.shape[1])
        self.set_popularity(time.time())
        if catalogue is not None:
            self.set_catalogue(catalogue)
        self.user_vector(np.zeros((1, self.max_len), dtype=np.int64))  # warm-up: first ORT run allocates

    def set_popularity(self, now: float) -> None:
        """Order the popular channel by the decayed counts now (`serving.popularity`); one swap of a tuple."""
        pop = self.heat.decayed(self.index.item_ids[1:], self.rebuilt, now)
        order = np.argsort(-pop, kind="stable")
        self._pop_order = (order + 1, pop[order] / max(1e-9, float(pop.max(initial=0.0))))

    def follow_events(self, events) -> None:
        """The events logged since the last call (an `EventLog`) into the popular channel's order. The live Recall
        calls it every `catalogue_poll_s`; a batch job once, so its lists use the popularity the graph uses."""
        if self.heat.poll(events):
            self.set_popularity(time.time())

    @property
    def popular(self) -> np.ndarray:
        return self._pop_order[0]

    def set_catalogue(self, state: CatalogueState) -> None:
        """Retired items leave every channel; items upserted since the index was built (not in it) get a vector
        from their content alone (the item tower's projection, `PROJ_FILE`) and a channel of their own. An
        upserted item the index has keeps its trained vector (its row changes in Feast; its id stays learned)."""
        self.retired = frozenset(self.index_of[i] for i in state.retired if i in self.index_of)
        mask = np.zeros(len(self.index.item_ids), dtype=bool)
        mask[0] = True
        mask[list(self.retired)] = True
        self._retired_mask = mask  # one swap: a request in flight keeps the mask it started with
        fresh = [op for i, op in state.items.items() if i not in self.index_of and op.content is not None]
        if not fresh or self.index.proj is None:
            if fresh:
                log.warning("recall: %d upserted items wait for a retrain: index v%s has no content projection",
                            len(fresh), self.version)
            self.new_items = _NewItems.empty(self.index.embeddings.shape[1])
            return
        content = np.stack([op.content for op in fresh]).astype(np.float32)
        self.new_items = _NewItems(np.array([op.item_id for op in fresh], dtype=np.int64),
                                   content @ self.index.proj.T, np.array([op.at for op in fresh]))

    def history(self, recent_items: list[int]) -> np.ndarray:
        """(1, max_len) left-padded item indices; ids unknown to the index are skipped."""
        idx = self.positions.rows(recent_items)
        idx = idx[idx > 0][-self.max_len :]
        out = np.zeros((1, self.max_len), dtype=np.int64)
        if len(idx):
            out[0, -len(idx) :] = idx
        return out

    def user_vector(self, history: np.ndarray) -> np.ndarray:
        """The encoder's vector for a history, kept per distinct history (LRU): a user's vector changes only when
        their sequence does, and repeat requests (a refresh, the next page, a retried call) reuse it."""
        key = history.tobytes()
        u = self._vectors.get(key)
        if u is not None:
            self._vectors.move_to_end(key)
            return u
        u = self.encoder.run(None, {"history": history})[0][0]  # (d,)
        self._vectors[key] = u
        if len(self._vectors) > VECTOR_CACHE:
            self._vectors.popitem(last=False)
        return u

    def candidates(self, user: UserContext, exclude: list[int] | tuple[int, ...] = (),
                   n: int | None = None) -> Candidates:
        """The user's whole exclusion set (`UserContext.excluded`) is filtered, not only the model's window, and
        the request's `exclude` (its context's `exclude_items`), and retired items. `n`: the model channel's size
        (the ranker version's, `RankingStage.pool`; default `recall_candidates`), also the popular answer's for a
        user without history."""
        n = self.n if n is None else max(1, min(int(n), self.n))
        hist = self.history(user.recent_items)
        seen = self._retired_mask.copy()  # over index positions; the user's own set can hold thousands of ids
        pos = self.positions.rows([*user.excluded(), *exclude])
        seen[pos[pos > 0]] = True
        if not hist[0].any():
            cands = self._popular(seen, n, np.zeros(0, dtype=np.int64), np.zeros(0), vector=None)
            return self._add_new(cands, user, exclude, None)
        u = self.user_vector(hist)
        idx, scores, channel = self._search(u, n, seen)
        cands = self._popular(seen, self.n_popular, idx, scores, vector=u, channel=channel)
        return self._add_new(cands, user, exclude, u)

    def _add_new(self, cands: Candidates, user: UserContext, exclude: list[int] | tuple[int, ...],
                 u: np.ndarray | None) -> Candidates:
        """The best `new_item_candidates` items upserted since the index was built, by u·v (the most recent ones
        for a user without a vector): a channel of their own, so a cold item can be shown at all."""
        new = self.new_items
        if not len(new.ids) or self.n_new <= 0:
            return cands
        score = new.vectors @ u if u is not None else new.at
        drop = set(user.excluded()) | set(exclude)
        picked = [j for j in np.argsort(-score, kind="stable") if int(new.ids[j]) not in drop][: self.n_new]
        cands.item_ids += [int(new.ids[j]) for j in picked]
        cands.scores += [float(score[j]) if u is not None else 0.0 for j in picked]
        cands.channels += ["new"] * len(picked)
        return cands

    def _search(self, u: np.ndarray, n: int, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        """The n best items not `seen` (a mask over index positions). Every item scored (exact) up to
        `exact_recall_max_items`: at 1,682 items one matrix-vector product, the seen ones set to -inf, and a
        partial sort take 0.016 ms against HNSW's 0.095 ms (efSearch 256), and find the true top n. Larger
        catalogues use the index, asked for n more than the user has seen."""
        if self.index.ann is not None and len(self.index.item_ids) - 1 > self.exact_max:
            k = min(n + int(seen.sum()), len(self.index.item_ids) - 1)
            scores, rows = self.index.ann.search(u[None, :].astype(np.float32), k)
            ok = rows[0] >= 0
            idx, scores = rows[0][ok] + 1, scores[0][ok]
            keep = ~seen[idx]
            return idx[keep][:n], scores[keep][:n], "ann"
        s = self.index.embeddings @ u
        s[seen] = -np.inf  # position 0 (padding) is always in `seen`
        n = min(n, len(s) - int(seen.sum()))
        if n <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=s.dtype), "exact"
        top = np.argpartition(-s, n - 1)[:n]
        top = top[np.argsort(-s[top], kind="stable")]
        return top, s[top], "exact"

    def _popular(self, seen: np.ndarray, n: int, items: np.ndarray, scores: np.ndarray,
                 vector: np.ndarray | None, channel: str = "ann") -> Candidates:
        """Append up to n popular items not seen and not already candidates (scored u·v when there is a user)."""
        rows, added = items, items[:0]
        if n > 0:  # off by default (`popular_candidates` 0) for a user with a vector: nothing to mask or gather
            order, pop = self._pop_order
            have = seen.copy()
            have[items] = True
            avail = ~have[order]
            added = order[avail][:n]
            added_scores = self.index.embeddings[added] @ vector if vector is not None else pop[avail][:n]
            rows, scores = np.concatenate([items, added]), np.concatenate([scores, added_scores])
        return Candidates(item_ids=self.index.item_ids[rows].tolist(), scores=scores.astype(np.float64).tolist(),
                          channels=[channel] * len(items) + ["popular"] * len(added),
                          model_version=self.version if vector is not None else "")


@serve.deployment(name="Recall", max_ongoing_requests=32)
class Recall:
    """The user's features (Feast) and their candidates, in one call: recall is the first stage that needs the
    features, and a Serve hop of its own costs more CPU per request than the read (README, Architecture).

    `user_config` = {"retrieval": version}: a new version loads the exported index beside the old one,
    off the event loop, then swaps one reference; requests keep being answered by the old one meanwhile."""

    def __init__(self) -> None:
        bind_loopback()
        self.settings = load_settings()
        self.reader = FeatureReader(self.settings)
        self.reader.user(-1)  # warm-up: the first online read pays for connection and registry setup
        self.catalogue = CatalogueFollower(self.settings)
        self.catalogue.poll()
        self.recaller = Recaller(self.settings, self.reader, self.catalogue.state)
        self._events = None  # the event log, opened by the first refresh (popularity)
        self._refresh: asyncio.Task | None = None

    async def reconfigure(self, config: dict) -> None:
        wanted = str((config or {}).get("retrieval") or "")
        if wanted and wanted != self.recaller.version:
            self.recaller = await asyncio.to_thread(Recaller, self.settings, self.reader, self.catalogue.state)

    def _ensure_refresh(self) -> None:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        """Every `catalogue_poll_s`: the catalogue's changes and the events logged since (popularity)."""
        while True:
            await asyncio.sleep(self.settings.catalogue_poll_s)
            await asyncio.to_thread(self.refresh)

    def refresh(self) -> None:
        recaller = self.recaller
        if self.catalogue.poll():
            recaller.set_catalogue(self.catalogue.state)
        try:
            if self._events is None:
                self._events = open_event_log(self.settings)
            recaller.follow_events(self._events)
        except Exception as e:  # the event log unreachable: the popular channel keeps its last order
            log.warning("recall: event stream unreadable (%s); popularity not refreshed", one_line(e))

    async def recall(self, user_id: int, exclude: list[int] | None = None, n: int | None = None) -> bytes:
        """Features within their timeout (else cold start, flagged), then n candidates (the Ingress asks for as
        many as the user's ranker re-orders): ~1 ms of numpy/faiss, cheaper inline than a thread hop.

        Answered as `Recalled`'s JSON, which the Ingress validates (`Recalled.model_validate_json`): Serve pickles
        a return value with cloudpickle, whose pure-Python pickler costs more for a pydantic model than one Rust
        call each side for its JSON (README, measurement log)."""
        self._ensure_refresh()
        user, degraded, features_ms = await read_user(self.reader, user_id, self.settings.features_timeout_ms)
        cands = self.recaller.candidates(user, exclude or (), n)
        user.seen_items = None  # used; the later stages need only the profile
        return Recalled(user=user, candidates=cands, features_ms=features_ms, degraded=degraded).model_dump_json()

    async def popular(self, n: int) -> list[int]:
        """The n most popular raw item ids not retired: the Ingress keeps them as its answer for when recall is
        lost."""
        self._ensure_refresh()
        r = self.recaller
        return [int(r.index.item_ids[i]) for i in r.popular[: n + len(r.retired)] if i not in r.retired][:n]
