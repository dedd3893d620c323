"""Ranking stage: item features for the candidates (Feast) → ranker on Triton (gRPC) → business rules → top-k.

Input: `UserContext`, `Candidates`, k. Output: `RankedItems`.
Runs in the Ingress replica, not a deployment of its own: the model runs on Triton (its own server, scaled by
KServe in a cluster), and what is left here, an item-row gather, one gRPC call and the rules, is ~1 ms of CPU
against ~3–4 ms for the Serve hop a separate deployment would cost on each request.
Triton down, slow or erroring → the candidates keep recall order and the answer carries a `Degradation`;
the rules (no repeats, genre diversity) apply either way. Inputs are built with the same transforms the
ranker was trained on (`core.ranking_inputs`), with indices from the exported recall index.
"""

from __future__ import annotations

import asyncio
import logging
import math
import zlib
from dataclasses import dataclass
from functools import partial

import numpy as np

from core.artifacts import (
    CONTENT_PROJECTION_FILE,
    Route,
    content_layout,
    item_index,
    load_item_ids,
    model_info,
    read_route,
)
from core.errors import MissingStepError, one_line
from core.names import RANKER
from core.ranking_inputs import blend, item_dense_arrays, user_dense_arrays
from core.settings import Settings
from serving.breaker import Breaker
from serving.contracts import Candidates, Degradation, RankedItem, RankedItems, RequestContext, UserContext
from serving.failures import public_reason
from serving.features import FeatureReader, ItemCache, ItemRows, take_rows
from serving.id_lookup import IdLookup
from serving.triton_client import RankerClient

log = logging.getLogger("ray.serve")  # the replica's log

WARM_ITEMS = 5_000  # item rows read into the cache at start-up


def diversify(order: list[int], first_genre: list[str], k: int, max_share: float) -> list[int]:
    """Greedy top-k from `order` (positions) with at most ceil(max_share·k) items per first genre.

    Items over a genre's cap are deferred, not dropped: they fill the list if too few others remain.
    """
    cap = max(1, math.ceil(max_share * k))
    counts: dict[str, int] = {}
    picked: list[int] = []
    deferred: list[int] = []
    for pos in order:
        g = first_genre[pos]
        if counts.get(g, 0) < cap:
            picked.append(pos)
            counts[g] = counts.get(g, 0) + 1
        else:
            deferred.append(pos)
        if len(picked) == k:
            return picked
    return picked + deferred[: k - len(picked)]


def explore(top: list[int], order: list[int], channels: list[str], k: int,
            share: float) -> tuple[list[int], set[int]]:
    """Give ⌊share·k + ½⌋ of the k slots to the best-ordered "new" candidates (items upserted since the last
    retrain, which the model cannot score well yet: shown, they get the feedback the next retrain learns from).
    New items that earned a slot by their score count towards it; the explored ones take the last slots."""
    slots = math.floor(share * k + 0.5) if share > 0 else 0
    if slots <= 0 or "new" not in channels:
        return top, set()
    have = sum(channels[p] == "new" for p in top)
    chosen = set(top)
    extra = [p for p in order if channels[p] == "new" and p not in chosen][: max(0, slots - have)]
    if not extra:
        return top, set()
    kept = list(top)
    for _ in extra[max(0, k - len(kept)) :]:  # past the free slots: drop the lowest-placed item that is not new
        drop = next((j for j in range(len(kept) - 1, -1, -1) if channels[kept[j]] != "new"), None)
        if drop is None:
            break
        kept.pop(drop)
    final = (kept + extra)[:k]
    return final, set(extra) & set(final)


def user_bucket(user_id: int) -> float:
    """A user's stable position in [0, 100): the same in every replica and process (crc32, not hash())."""
    return zlib.crc32(str(user_id).encode()) % 10_000 / 100


@dataclass(frozen=True)
class RankerVersion:
    """What serving needs of one exported ranker version: its inputs' shapes and its blend weight."""

    version: str
    genres: list[str]
    max_len: int
    recall_weight: float  # tuned on validation at training
    user_once: bool = True  # history and user_dense sent once per request (False: versions exported before)
    # A "projected" graph's content layer, (d, content_dim + 1), weight then bias: applied here to each item once
    # (kept per item), so a request carries d floats per candidate; None: the graph takes raw content (older ones)
    content_projection: np.ndarray | None = None
    candidates: int = 0  # how many of recall's model candidates it re-orders (chosen on validation); 0: all

    @classmethod
    def load(cls, settings: Settings, version: str) -> RankerVersion:
        cfg = model_info(settings, RANKER, version).config
        projection = None
        if content_layout(cfg) == "projected":
            path = settings.model_repo / RANKER / version / CONTENT_PROJECTION_FILE
            if not path.exists():
                raise MissingStepError(f"ranker v{version} takes projected content but {path} is missing: run "
                                       "`recsys export` again")
            projection = np.load(path).astype(np.float32)
        return cls(version, list(cfg["genres"]), int(cfg["max_len"]), float(cfg.get("recall_weight", 0.0)),
                   cfg.get("serving_inputs", "per_row") == "user_once", projection, int(cfg.get("candidates", 0)))

    def content(self, rows: ItemRows) -> np.ndarray:
        """The graph's `item_content` rows for these items."""
        if self.content_projection is None:
            return np.ascontiguousarray(rows.content, dtype=np.float32)
        w = self.content_projection
        return np.ascontiguousarray(rows.content @ w[:, :-1].T + w[:, -1], dtype=np.float32)


class RankingStage:
    def __init__(self, settings: Settings, reader: FeatureReader | None = None,
                 client: RankerClient | None = None, route: Route | None = None) -> None:
        self.settings = settings
        self.items = ItemCache(reader or FeatureReader(settings), settings.item_cache_ttl_s)
        self.set_route(route or read_route(settings))
        self.index_of = item_index(load_item_ids(settings))
        self.positions = IdLookup(self.index_of)
        try:  # warm-up: prime the item cache before traffic
            self.items.items(list(self.index_of)[:WARM_ITEMS])
        except Exception as e:  # Feast down at start: start cold, rows are read per request (or the stage degrades)
            log.warning("ranking: item cache warm-up failed, starting cold: %s", one_line(e))
        self.client = client or RankerClient(settings.triton_grpc_url)
        self.timeout_s = settings.ranking_timeout_ms / 1e3
        self.breaker = Breaker("ranking", settings.breaker_failures, settings.breaker_cooldown_s)
        self.retired: frozenset[int] = frozenset()  # raw ids; the replica's catalogue follower sets it

    def set_route(self, route: Route) -> None:
        """Switch versions between requests: build the new table, then swap one reference (no lock needed)."""
        self._active = (route, {v: RankerVersion.load(self.settings, v) for v in route.versions})

    @property
    def route(self) -> Route:
        return self._active[0]

    @property
    def version(self) -> str:
        return self.route.champion

    def model_for(self, user_id: int) -> RankerVersion:
        route, models = self._active
        if route.challenger and user_bucket(user_id) < route.percent:
            return models.get(route.challenger, models[route.champion])
        return models[route.champion]

    def pool(self, user_id: int, context: RequestContext | None = None) -> int:
        """How many model candidates to ask recall for: as many as this user's ranker version re-orders (chosen on
        validation), or the whole `recall_candidates` pool for a request whose genre/year filters will drop some
        (the ranker then re-orders its count of those that pass)."""
        if context is not None and context.filters_items():
            return self.settings.recall_candidates
        return pool_size(self.settings, self.model_for(user_id).candidates)

    def inputs(self, user: UserContext, cands: Candidates, items: ItemRows,
               model: RankerVersion | None = None) -> dict[str, np.ndarray]:
        """The six ranker inputs: one row per candidate; history and user_dense once (or per candidate for a
        version exported before "user_once")."""
        if model is None:
            route, models = self._active
            model = models[route.champion]
        n = len(cands.item_ids)
        users = 1 if model.user_once else n
        hist = self.positions.rows(user.recent_items)
        hist = hist[hist >= 0][-model.max_len :]
        history = np.zeros((users, model.max_len), dtype=np.int64)
        if len(hist):
            history[:, -len(hist) :] = hist
        return {
            "history": history,
            "item": self.positions.rows(cands.item_ids, missing=0)[:, None],
            "item_dense": self.items.derived(("item_dense", *model.genres), items, partial(_item_dense, model.genres)),
            "item_content": self.items.derived(("item_content", model.version), items, model.content),
            "user_dense": np.repeat(user_dense_arrays([user.n_interactions], [user.mean_rating]), users, axis=0),
            "recall_score": np.asarray(cands.scores, dtype=np.float32)[:, None],
        }

    async def rank(self, user: UserContext, cands: Candidates, k: int,
                   context: RequestContext | None = None) -> RankedItems:
        """The request's attribute filters apply to the candidates before anything is scored, so the top k is cut
        from what passes; fewer than k passing → fewer items, never padding. Its `exclude_items` never reach here:
        recall (and the Ingress's popular fallback) leave them out of the candidates."""
        if self.retired:  # recall drops them too; this covers the Ingress's popular fallback and a late poll
            keep = [j for j, i in enumerate(cands.item_ids) if i not in self.retired]
            if len(keep) < len(cands.item_ids):
                cands = _take(cands, keep)
        if not cands.item_ids:
            return RankedItems(items=[], model_version="")
        # Cached rows are a gather (~0.1 ms): a thread hop only when the online store must be read.
        items = self.items.fresh(cands.item_ids)
        if items is None:
            items = await asyncio.to_thread(self.items.items, cands.item_ids)
        if context is not None and context.filters_items():
            keep = [j for j in range(len(cands.item_ids)) if context.admits(items.genres[j], int(items.year[j]))]
            if len(keep) < len(cands.item_ids):
                cands, items = _take(cands, keep), take_rows(items, keep)
            if not keep:
                return RankedItems(items=[], model_version="")
        degraded = None
        model = self.model_for(user.user_id)
        if model.candidates > 0:  # a larger pool (a filtered request's): the ranker re-orders its count of it
            cands, items = _cap_model_channel(cands, items, model.candidates)
        version = model.version
        recall = np.asarray(cands.scores, dtype=np.float64)
        p_click: np.ndarray | None = None
        if not self.breaker.allow():  # Triton kept failing: recall order now, not after another timeout
            degraded, version = self._degrade(f"triton {self.breaker.reason()}")
        else:
            try:
                async with asyncio.timeout(self.timeout_s):
                    p_click = await self.client.score(self.inputs(user, cands, items, model), version, self.timeout_s)
                self.breaker.success()
            except TimeoutError:
                self.breaker.failure()
                degraded, version = self._degrade(f"triton timeout after {self.timeout_s * 1e3:.0f} ms")
            except Exception as e:  # unreachable, model unloaded, bad response: recall order, flagged
                self.breaker.failure()
                degraded, version = self._degrade(f"triton {public_reason('ranking', e)}")
        final = recall if p_click is None else blend(p_click, recall, model.recall_weight)
        order = _unique(np.argsort(-final, kind="stable"), cands.item_ids)
        first = [g[0] if g else "" for g in items.genres]
        top = diversify(order, first, k, self.settings.max_per_genre_share)
        top = sorted(top, key=lambda p: -final[p])  # the rule picks the set; the score orders it
        top, explored = explore(top, order, cands.channels, k, self.settings.explore_share)
        out = [RankedItem(item_id=cands.item_ids[p], score=float(final[p]), title=items.title[p],
                          year=int(items.year[p]), genres=items.genres[p], channel=cands.channels[p],
                          explore=p in explored,
                          score_parts={"recall": float(recall[p]),
                                       **({"p_click": float(p_click[p])} if p_click is not None else {})})
               for p in top]
        return RankedItems(items=out, model_version=version, degraded=degraded)

    @staticmethod
    def _degrade(reason: str) -> tuple[Degradation, str]:
        return Degradation(stage="ranking", reason=reason, fallback="recall order"), ""


def _take(cands: Candidates, keep: list[int]) -> Candidates:
    return Candidates(item_ids=[cands.item_ids[j] for j in keep], scores=[cands.scores[j] for j in keep],
                      channels=[cands.channels[j] for j in keep], model_version=cands.model_version)


def pool_size(settings: Settings, chosen: int) -> int:
    """The model channel a ranker version re-orders: its count chosen on validation, at most `recall_candidates`;
    a version without a choice (0) re-orders the whole pool."""
    return settings.recall_candidates if chosen <= 0 else min(settings.recall_candidates, chosen)


def _cap_model_channel(cands: Candidates, items: ItemRows, n: int) -> tuple[Candidates, ItemRows]:
    """The first n candidates of recall's model channel (it comes in recall order) and every other channel's."""
    model = [j for j, c in enumerate(cands.channels) if c in ("ann", "exact")]
    if len(model) <= n:
        return cands, items
    drop = set(model[n:])
    keep = [j for j in range(len(cands.item_ids)) if j not in drop]
    return _take(cands, keep), take_rows(items, keep)


def _item_dense(genres: list[str], rows: ItemRows) -> np.ndarray:
    return item_dense_arrays(rows.genres, rows.year, rows.popularity, rows.item_mean_rating, genres)


def _unique(order: np.ndarray | list[int], ids: list[int]) -> list[int]:
    """Positions in `order` with repeated item ids removed (first occurrence wins)."""
    order = np.asarray(order, dtype=np.int64)
    ranked = np.asarray(ids, dtype=np.int64)[order]
    _, first = np.unique(ranked, return_index=True)
    return order[np.sort(first)].tolist()
