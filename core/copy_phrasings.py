"""The copy LM's training targets, composed from the facts alone: a style (`style`: opener, how the movie is
named, a reason from the viewer's facts, a sign-off; ~2,500 compositions) is drawn per copy and given in the
prompt, and the target is what that style writes (`compose`). The same composition is the draft the decoder
verifies at serving time (drafting changes speed, not text), and `shape` (a copy's facts as slots) tells a copy
that repeats a training target whole from one the model composed.

Why a style in the prompt: with the choice left to the model, greedy decoding writes its likeliest composition
for every movie (session 31: 0.58 of copies a training target whole) and sampling it costs truth (grounded
0.89–0.95); named in the prompt, the composition varies while decoding stays greedy.
"""

from __future__ import annotations

import random
import re
from itertools import pairwise

from core.copy_guard import CopyFacts

_VOWEL = "aeiou"


# A genre as a modifier ("an animated comedy") and, for the genres that name a kind of film, as its head noun.
# Drama has no modifier: "a crime dramatic thriller" reads badly, and the tuned model wrote "thriller thriller"
# for it (session 34); such a drama is named by its other genres ("a crime thriller").
_MODIFIER = {"animation": "animated", "romance": "romantic", "comedy": "comic", "musical": "musical",
             "film-noir": "noir", "documentary": "documentary", "drama": "", "thriller": "thriller",
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
    return " ".join([*(m for m in mods if m), head])


def _a(word: str) -> str:
    """The article of a noun phrase (by its first letter: enough for the genre words here)."""
    return "an" if word[:1].lower() in _VOWEL else "a"


def taste_phrase(genres: tuple[str, ...]) -> str:
    """The viewer's genres as words ('thriller and sci-fi'); a genre that is no genre ('unknown') is left out."""
    g = [x.lower() for x in genres if x and x.lower() != "unknown"]
    return " and ".join(g[:2])


# The copy's composition, one choice per style digit (`style`): an opener around the movie's noun phrase, the
# noun phrase itself, a reason from the viewer's facts, a sign-off. Each piece reads on its own and holds only
# slots, so any combination is grounded and reads as English.
_OPENERS = ("Next up for you: {np}.", "Meet {np}.", "Try {np}.", "Your next watch: {np}.", "Queue up {np}.",
            "Tonight's pick: {np}.", "Here is {np}.", "Make time for {np}.", "Settle in with {np}.", "Coming up: {np}.")
_WATCHED = ("Because you watched {l}.", "You watched {l}, so this is for you.", "Picked because you watched {l}.",
            "If {l} was your kind of film, this should be too.", "A good next step after {l}.")
_TASTE = ("Made for fans of {v}.", "Right for a viewer who enjoys {v}.", "A match for your taste for {v}.",
          "Worth it if you like {v}.")
_CLOSES = ("", "Enjoy.", "Happy watching.", "Press play.", "Worth your evening.")
_NAMINGS = 5  # how the noun phrase gives title, year and genres (`_noun_phrase`)
_REASONS = len(_WATCHED) + len(_TASTE) + 1  # the last: no reason
# The style as the prompt says it: a few words per choice, most of them words of the piece itself, which a small
# model follows far better than digits (session 34: with digits it wrote one favourite opener for 300 of 300).
_WORDS = (("next up", "meet", "try", "next watch", "queue up", "tonight", "here is", "make time", "settle in",
           "coming up"),
          ("year in brackets", "from year", "year before genre", "genre before title", "year before title"),
          ("because", "so", "picked", "kind of film", "next step", "fans", "who enjoys", "taste", "if you like",
           "no reason"),
          ("no sign-off", "enjoy", "happy watching", "press play", "evening"))


def style(facts: CopyFacts) -> str:
    """The copy's composition as four digits (opener, naming, reason, sign-off), drawn from the copy's key (its
    (item, taste bucket): the same facts always get the same copy) among the pieces its facts allow: a watched
    title for the watched reasons, a taste genre the movie shares for the taste reasons. Given in the prompt,
    it makes the composition the model's input: decoding stays greedy (no sampled token can break a fact) and
    yet copy varies over ~2,500 compositions, most never seen whole in training."""
    rng = random.Random(facts.key())
    digits = (rng.randrange(len(_OPENERS)), rng.randrange(_NAMINGS), rng.choice(_reasons(facts)),
              rng.randrange(len(_CLOSES)))
    return "".join(map(str, digits))


def style_words(digits: str) -> str:
    """The style line of the prompt: "queue up; from year; picked; enjoy"."""
    return "; ".join(words[int(d)] for words, d in zip(_WORDS, digits, strict=True))


def styles(facts: CopyFacts) -> list[str]:
    """Every style these facts allow (`style` draws one)."""
    return [f"{o}{n}{r}{c}" for o in range(len(_OPENERS)) for n in range(_NAMINGS) for r in _reasons(facts)
            for c in range(len(_CLOSES))]


def covering_styles(facts: CopyFacts) -> list[str]:
    """Styles whose compositions between them hold each value of these facts at every edge a piece gives it:
    each naming of the movie (first opener, no sign-off) and each reason the facts allow (first naming)."""
    reasons = _reasons(facts)
    return [f"0{n}{reasons[0]}0" for n in range(_NAMINGS)] + [f"00{r}0" for r in reasons[1:]]


def _reasons(facts: CopyFacts) -> list[int]:
    reasons = [_REASONS - 1]
    if facts.taste.liked:
        reasons += range(len(_WATCHED))
    if _shared_taste(facts):
        reasons += range(len(_WATCHED), len(_WATCHED) + len(_TASTE))
    return reasons


def _shared_taste(facts: CopyFacts) -> bool:
    """A taste reason only for a movie of one of the viewer's genres ("made for fans of horror" about a comedy
    is true of the viewer and misleading of the movie)."""
    item = {g.lower() for g in facts.item.genres}
    return bool(taste_phrase(facts.taste.genres)) and any(g.lower() in item for g in facts.taste.genres)


def _noun_phrase(facts: CopyFacts, naming: int) -> str:
    """The movie as a noun phrase: "Fargo (1996), a crime drama", "Fargo, a crime drama from 1996", "Fargo, a
    1996 crime drama", "the crime drama Fargo (1996)", "the 1996 crime drama Fargo"; without a year the first
    three are "Fargo, a crime drama" and the last two "the crime drama Fargo"."""
    it = facts.item
    t, g = it.title, genre_phrase(it.genres)
    if it.year <= 0:
        return f"{t}, {_a(g)} {g}" if naming < 3 else f"the {g} {t}"
    y = it.year
    return (f"{t} ({y}), {_a(g)} {g}", f"{t}, {_a(g)} {g} from {y}", f"{t}, a {y} {g}", f"the {g} {t} ({y})",
            f"the {y} {g} {t}")[naming]


def compose(facts: CopyFacts, digits: str) -> str:
    """The copy a style writes for these facts (`style`)."""
    opener, naming, reason, close = (int(d) for d in digits)
    it = facts.item
    parts = [_OPENERS[opener].format(np=_noun_phrase(facts, naming))]
    if reason < len(_WATCHED) and facts.taste.liked:
        parts.append(_WATCHED[reason].format(l=facts.taste.liked[-1]))
    elif len(_WATCHED) <= reason < _REASONS - 1 and _shared_taste(facts):
        parts.append(_TASTE[reason - len(_WATCHED)].format(v=taste_phrase(facts.taste.genres)))
    parts.append(_CLOSES[close])
    text = " ".join(p for p in parts if p)
    for t in (it.title, *facts.taste.liked):  # "Sunset Blvd.", "Airplane!" end a sentence themselves
        if t and t[-1] in ".!?":
            text = text.replace(t + ".", t)
    return text


def write_target(facts: CopyFacts) -> str:
    """The training target for these facts: the composition their style names."""
    return compose(facts, style(facts))


def target_forms(facts: CopyFacts) -> list[str]:
    """What the fine-tuned model writes for these facts when it follows its style: generation verifies it as a
    draft (`core.copy_decoding.generate`), which changes speed, not text."""
    return [write_target(facts)]


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
    words.discard("")
    for w in sorted(words, key=len, reverse=True):  # any other genre word: "fans of drama" when {V} is two
        text = re.sub(rf"(?<![\w{{-]){re.escape(w)}(?![\w}}-])", "{g}", text)
    return re.sub(r"\ban? (\{[GYg]\})", r"a \1", text)
