"""The copy LM's training phrasings, written from the facts alone: training targets, and the drafts the decoder
verifies at serving time (the tuned model's copy mostly follows one, so drafting them changes speed, not text).
"""

from __future__ import annotations

from core.copy_guard import CopyFacts

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
    generation uses them as drafts to verify (`core.copy_decoding.generate`), which changes speed, not text."""
    return list(dict.fromkeys(_phrasings(facts)))
