"""The Ingress's near cache of copies answers a request only with what the Copy stage itself would answer:
every item's final copy of the current version, fresh, while the stage keeps being asked. Each rule is checked
by the request it must send on to the stage (a clock the test moves)."""

from __future__ import annotations

from serving.contracts import Copy, CopyResult, RankedItem, UserContext
from serving.copy_near import NearCopies

USER = UserContext(user_id=1, known=True, recent_items=[5, 6, 7], favourite_genres=["Drama", "Crime", "War"])
ITEMS = [RankedItem(item_id=i, score=1.0 / i, title=f"Movie {i}", year=1990, genres=["Drama"]) for i in (1, 2, 3)]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def result(version: str = "3", sources: tuple[str, ...] = ("model", "model", "template_guard")) -> CopyResult:
    copies = [Copy(text=f"copy {i} v{version}", source=s) for i, s in zip((1, 2, 3), sources, strict=True)]
    return CopyResult(copies=copies, version=version)


def near(clock: Clock, size: int = 100) -> NearCopies:
    return NearCopies(size, ttl_s=300.0, revalidate_s=1.0, clock=clock)


def test_a_stage_answer_is_served_again_from_the_near_cache_as_the_stage_gave_it():
    clock = Clock()
    cache = near(clock)
    assert cache.get(USER, ITEMS) is None  # nothing held: to the stage
    cache.put(USER, ITEMS, result(), clock.t)
    clock.t += 0.5
    copies, version = cache.get(USER, ITEMS)
    assert version == "3" and copies == result().copies
    assert (cache.hits, cache.misses) == (1, 1)


def test_one_item_not_held_sends_the_whole_request_to_the_stage():
    clock = Clock()
    cache = near(clock)
    cache.put(USER, ITEMS[:2], CopyResult(copies=result().copies[:2], version="3"), clock.t)
    assert cache.get(USER, ITEMS) is None
    assert cache.get(USER, ITEMS[:2]) is not None


def test_templates_are_not_kept_their_model_copy_follows():
    clock = Clock()
    cache = near(clock)
    cache.put(USER, ITEMS, result(sources=("model", "template", "model")), clock.t)  # item 2 late: template now
    assert cache.get(USER, ITEMS) is None
    assert cache.get(USER, [ITEMS[0], ITEMS[2]]) is not None


def test_no_model_loaded_any_more_empties_the_cache():
    clock = Clock()
    cache = near(clock)
    cache.put(USER, ITEMS, result(version="3"), clock.t)
    clock.t += 1.5
    # the model unloaded (or copy_lm turned off): the stage answers templates under "template"
    cache.put(USER, ITEMS[:1], result(version="template", sources=("template",) * 3).model_copy(
        update={"copies": [Copy(text="t", source="template")]}), clock.t)
    assert cache.get(USER, ITEMS) is None and not cache.rows and cache.version == ""


def test_another_viewer_taste_or_changed_item_facts_is_another_copy():
    clock = Clock()
    cache = near(clock)
    cache.put(USER, ITEMS, result(), clock.t)
    other_taste = USER.model_copy(update={"favourite_genres": ["Comedy"]})
    watched_since = USER.model_copy(update={"recent_items": [5, 6, 7, 8]})
    same_taste = USER.model_copy(update={"user_id": 2, "recent_items": [9, 6, 7]})  # the last two count
    assert cache.get(other_taste, ITEMS) is None
    assert cache.get(watched_since, ITEMS) is None
    for change in ({"title": "Movie 1 (Director's Cut)"}, {"year": 1991}, {"genres": ["Drama", "War"]}):
        assert cache.get(USER, [ITEMS[0].model_copy(update=change), *ITEMS[1:]]) is None, change
    assert cache.get(same_taste, ITEMS) is not None


def test_revalidation_due_sends_the_request_on_and_a_new_version_empties_the_cache():
    clock = Clock()
    cache = near(clock)
    cache.put(USER, ITEMS, result(version="3"), clock.t)
    clock.t += 1.5  # the stage not asked for longer than revalidate_s: it may hold another version now
    assert cache.get(USER, ITEMS) is None
    cache.put(USER, ITEMS[:1], CopyResult(copies=[Copy(text="new", source="model")], version="4"), clock.t)
    assert cache.version == "4" and len(cache.rows) == 1  # version 3's copies are gone
    assert cache.get(USER, ITEMS) is None
    assert cache.get(USER, ITEMS[:1]) == ([Copy(text="new", source="model")], "4")


def test_a_late_answer_of_the_old_version_does_not_bring_it_back():
    clock = Clock()
    cache = near(clock)
    old_asked = clock.t  # a miss under the old model, still generating
    clock.t += 0.2
    cache.put(USER, ITEMS, result(version="4"), clock.t)  # a later request: the new model answered it
    clock.t += 0.4
    cache.put(USER, ITEMS, result(version="3"), old_asked)  # the old model's answer, late
    assert cache.version == "4"
    assert cache.get(USER, ITEMS) == (result(version="4").copies, "4")


def test_entries_expire_after_ttl_even_under_load():
    clock = Clock()
    cache = NearCopies(100, ttl_s=10.0, revalidate_s=1.0, clock=clock)
    cache.put(USER, ITEMS, result(), clock.t)
    for _ in range(12):  # the stage asked every second (other requests), never for these items
        clock.t += 0.9
        cache.put(USER, [], CopyResult(copies=[], version="3"), clock.t)
    assert cache.get(USER, ITEMS) is None


def test_least_recently_used_rows_leave_first_and_size_zero_is_off():
    clock = Clock()
    cache = near(clock, size=3)
    cache.put(USER, ITEMS, result(sources=("model",) * 3), clock.t)
    assert cache.get(USER, ITEMS[:1]) is not None  # item 1 used: item 2 is now the oldest
    extra = RankedItem(item_id=4, score=0.1, title="Movie 4", year=1990, genres=["Drama"])
    cache.put(USER, [extra], CopyResult(copies=[Copy(text="copy 4", source="model")], version="3"), clock.t)
    assert len(cache.rows) == 3 and cache.get(USER, [ITEMS[1]]) is None
    assert cache.get(USER, [ITEMS[0], ITEMS[2], extra]) is not None
    off = near(clock, size=0)
    off.put(USER, ITEMS, result(), clock.t)
    assert off.get(USER, ITEMS) is None and not off.rows
