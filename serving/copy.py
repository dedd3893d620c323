"""Copy stage: one short blurb per recommended item.

Input: `UserContext`, `RankedItems`. Output: list[`Copy`] in the items' order.
Until the fine-tuned copy LM is deployed (its own issue), every blurb is a template built only from true
item attributes (title, year, genres) and the user's own history, and says so (`source: "template"`).
The ingress falls back to `template_copy` itself when this stage is late, so copy never blocks a response.
"""

from __future__ import annotations

import asyncio

from ray import serve

from recsys.settings import load_settings
from serving.contracts import Copy, RankedItem, RankedItems, UserContext
from serving.features import FeatureReader


def template_copy(item: RankedItem, because: str | None = None) -> Copy:
    """Facts only: '<title> (<year>) · Crime, Drama. Because you watched Heat.'"""
    head = item.title or f"Item {item.item_id}"
    if item.year > 0 and f"({item.year})" not in head:
        head = f"{head} ({item.year})"
    parts = [head]
    if item.genres:
        parts.append(", ".join(item.genres[:3]))
    text = " · ".join(parts) + "."
    if because:
        text += f" Because you watched {because}."
    return Copy(text=text, source="template")


class CopyWriter:
    def __init__(self, reader: FeatureReader) -> None:
        self.reader = reader

    def write(self, user: UserContext, ranked: RankedItems) -> list[Copy]:
        because = None
        if user.recent_items:
            rows = self.reader.items([user.recent_items[-1]], fields=("title",))
            because = rows.title[0] if rows.found[0] else None
        return [template_copy(it, because) for it in ranked.items]


@serve.deployment(name="Copy", max_ongoing_requests=16)
class CopyStage:
    def __init__(self) -> None:
        self.writer = CopyWriter(FeatureReader(load_settings()))

    async def write(self, user: UserContext, ranked: RankedItems) -> list[Copy]:
        return await asyncio.to_thread(self.writer.write, user, ranked)
