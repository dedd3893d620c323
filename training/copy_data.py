"""Copy-LM training pairs: facts taken from real interactions, targets written from exactly those facts.

Each pair is one (user, item) interaction of the training split: the item's title, year and genres, and the
user's taste as the feature store holds it at that moment (top genres, last watched titles). The target is
one of several phrasings that use only those facts, so the model learns the phrasing, not the movies; items
are held out by id for evaluation, so the held-out metrics measure writing about movies it never saw.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from dataclasses import dataclass

import pandas as pd

from serving.copy_guard import CopyFacts, ItemFacts, Taste

_VOWEL = "aeiou"


def genre_phrase(genres: tuple[str, ...]) -> str:
    """('Crime', 'Drama') → 'crime drama'; three or more → 'action, adventure and sci-fi'; none → 'film'."""
    g = [x.lower() for x in genres if x and x.lower() != "unknown"][:3]
    if not g:
        return "film"
    if len(g) <= 2:
        return " ".join(g) if len(g) == 1 else f"{g[0]} {g[1]}"
    return f"{g[0]}, {g[1]} and {g[2]}"


def _a(word: str) -> str:
    return "an" if word[:1].lower() in _VOWEL else "a"


def _taste_phrase(genres: tuple[str, ...]) -> str:
    g = [x.lower() for x in genres]
    return " and ".join(g[:2])


def write_target(facts: CopyFacts, choice: int) -> str:
    """One grounded phrasing (choice picks among those the facts allow)."""
    forms = _phrasings(facts)
    return forms[choice % len(forms)]


def _phrasings(facts: CopyFacts) -> list[str]:
    it, taste = facts.item, facts.taste
    t, g = it.title, genre_phrase(it.genres)
    yp = f" ({it.year})" if it.year > 0 else ""
    fy = f" from {it.year}" if it.year > 0 else ""
    forms = [
        f"{t}{yp} is {_a(g)} {g} worth your evening.",
        f"Next up for you: {t}{yp}, {_a(g)} {g}.",
    ]
    if taste.liked:
        last = taste.liked[-1]
        # No colon right after a watched title: "Because you watched Terminator 2: Judgment Day: …" reads as
        # if "Judgment Day" were the movie (every such copy failed the guard at 120 steps; 11 of 1,000).
        forms += [f"Because you watched {last}, try {t}{yp}, {_a(g)} {g}.",
                  f"If {last} was your kind of film, {t}{yp} should be too: {_a(g)} {g}."]
    if len(taste.liked) >= 2:
        forms.append(f"Liked {taste.liked[-2]} and {taste.liked[-1]}? Try {t}, {_a(g)} {g}{fy}.")
    if taste.genres:
        tg = _taste_phrase(taste.genres)
        forms += [f"For fans of {tg}: {t}, {_a(g)} {g}{fy}.",
                  f"{t}{yp} is {_a(g)} {g} for a viewer who enjoys {tg}."]
    return forms


def target_forms(facts: CopyFacts) -> list[str]:
    """Every phrasing `write_target` has for these facts: the fine-tuned model's copy mostly follows one, so
    generation uses them as drafts to verify (`training.copy_text.generate`), which changes speed, not text."""
    return list(dict.fromkeys(_phrasings(facts)))


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


def build_pairs(interactions: pd.DataFrame, items: pd.DataFrame, n_train: int, n_held_out: int,
                held_out_fraction: float = 0.1, seed: int = 0) -> CopyPairs:
    """Sample (user, position) from the interactions; taste = the history before that position."""
    facts_of = item_facts(items)
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
        pair = (facts, write_target(facts, rng.randrange(1000)))
        target = held if held_out_item(item.item_id, held_out_fraction) else train
        if len(target) < (n_held_out if target is held else n_train):
            target.append(pair)
    return CopyPairs(train, held)
