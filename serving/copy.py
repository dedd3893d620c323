"""Copy stage: one short blurb per recommended item, from the fine-tuned copy LM, guarded, within a budget.

Input: `UserContext`, `RankedItems`. Output: `CopyResult` (copies in the items' order, the model version,
how many were late or rejected). Without an exported copy model (or with `copy_lm: false`) every blurb is
the grounded template and says so (`source: "template"`). The model half (cache, batching, guard, budget)
is `serving.copy_lm`; the Ingress falls back to `template_copy` itself when this whole stage is late.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from core.artifacts import load_item_ids
from core.copy_guard import CopyFacts, ItemFacts, Taste, template_text
from core.settings import load_settings
from serving.catalogue import CatalogueFollower
from serving.contracts import Copy, CopyResult, RankedItem, RankedItems, UserContext
from serving.copy_lm import CopyModel, CopyWriter, guard_from_catalogue
from serving.features import FeatureReader
from serving.loopback import bind_loopback

log = logging.getLogger("ray.serve")


def item_facts(item: RankedItem) -> ItemFacts:
    return ItemFacts.from_row(item.item_id, item.title, item.year, item.genres)


def template_copy(item: RankedItem, because: str | None = None) -> Copy:
    """Facts only: 'Heat (1995) · Action, Crime. Because you watched Fargo.'"""
    return Copy(text=template_text(CopyFacts(item_facts(item), Taste(liked=(because,) if because else ()))),
                source="template")


def _close_loaded(loading: asyncio.Future) -> None:
    if not loading.cancelled() and loading.exception() is None:
        loading.result().close()


@serve.deployment(name="Copy", max_ongoing_requests=16)
class CopyStage:
    """`user_config` = {"copy": version}: that exported copy model loads off the event loop (requests get the
    template meanwhile), replaces the old one with an empty cache, then warms the cache for popular items."""

    def __init__(self) -> None:
        bind_loopback()
        self.s = load_settings()
        reader = FeatureReader(self.s)
        ids = [int(i) for i in load_item_ids(self.s)[1:]]
        rows = reader.items(ids, fields=("title", "genres", "year", "popularity"))
        self.catalogue = {i: ItemFacts.from_row(i, t, int(y), g)
                          for i, t, y, g, ok in zip(ids, rows.title, rows.year, rows.genres, rows.found, strict=True)
                          if ok}
        self.popular = [ids[j] for j in sorted(range(len(ids)), key=lambda j: -int(rows.popularity[j]))]
        self.guard = guard_from_catalogue(rows.title, rows.genres)
        self.writer = CopyWriter(None, self.guard, self.s.copy_cache_size, self._generate, self.s.copy_max_pending)
        self.loading: asyncio.Task | None = None
        self.warmed = 0
        self.follower = CatalogueFollower(self.s)  # upserted titles: what "liked" names and the guard knows
        self._following: asyncio.Task | None = None

    def follow_catalogue(self) -> None:
        """One poll (blocking): upserted items join the facts the copy may name, and the guard's list of other
        titles (a copy naming a new item for another one is caught as for any title)."""
        if not self.follower.poll():
            return
        for i, op in self.follower.state.items.items():
            it = op.item
            if it is not None:
                self.catalogue[i] = ItemFacts.from_row(i, it.title, -1 if it.year is None else it.year, it.genres)
        facts = list(self.catalogue.values())
        self.guard = guard_from_catalogue([f.title for f in facts], [list(f.genres) for f in facts])
        self.writer.guard = self.guard

    async def _follow(self) -> None:
        while True:
            await asyncio.to_thread(self.follow_catalogue)
            await asyncio.sleep(self.s.catalogue_poll_s * 5)

    async def reconfigure(self, config: dict) -> None:
        wanted = str((config or {}).get("copy") or "")
        have = self.writer.model.version if self.writer.model else ""
        if self.s.copy_lm and wanted and wanted != have:
            if self.loading is not None:
                self.loading.cancel()
            self.loading = asyncio.create_task(self._load(wanted))

    async def _load(self, version: str) -> None:
        folder = self.s.model_repo / "copy" / version
        loading = asyncio.get_running_loop().run_in_executor(
            None, CopyModel, folder, self.s.model_cache, self.s.copy_dtype, self.s.copy_use_gpu, self.s.copy_threads)
        try:
            model = await asyncio.shield(loading)
        except asyncio.CancelledError:  # a newer version was asked for: this one's thread ends once it loaded
            loading.add_done_callback(_close_loaded)
            raise
        except Exception as e:  # the stage keeps answering (template, flagged) rather than failing requests
            log.error("copy model v%s did not load: %s", version, e)
            return
        old, self.writer = self.writer.model, CopyWriter(model, self.guard, self.s.copy_cache_size, self._generate,
                                                         self.s.copy_max_pending)
        if old is not None:
            old.close()  # generations already queued on it finish; new ones go to the new model
        warm = [CopyFacts(self.catalogue[i]) for i in self.popular[: self.s.copy_warm_items] if i in self.catalogue]
        self.warmed = await self.writer.warm(warm)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.005)
    async def _generate(self, groups: list[list[CopyFacts]]) -> list[list[str]]:
        """Misses of concurrent requests joined into one batched `generate`, then split back per request."""
        model = self.writer.model
        assert model is not None
        texts = await model.agenerate([f for g in groups for f in g])
        out, start = [], 0
        for g in groups:
            out.append(texts[start : start + len(g)])
            start += len(g)
        return out

    def facts(self, user: UserContext, ranked: RankedItems) -> list[CopyFacts]:
        liked = tuple(self.catalogue[i].title for i in user.recent_items[-2:] if i in self.catalogue)
        taste = Taste(tuple(user.favourite_genres[:2]), liked)
        return [CopyFacts(item_facts(it), taste) for it in ranked.items]

    async def write(self, user: UserContext, ranked: RankedItems) -> CopyResult:
        if self._following is None or self._following.done():
            self._following = asyncio.create_task(self._follow())
        return await self.writer.write(self.facts(user, ranked), self.s.copy_budget_ms / 1e3)

    async def stats(self) -> dict:
        """Cache counters and the loaded version (benchmarks and tests read them)."""
        c = self.writer.cache
        return {"version": self.writer.model.version if self.writer.model else "template", "hits": c.hits,
                "misses": c.misses, "size": len(c.rows), "warmed": self.warmed,
                "loading": bool(self.loading and not self.loading.done())}
