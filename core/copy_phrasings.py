"""The copy LM's training phrasings, written from the facts alone: training targets, the drafts the decoder
verifies at serving time (the tuned model's copy mostly follows one, so drafting them changes speed, not text),
and the shape of a copy (its facts as slots), by which evaluation tells a copy that repeats a training target
from one the model wrote.
"""

from __future__ import annotations

import re
from itertools import pairwise

from core.copy_guard import CopyFacts

_VOWEL = "aeiou"


# A genre as a modifier ("an animated comedy") and, for the genres that name a kind of film, as its head noun.
_MODIFIER = {"animation": "animated", "romance": "romantic", "comedy": "comic", "musical": "musical",
             "film-noir": "noir", "documentary": "documentary", "drama": "dramatic", "thriller": "thriller",
             "western": "western"}
_HEAD = {"comedy": "comedy", "drama": "drama", "documentary": "documentary", "musical": "musical",
         "thriller": "thriller", "western": "western", "film-noir": "film noir", "romance": "romance"}
_PAIRS = {("comedy", "drama"): "comedy-drama", ("comedy", "romance"): "romantic comedy",
          ("drama", "romance"): "romantic drama", ("comedy", "musical"): "musical comedy"}


def genre_phrase(genres: tuple[str, ...]) -> str:
    """The item's genres as a noun phrase a person would write: modifiers before one head noun, at most three
    genres ('Crime', 'Drama') → 'crime drama'; ('Animation', "Children's") → "animated children's film";
    ('Comedy', 'Romance') → 'romantic comedy'; ('Action', 'Adventure', 'Sci-Fi') → 'action adventure sci-fi
    film'; none → 'film'. Each word stays one of the facts' genres (or its adjective), so the guard reads it."""
    g = [x.lower() for x in genres if x and x.lower() != "unknown"][:3]
    heads = [x for x in g if x in _HEAD]
    pair = next((p for p in pairwise(heads) if p in _PAIRS), None)
    if pair:
        used, head = set(pair), _PAIRS[pair]
    elif heads:
        used, head = {heads[-1]}, _HEAD[heads[-1]]
    else:
        used, head = set(), "film"
    mods = [_MODIFIER.get(x, x) for x in g if x not in used]
    return " ".join([*mods, head])


def _a(word: str) -> str:
    """The article of a noun phrase (by its first letter: enough for the genre words here)."""
    return "an" if word[:1].lower() in _VOWEL else "a"


def taste_phrase(genres: tuple[str, ...]) -> str:
    """The viewer's genres as words ('thriller and sci-fi'); a genre that is no genre ('unknown') is left out."""
    g = [x.lower() for x in genres if x and x.lower() != "unknown"]
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
    # No "Liked {two watched titles}? Try …": the longest copies, and 14 of the 18 that failed the guard at 120
    # steps (genres written for the titles, a copy cut at the token limit), session 32.
    tg = taste_phrase(taste.genres)
    if tg:
        forms += [f"For fans of {tg}: {t}, {_a(g)} {g}{fy}.",
                  f"{t}{yp} is {_a(g)} {g} for a viewer who enjoys {tg}."]
    return forms


def target_forms(facts: CopyFacts) -> list[str]:
    """Every phrasing `write_target` has for these facts: the fine-tuned model's copy mostly follows one, so
    generation uses them as drafts to verify (`core.copy_decoding.generate`), which changes speed, not text."""
    return list(dict.fromkeys(_phrasings(facts)))


def shape(text: str, facts: CopyFacts) -> str:
    """The text with its facts replaced by slots ({T} title, {Y} year, {L} a watched title, {G} genre phrase,
    {V} the viewer's genres): two copies of one phrasing about different movies have the same shape."""
    it, taste = facts.item, facts.taste
    slots = [(x, "{L}") for x in taste.liked if x] + [(it.title, "{T}")]
    slots += [(genre_phrase(it.genres), "{G}"), (taste_phrase(taste.genres), "{V}")]
    if it.year > 0:
        slots.append((str(it.year), "{Y}"))
    for value, slot in sorted((s for s in slots if s[0]), key=lambda s: len(s[0]), reverse=True):
        text = text.replace(value, slot)
    words = {x.lower() for x in (*it.genres, *taste.genres)}
    words |= {_MODIFIER.get(x, x) for x in words} | {_HEAD.get(x, x) for x in words}
    for w in sorted(words, key=len, reverse=True):  # any other genre word: "fans of drama" when {V} is two
        text = re.sub(rf"(?<![\w{{-]){re.escape(w)}(?![\w}}-])", "{g}", text)
    return re.sub(r"\ban? (\{[GYg]\})", r"a \1", text)
