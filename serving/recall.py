"""Recall stage: the user's online features → user encoder (ONNX) on the recent sequence → ANN search
(faiss HNSW) → top-N candidates.

Input: a user id (the deployment reads the features) or a `UserContext` (`Recaller`). Output: `Recalled` /
`Candidates` (raw item ids in recall order, scores, channel per item).
Items the user already has are filtered; a popularity channel fills the pool and answers alone for a user
with no usable history (cold start). Items never trained on still have vectors: the item tower adds their
content embedding, so they are in the index too. Exact search is the fallback when the ANN index is absent.
"""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from core.artifacts import ONNX_FILE, load_recall_index, model_info, onnx_session
from core.names import USER_ENCODER
from core.settings import Settings, load_settings
from serving.contracts import Candidates, Recalled, UserContext
from serving.features import FeatureReader, read_user


class Recaller:
    def __init__(self, settings: Settings, reader: FeatureReader | None = None) -> None:
        self.n = settings.recall_candidates
        self.n_popular = settings.popular_candidates
        self.index = load_recall_index(settings)
        self.index_of = self.index.index_of
        info = model_info(settings, "user_encoder")
        self.version = info.version
        self.max_len = int(info.config["max_len"])
        self.encoder = onnx_session(settings.model_repo / USER_ENCODER / info.version / ONNX_FILE)
        reader = reader or FeatureReader(settings)
        pop = reader.items(self.index.item_ids[1:], fields=("popularity",)).popularity
        order = np.argsort(-pop, kind="stable")
        self.popular = order + 1  # item indices, most popular first
        self.popular_score = pop[order] / max(1, int(pop.max(initial=0)))
        self.user_vector(np.zeros((1, self.max_len), dtype=np.int64))  # warm-up: first ORT run allocates

    def history(self, recent_items: list[int]) -> np.ndarray:
        """(1, max_len) left-padded item indices; ids unknown to the index are skipped."""
        idx = [self.index_of[i] for i in recent_items if i in self.index_of][-self.max_len :]
        out = np.zeros((1, self.max_len), dtype=np.int64)
        if idx:
            out[0, -len(idx) :] = idx
        return out

    def user_vector(self, history: np.ndarray) -> np.ndarray:
        return self.encoder.run(None, {"history": history})[0][0]  # (d,)

    def candidates(self, user: UserContext, exclude: list[int] | tuple[int, ...] = ()) -> Candidates:
        """The user's whole exclusion set (`UserContext.excluded`) is filtered, not only the model's window, and
        the request's `exclude` (its context's `exclude_items`)."""
        hist = self.history(user.recent_items)
        seen = {self.index_of[i] for i in (*user.excluded(), *exclude) if i in self.index_of}
        if not hist[0].any():
            return self._popular(seen, self.n, [], [], [], vector=None)
        u = self.user_vector(hist)
        idx, scores, channel = self._search(u, self.n + len(seen))
        keep = [j for j, i in enumerate(idx) if i not in seen][: self.n]
        items = [int(idx[j]) for j in keep]
        return self._popular(seen, self.n_popular, items, [float(scores[j]) for j in keep], [channel] * len(keep),
                             vector=u)

    def _search(self, u: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, str]:
        n = min(n, len(self.index.item_ids) - 1)
        if self.index.ann is not None:
            scores, rows = self.index.ann.search(u[None, :].astype(np.float32), n)
            ok = rows[0] >= 0
            return rows[0][ok] + 1, scores[0][ok], "ann"
        s = self.index.embeddings[1:] @ u
        top = np.argpartition(-s, n - 1)[:n]
        top = top[np.argsort(-s[top], kind="stable")]
        return top + 1, s[top], "exact"

    def _popular(self, seen: set[int], n: int, items: list[int], scores: list[float], channels: list[str],
                 vector: np.ndarray | None) -> Candidates:
        """Append up to n popular items not seen and not already candidates (scored u·v when there is a user)."""
        have = set(items) | seen
        added = 0
        for i, p in zip(self.popular, self.popular_score, strict=True):
            if added >= n:
                break
            if int(i) in have:
                continue
            items.append(int(i))
            scores.append(float(self.index.embeddings[i] @ vector) if vector is not None else float(p))
            channels.append("popular")
            added += 1
        return Candidates(item_ids=[int(self.index.item_ids[i]) for i in items], scores=scores,
                          channels=channels, model_version=self.version if vector is not None else "")


@serve.deployment(name="Recall", max_ongoing_requests=32)
class Recall:
    """The user's features (Feast) and their candidates, in one call: recall is the first stage that needs the
    features, and a Serve hop of its own costs more CPU per request than the read (README, Architecture).

    `user_config` = {"retrieval": version}: a new version loads the exported index beside the old one,
    off the event loop, then swaps one reference; requests keep being answered by the old one meanwhile."""

    def __init__(self) -> None:
        self.settings = load_settings()
        self.reader = FeatureReader(self.settings)
        self.reader.user(-1)  # warm-up: the first online read pays for connection and registry setup
        self.recaller = Recaller(self.settings, self.reader)

    async def reconfigure(self, config: dict) -> None:
        wanted = str((config or {}).get("retrieval") or "")
        if wanted and wanted != self.recaller.version:
            self.recaller = await asyncio.to_thread(Recaller, self.settings, self.reader)

    async def recall(self, user_id: int, exclude: list[int] | None = None) -> Recalled:
        """Features within their timeout (else cold start, flagged), then candidates: ~1 ms of numpy/faiss,
        cheaper inline than a thread hop."""
        user, degraded, features_ms = await read_user(self.reader, user_id, self.settings.features_timeout_ms)
        cands = self.recaller.candidates(user, exclude or ())
        user.seen_items = None  # used; the later stages need only the profile
        return Recalled(user=user, candidates=cands, features_ms=features_ms, degraded=degraded)

    async def popular(self, n: int) -> list[int]:
        """The n most popular raw item ids: the Ingress keeps them as its answer for when recall is lost."""
        return [int(self.recaller.index.item_ids[i]) for i in self.recaller.popular[:n]]
