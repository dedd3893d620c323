"""The copy writer's contract: guard before serving, cache by (item, taste), one generation per key in flight,
a budget after which the template is served (flagged) while the model copy still lands in the cache.

The texts come from a planted writer (true copy for some items, a false year for others) so each rule is
checked on known input; the real fine-tuned model goes through the same writer in tests/integration.
"""

from __future__ import annotations

import asyncio

from core.copy_guard import CopyFacts, Guard, ItemFacts, Taste, template_text
from serving.copy_lm import CopyWriter

GUARD = Guard(["Fargo (1996)", "Heat (1995)", "Star Wars (1977)"], ["Crime", "Drama", "Action", "Sci-Fi"])
TASTE = Taste(("Drama",), ("Heat",))
ITEMS = [CopyFacts(ItemFacts.from_row(i, f"Movie {i} (1990)", 1990, ["Drama"]), TASTE) for i in range(1, 5)]


class Planted:
    """Writes true copy, except a false year for even item ids; counts how often it was asked."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.delay_s, self.fail = delay_s, fail
        self.model = type("M", (), {"version": "7"})()

    async def __call__(self, facts: list[CopyFacts]) -> list[str]:
        self.calls.append([f.item.item_id for f in facts])
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("out of memory")
        year = {True: 1990, False: 2011}
        return [f"{f.item.title} ({year[f.item.item_id % 2 == 1]}) is a drama worth your evening." for f in facts]


def writer(p: Planted) -> CopyWriter:
    return CopyWriter(p.model, GUARD, cache_size=100, generate=p)


def test_false_copy_is_replaced_and_true_copy_cached() -> None:
    p = Planted()

    async def run():
        w = writer(p)
        return await w.write(ITEMS, budget_s=5), await w.write(ITEMS, budget_s=5), w

    first, second, w = asyncio.run(run())
    assert [c.source for c in first.copies] == ["model", "template_guard", "model", "template_guard"]
    assert first.copies[1].text == template_text(ITEMS[1]) and first.rejected == 2 and first.version == "7"
    assert "(1990)" in first.copies[0].text
    # The guard's verdict is cached too: decoding is greedy, a second generation would write the same false
    # year, so the second request generates nothing and serves the same four answers, rejections included.
    assert p.calls == [[1, 2, 3, 4]] and w.cache.hits == 4
    assert second.copies == first.copies and second.rejected == 2


def test_concurrent_requests_share_one_generation_per_item_and_taste() -> None:
    p = Planted(delay_s=0.05)

    async def run():
        w = writer(p)
        return await asyncio.gather(w.write(ITEMS[:3], 5), w.write(ITEMS[1:], 5))

    a, b = asyncio.run(run())
    assert sorted(i for call in p.calls for i in call) == [1, 2, 3, 4]  # items 2 and 3 generated once
    assert a.copies[1].text == b.copies[0].text and a.copies[2].text == b.copies[1].text


def test_late_copy_is_a_flagged_template_and_fills_the_cache_for_next_time() -> None:
    p = Planted(delay_s=0.3)

    async def run():
        w = writer(p)
        late = await w.write(ITEMS[:1], budget_s=0.02)
        while w.pending:
            await asyncio.sleep(0.01)
        return late, await w.write(ITEMS[:1], budget_s=0.02)

    late, next_time = asyncio.run(run())
    assert late.late == 1 and late.copies[0].source == "template" and not late.error
    assert next_time.late == 0 and next_time.copies[0].source == "model" and len(p.calls) == 1


def test_misses_past_the_pending_bound_get_the_template_and_queue_nothing() -> None:
    """At most `max_pending` copies in generation: a request whose misses would go past it is answered with the
    template for the rest at once, said as "busy" (not late: no model copy follows), and only what fits is queued;
    once the generations finish there is room again. A miss already in generation is shared, not counted twice."""
    p = Planted(delay_s=0.2)
    other = [CopyFacts(ItemFacts.from_row(i, f"Movie {i} (1990)", 1990, ["Drama"]), TASTE) for i in range(11, 14)]

    async def run():
        w = CopyWriter(p.model, GUARD, cache_size=100, generate=p, max_pending=3)
        first = asyncio.ensure_future(w.write(ITEMS[:3], budget_s=5))  # 3 misses: exactly the bound
        await asyncio.sleep(0.01)
        shared = asyncio.ensure_future(w.write(ITEMS[:1], budget_s=5))  # waits on item 1's generation
        full = await w.write(other + ITEMS[1:2], budget_s=5)  # no room: templates now (item 2 is shared)
        first_done, shared_done = await first, await shared
        return first_done, shared_done, full, await w.write(other[:2], budget_s=5), w

    first, shared, full, later, w = asyncio.run(run())
    assert [c.source for c in first.copies] == ["model", "template_guard", "model"] and first.busy == 0
    assert shared.copies[0].source == "model" and shared.busy == 0
    assert full.busy == 3 and [c.source for c in full.copies] == ["template"] * 3 + ["template_guard"]
    assert full.late == 0 and full.copies[0].text == template_text(other[0])
    assert later.busy == 0 and [c.source for c in later.copies] == ["model", "template_guard"]  # 12: false year
    assert p.calls == [[1, 2, 3], [11, 12]] and not w.pending


def test_failed_generation_is_reported_as_failed_not_late() -> None:
    ans = asyncio.run(writer(Planted(fail=True)).write(ITEMS[:2], budget_s=5))
    assert ans.error == "copy generation failed: RuntimeError" and ans.late == 0
    assert [c.source for c in ans.copies] == ["template", "template"]


def test_no_model_means_template_copy_said_as_such() -> None:
    ans = asyncio.run(CopyWriter(None, GUARD, 10).write(ITEMS[:2], budget_s=5))
    assert ans.version == "template" and [c.source for c in ans.copies] == ["template", "template"]


def test_warm_up_goes_on_past_a_failed_batch() -> None:
    """Warming is best effort: one failing batch is logged and skipped, the later ones still fill the cache."""
    p = Planted()
    calls = 0

    async def flaky(facts: list[CopyFacts]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("out of memory")
        return await p(facts)

    async def run():
        w = CopyWriter(p.model, GUARD, cache_size=100, generate=flaky)
        return await w.warm(ITEMS, chunk=2), w

    warmed, w = asyncio.run(run())
    assert warmed == 2 and calls == 2
    assert w.cache.get(ITEMS[2]).source == "model" and w.cache.get(ITEMS[3]).source == "template_guard"
    assert w.cache.get(ITEMS[0]) is None  # its batch failed: nothing was decided for it


def test_copy_written_ahead_is_served_from_the_cache_through_the_guard(tmp_path) -> None:
    """A file of copies written ahead round-trips its facts (so its cache keys are the request's), a line that
    does not parse is left out, and seeding puts each copy in the cache through the writer's guard: the false
    year becomes its template, the true copy is served as model copy, and neither is generated again."""
    from serving.copy_ahead import read_ahead, write_ahead

    p = Planted()
    texts = asyncio.run(p(ITEMS[:2]))  # item 1 true, item 2 a false year
    path = tmp_path / "ahead.jsonl"
    write_ahead(path, list(zip(ITEMS[:2], texts, strict=True)))
    with path.open("a", encoding="utf-8") as f:
        f.write('{"item_id": 9, "title": "x"}\nnot json\n')
    back = read_ahead(path)
    assert [f for f, _ in back] == ITEMS[:2] and [t for _, t in back] == texts
    assert [f.taste.bucket() for f, _ in back] == [TASTE.bucket()] * 2
    assert read_ahead(tmp_path / "missing.jsonl") == []

    async def run():
        w = writer(p)
        p.calls.clear()
        assert w.seed(back) == 2
        return await w.write(ITEMS[:2], budget_s=5), w

    res, w = asyncio.run(run())
    assert [c.source for c in res.copies] == ["model", "template_guard"] and res.copies[0].text == texts[0]
    assert p.calls == [] and w.cache.hits == 2 and res.late == 0
    assert CopyWriter(None, GUARD, 10).seed(back) == 0  # no model: template copy, nothing to seed
