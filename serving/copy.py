"""Copy stage: one short blurb per recommended item, from the fine-tuned copy LM, guarded, within a budget.

Input: `UserContext`, `RankedItems`. Output: `CopyResult` (copies in the items' order, the model version,
how many were late or rejected). Without an exported copy model (or with `copy_lm: false`) every blurb is
the grounded template and says so (`source: "template"`). The model half (cache, batching, guard, budget)
is `serving.copy_lm`; the Ingress falls back to `template_copy` itself when this whole stage is late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ray import serve

from core.artifacts import COPY_DIR, load_item_ids
from core.copy_guard import CopyFacts, ItemFacts, Taste, template_text
from core.settings import load_settings
from serving.catalogue import CatalogueFollower
from serving.contracts import Copy, CopyResult, RankedItem, RankedItems, UserContext
from serving.copy_ahead import AHEAD_FILE, read_ahead
from serving.copy_facts import CopyCatalogue, guard_from_catalogue, item_facts
from serving.copy_lm import CopyModel, CopyWriter
from serving.features import FeatureReader
from serving.heap import trim_heap
from serving.loopback import bind_loopback

log = logging.getLogger("ray.serve")


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
    template meanwhile), replaces the old one with a cache holding the copies written ahead for that version
    (`serving.copy_ahead`), then warms the cache for popular items."""

    def __init__(self) -> None:
        bind_loopback()
        self.s = load_settings()
        self.catalogue = CopyCatalogue.read(FeatureReader(self.s), [int(i) for i in load_item_ids(self.s)[1:]])
        self.writer = CopyWriter(None, self.catalogue.guard, self.s.copy_cache_size, self._generate,
                                 self.s.copy_max_pending)
        self.loading: asyncio.Task | None = None
        self.warmed = self.ahead = 0  # copies warmed; copies written ahead in the cache
        self._ahead_read: tuple[str, int] = ("", 0)  # (version, file mtime) of the copy written ahead last read
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
                self.catalogue.facts[i] = ItemFacts.from_row(i, it.title, -1 if it.year is None else it.year,
                                                             it.genres)
        facts = list(self.catalogue.facts.values())
        self.catalogue.guard = guard_from_catalogue([f.title for f in facts], [list(f.genres) for f in facts])
        self.writer.guard = self.catalogue.guard

    async def _follow(self) -> None:
        """The catalogue's changes, the copy written ahead, and the model's freed buffers once misses pause."""
        while True:
            await asyncio.to_thread(self.follow_catalogue)
            if self.writer.model is not None:
                await self._take_ahead(self.writer)
                with contextlib.suppress(RuntimeError):  # a model replaced (and closed) meanwhile takes no work
                    await asyncio.wrap_future(self.writer.model.trim_if_paused())
            await asyncio.sleep(self.s.catalogue_poll_s * 5)

    def _read_ahead(self, version: str) -> tuple[int, list[tuple[CopyFacts, str]]] | None:
        """This version's copy written ahead, if its file changed since it was last read (blocking)."""
        path = self.s.model_repo / COPY_DIR / version / AHEAD_FILE
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return None
        return None if self._ahead_read == (version, stamp) else (stamp, read_ahead(path))

    async def _take_ahead(self, writer: CopyWriter) -> None:
        """Seed the writer's cache with its version's copy written ahead: at load, and whenever the file changes
        (in a cluster the job writes it after the export, often after the replica loaded the version)."""
        assert writer.model is not None
        version = writer.model.version
        got = await asyncio.to_thread(self._read_ahead, version)
        if got is not None:
            self._ahead_read = (version, got[0])
            self.ahead = writer.seed(got[1])

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
        writer = CopyWriter(model, self.catalogue.guard, self.s.copy_cache_size, self._generate,
                            self.s.copy_max_pending)
        self.ahead, self._ahead_read = 0, (version, 0)
        await self._take_ahead(writer)
        old, self.writer = self.writer.model, writer
        if old is not None:
            old.close()  # generations already queued on it finish; new ones go to the new model
        facts = self.catalogue.facts
        warm = [CopyFacts(facts[i]) for i in self.catalogue.popular[: self.s.copy_warm_items] if i in facts]
        self.warmed = await self.writer.warm(warm)
        await asyncio.to_thread(trim_heap)

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

    async def write(self, user: UserContext, ranked: RankedItems) -> CopyResult:
        if self._following is None or self._following.done():
            self._following = asyncio.create_task(self._follow())
        # The Ingress waits `copy_budget_ms` for this answer, the hops included: it leaves here `copy_hop_ms` before.
        budget_ms = max(0.0, self.s.copy_budget_ms - self.s.copy_hop_ms)
        return await self.writer.write(self.catalogue.request_facts(user, ranked), budget_ms / 1e3)

    async def stats(self) -> dict:
        """Cache counters and the loaded version (benchmarks and tests read them)."""
        c = self.writer.cache
        return {"version": self.writer.model.version if self.writer.model else "template", "hits": c.hits,
                "misses": c.misses, "size": len(c.rows), "warmed": self.warmed, "ahead": self.ahead,
                "ahead_mtime_ns": self._ahead_read[1],
                "loading": bool(self.loading and not self.loading.done())}
