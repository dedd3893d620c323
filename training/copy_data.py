"""Copy-LM training pairs: facts taken from real interactions, targets written from exactly those facts.

Each pair is one (user, item) interaction of the training split: the item's title, year and genres, and the
user's taste as the feature store holds it at that moment (top genres, last watched titles). The target is
the composition its style names (`core.copy_phrasings`), using only those facts, so the model learns to write
pieces and put them together, not the movies; items
are held out by id for evaluation, so the held-out metrics measure writing about movies it never saw.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from dataclasses import dataclass

import pandas as pd

from core.copy_guard import CopyFacts, Guard, ItemFacts, Taste
from core.copy_phrasings import write_target


@dataclass
class CopyPairs:
    train: list[tuple[CopyFacts, str]]
    held_out: list[tuple[CopyFacts, str]]  # items never seen in training


def held_out_item(item_id: int, fraction: float) -> bool:
    """Stable by id (not by draw), so every run and every worker holds out the same items."""
    return zlib.crc32(str(int(item_id)).encode()) % 1000 < fraction * 1000


def item_facts(items: pd.DataFrame) -> dict[int, ItemFacts]:
    return {int(r.item_id): ItemFacts.from_row(int(r.item_id), str(r.title), -1 if pd.isna(r.year) else int(r.year),
                                               list(r.genres))
            for r in items.itertuples(index=False)}


def catalogue_guard(items: pd.DataFrame) -> Guard:
    """The guard over this catalogue's titles and genres (training targets and evaluation use the same one)."""
    return Guard(items["title"].astype(str).tolist(), sorted({g for gs in items["genres"] for g in gs}))


def build_pairs(interactions: pd.DataFrame, items: pd.DataFrame, n_train: int, n_held_out: int,
                held_out_fraction: float = 0.1, seed: int = 0) -> CopyPairs:
    """Sample (user, position) from the interactions; taste = the history before that position. A target is
    held to the guard the model's copy is held to, with this catalogue's titles (a sign-off tried in session 31,
    "Enjoy the show.", named ML-100K's *The Show*); a pair whose target fails it is left out."""
    facts_of = item_facts(items)
    guard = catalogue_guard(items)
    rng = random.Random(seed)
    df = interactions.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    histories = [g["item_id"].to_numpy() for _, g in df.groupby("user_id", sort=False)]
    train: list[tuple[CopyFacts, str]] = []
    held: list[tuple[CopyFacts, str]] = []
    tries = 0
    while (len(train) < n_train or len(held) < n_held_out) and tries < 50 * (n_train + n_held_out):
        tries += 1
        hist = histories[rng.randrange(len(histories))]
        pos = rng.randrange(len(hist))
        item = facts_of.get(int(hist[pos]))
        if item is None or not item.title:
            continue
        before = [facts_of[int(i)] for i in hist[max(0, pos - 50) : pos] if int(i) in facts_of]
        counts: Counter[str] = Counter(g for f in before for g in f.genres if g.lower() != "unknown")
        top = tuple(name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:2])
        liked = tuple(f.title for f in before[-2:] if f.title and f.item_id != item.item_id)
        facts = CopyFacts(item, Taste(top, liked))
        text = write_target(facts)
        if not guard.factual(text, facts):
            continue
        pair = (facts, text)
        target = held if held_out_item(item.item_id, held_out_fraction) else train
        if len(target) < (n_held_out if target is held else n_train):
            target.append(pair)
    return CopyPairs(train, held)
