"""What the copy LM is told for one request: each recommended item's facts and the viewer's taste.

The Copy stage and the copy-ahead job (`serving.copy_ahead`) build them here, the same way: the same facts are
the same cache key (item, taste bucket), so a copy written ahead is the one a request finds.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.copy_guard import CopyFacts, Guard, ItemFacts, Taste
from serving.contracts import RankedItem, RankedItems, UserContext
from serving.features import FeatureReader


def item_facts(item: RankedItem) -> ItemFacts:
    return ItemFacts.from_row(item.item_id, item.title, item.year, item.genres)


def guard_from_catalogue(titles: list[str], genres: list[list[str]]) -> Guard:
    return Guard(titles, sorted({g for gs in genres for g in gs}))


@dataclass
class CopyCatalogue:
    """The catalogue's item facts (what a viewer's "watched" titles are), its items by popularity, and the guard
    that knows every title."""

    facts: dict[int, ItemFacts]
    popular: list[int]  # raw ids, most popular first
    guard: Guard

    @classmethod
    def read(cls, reader: FeatureReader, ids: list[int]) -> CopyCatalogue:
        rows = reader.items(ids, fields=("title", "genres", "year", "popularity"))
        facts = {i: ItemFacts.from_row(i, t, int(y), g)
                 for i, t, y, g, ok in zip(ids, rows.title, rows.year, rows.genres, rows.found, strict=True) if ok}
        popular = [ids[j] for j in sorted(range(len(ids)), key=lambda j: -int(rows.popularity[j]))]
        return cls(facts, popular, guard_from_catalogue(rows.title, rows.genres))

    def request_facts(self, user: UserContext, ranked: RankedItems) -> list[CopyFacts]:
        """The viewer's two favourite genres and last two titles, with each ranked item's own facts."""
        liked = tuple(self.facts[i].title for i in user.recent_items[-2:] if i in self.facts)
        taste = Taste(tuple(user.favourite_genres[:2]), liked)
        return [CopyFacts(item_facts(it), taste) for it in ranked.items]
