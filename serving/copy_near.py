"""The Copy stage's final copies, kept in the Ingress replica that asked for them (a near cache).

A copy is final once the Copy stage has answered it from its model: the same (item facts, taste) under the
same copy version decodes to the same text (greedy), and a copy the guard refused stays refused. Serving such
a copy again needs no Serve hop, and at c=8 that hop (a pickled `RankedItems` out, a `CopyResult` back, two
event loops) was what a warm copy request cost over a request without copy. Generation, the guard, the budget
and the cache that counts stay in the Copy deployment: this only remembers its answers.

Kept true: a request is answered here only when every one of its items is held and the Copy stage answered
within the last `revalidate_s` (then the request goes to the stage, which says its current version: a new one
empties this cache; an answer to a request sent before the one that brought the current version cannot bring
an older one back), and an entry lives `ttl_s` at most: a watched item renamed, or copies written ahead again
for the same version, reach answers within that, as the Ingress's item rows do. Templates (late, busy, no
model) are never kept: the model copy follows them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from serving.contracts import Copy, CopyResult, RankedItem, UserContext

Key = tuple[int, str, int, tuple[str, ...], tuple[str, ...], tuple[int, ...]]
FINAL = ("model", "template_guard")  # sources that a second call to the stage would answer the same


def copy_key(user: UserContext, item: RankedItem) -> Key:
    """What the copy is written from (`serving.copy_facts.CopyCatalogue.request_facts`): the item's facts and
    the viewer's two favourite genres and last two items (by id: the stage names them by title)."""
    return (item.item_id, item.title, item.year, tuple(item.genres), tuple(user.favourite_genres[:2]),
            tuple(user.recent_items[-2:]))


class NearCopies:
    def __init__(self, size: int, ttl_s: float, revalidate_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size, self.ttl_s, self.revalidate_s, self.clock = size, ttl_s, revalidate_s, clock
        self.rows: OrderedDict[Key, tuple[float, Copy]] = OrderedDict()
        self.version = ""  # the copy version the rows were written by ("": none held)
        self.version_asked = float("-inf")  # when the request that brought `version` was sent
        self.answered = float("-inf")  # when the Copy stage last answered this replica
        self.hits = self.misses = 0  # requests answered here / sent on to the stage

    def get(self, user: UserContext, items: Sequence[RankedItem]) -> tuple[list[Copy], str] | None:
        """(copies, version) when every item's copy is held, fresh and no revalidation is due; else None."""
        now = self.clock()
        if self.size <= 0 or not self.version or now - self.answered > self.revalidate_s:
            self.misses += 1
            return None
        keys = [copy_key(user, it) for it in items]
        rows = [self.rows.get(k) for k in keys]
        if any(r is None or now - r[0] > self.ttl_s for r in rows):
            self.misses += 1
            return None
        for k in keys:
            self.rows.move_to_end(k)
        self.hits += 1
        return [r[1] for r in rows if r is not None], self.version

    def put(self, user: UserContext, items: Sequence[RankedItem], result: CopyResult, asked: float) -> None:
        """Keep the final copies of one answer of the Copy stage to a request sent at `asked` (this cache's clock);
        a new version drops the rows of the old, unless the answer is older news than the current version's."""
        now = self.clock()
        version = "" if result.version == "template" else result.version
        if version != self.version:
            if asked < self.version_asked:  # the old model's late answer, after the swap was seen
                return
            self.rows.clear()
            self.version, self.version_asked = version, asked
        self.answered = max(self.answered, asked)
        if not version or self.size <= 0:
            return
        for it, copy in zip(items, result.copies, strict=True):
            if copy.source in FINAL:
                k = copy_key(user, it)
                self.rows[k] = (now, copy)
                self.rows.move_to_end(k)
        while len(self.rows) > self.size:
            self.rows.popitem(last=False)
