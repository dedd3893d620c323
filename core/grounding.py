"""Is every claim in a copy supported by its facts? The claim kinds a movie blurb can invent, each checked.

The facts a copy may use are the item's title, year and genres and the viewer's genres and watched titles
(`core.copy_guard.CopyFacts`); nothing else is known about a movie, so any other proper name, number, award,
rating, superlative, person or role, plot, or release fact is unsupported, whatever it says. `claims` removes the
given facts from the text first (a title may hold a number, a name or a genre word: "Twelve Monkeys", "Terminator
2", "Star Wars"), then reads what is left:
- proper names: a capitalised word that does not start a sentence or clause;
- numbers: digits (the item's year is a fact and is removed first) and number words, ordinals, multipliers;
- vocabulary of claims the facts never hold: awards and ratings, superlatives, people and roles, plot,
  release and production, runtime;
- echoes of the prompt (its field labels, "instructions", "ignore …"): what a prompt injection leaves behind;
- repetition: a word, or the title, said again and again; a word twice in a row; a repeated three-word phrase;
  "a" before a vowel or "an" before a consonant (a sampled token can break the grammar as well as the facts).
The word lists come from reading the base model's copies (it invents plot, praise, studios, "a classic") and
from an adversarial suite written to fool them (tests/core/test_grounding.py); the training phrasings
(`core.copy_phrasings`) and the template pass.
"""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'’-]*")
_DIGITS = re.compile(r"\d+(?:[.,]\d+)*")
_YEAR = re.compile(r"1[89]\d\d|20\d\d")
_NUMBER_WORDS = (
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen",
    "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty", "thirty", "forty", "fifty",
    "sixty", "seventy", "eighty", "ninety", "hundred", "hundreds", "thousand", "thousands", "million", "millions",
    "billion", "billions", "dozen", "dozens", "first", "second", "third", "fourth", "fifth", "sixth", "seventh",
    "eighth", "ninth", "tenth", "twice", "thrice", "double", "triple", "half", "single",
)
# Claims a movie's facts never support. Whole words, case-insensitive; stems end with "*".
_VOCABULARY = {
    "award or rating": "oscar* academy award* award-winning nominat* golden globe* emmy* bafta* cannes palme "
                       "won wins winner* winning prize* rated rating* imdb rotten tomatoes critic* acclaim* "
                       "praise* beloved popular celebrated renowned famous cult "
                       "box office blockbuster* hit smash record-breaking highest-grossing grossing bestsell*",
    "superlative": "best greatest finest top ultimate most all-time masterpiece* legendary iconic "
                   "unforgettable perfect flawless timeless definitive classic*",
    "person or role": "starring stars starred star-studded cast casting actor* actress* director* directed "
                      "directs directing writer* written screenplay screenwriter* produced producer* composer* "
                      "performance* plays played portray* role* voiced cameo* filmmaker* auteur* "
                      "he she his her him hers they them their",
    "plot": "about story stories tells telling follows following plot* journey* quest* hero* heroine* "
            "villain* character* protagonist* set based novel* book* adaptation* adapted sequel* prequel* "
            "remake* trilogy franchise saga true real-life life lives family families friend* "
            "murder* kill* killer* death* dies war-torn world town city parody parodies spoof* satire* "
            "homage tribute twist* relationship*",
    "release or production": "released release premiered premiere debut* studio* budget* filmed "
                              "minutes minute hours hour runtime long-awaited remaster* restored edition "
                             "version ago decade* century centuries era",
}
_VOCAB_RE = {kind: re.compile(r"(?<![\w-])(" + "|".join(
    re.escape(w[:-1]) + r"[\w'-]*" if w.endswith("*") else re.escape(w).replace(r"\ ", r"\s+")
    for w in words.split()) + r")(?![\w-])", re.IGNORECASE) for kind, words in _VOCABULARY.items()}
_NUMBER_RE = re.compile(r"(?<![\w-])(" + "|".join(_NUMBER_WORDS) + r")(?![\w-])", re.IGNORECASE)
_ECHO = re.compile(r"\b(viewer likes|viewer watched|movie:|genres?:|year:|style:|facts?\b|instructions?|ignore\b|"
                   r"system prompt|assistant|as an ai|prompt)", re.IGNORECASE)
SENTENCE_START = re.compile(r"(^|[.!?:;]\s+|\?\s*|\(\s*)$")
STOPWORDS = frozenset((
    "a", "an", "the", "and", "or", "of", "for", "to", "in", "on", "at", "by", "with", "from", "is", "it", "its",
    "be", "this", "that", "your", "you", "who", "if", "was", "were", "too", "should", "try",
))
_DOUBLED = re.compile(r"(?<![\w'-])([A-Za-z]+)\s+\1(?![\w'-])", re.IGNORECASE)  # "an action action comedy"
# "a action thriller", "an comedy": a vowel sound after "a", a consonant after "an" (not h: "an hour"; "a one-",
# "a European", "a unique" sound as consonants).
_ARTICLE = re.compile(r"(?<![\w'-])(?:a\s+(?!one|once|eu|u)[aeiou]|an\s+[b-df-gj-np-tv-z])[a-z]*", re.IGNORECASE)
MAX_WORD_REPEATS = 2  # a content word said more than twice (outside the facts) is degenerate


def _blank(text: str, phrases: list[str]) -> str:
    """`text` with each phrase (longest first, case-insensitive, as a whole) replaced by a neutral marker; a
    phrase's own sentence end stays ("You watched Sunset Blvd. Enjoy.": "Enjoy" starts a sentence)."""
    for p in sorted({p for p in phrases if p}, key=len, reverse=True):
        mark = " · " + (p[-1] + " " if p[-1] in ".!?" else "")
        text = re.sub(r"(?<!\w)" + re.escape(p) + r"(?!\w)", mark, text, flags=re.IGNORECASE)
    return text


def claims(text: str, title: str, year: int, genres: list[str] | tuple[str, ...],
           taste_genres: list[str] | tuple[str, ...] = (), liked: list[str] | tuple[str, ...] = (),
           vocabulary: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Unsupported claims in `text` given these facts, one line each (empty: grounded). `vocabulary`: more
    words that are facts here (the catalogue's genre names, which the guard checks against the item itself)."""
    out: list[str] = []
    facts = [title, *liked]
    rest = _blank(_blank(text, facts), [*genres, *taste_genres, *vocabulary])  # genre names may hold digits
    for m in _DIGITS.finditer(rest):
        number = m.group(0)
        if _YEAR.fullmatch(number):
            if int(number) != year:
                out.append(f"wrong year {number}")
        else:
            out.append(f"number not in the facts: {number}")
    rest = _DIGITS.sub(" · ", rest)
    for m in _NUMBER_RE.finditer(rest):
        out.append(f"number not in the facts: {m.group(0)}")
    for kind, pattern in _VOCAB_RE.items():
        for m in pattern.finditer(rest):
            out.append(f"{kind} not in the facts: {m.group(0)}")
    for m in _ECHO.finditer(text):
        out.append(f"prompt echo: {m.group(0)}")
    for m in _WORD.finditer(rest):
        word = m.group(0)
        if word[0].isupper() and word != "I" and not SENTENCE_START.search(rest[: m.start()]):
            out.append(f"name not in the facts: {word}")
    out += repetition(text, title, _blank(text, facts))
    return list(dict.fromkeys(out))


def repetition(text: str, title: str = "", rest: str | None = None) -> list[str]:
    """Degenerate text: the title more than twice, a content word more than MAX_WORD_REPEATS times, or a
    three-word phrase twice, counted in `rest` (the text without its titles: a watched title may share words with
    the item's)."""
    out = []
    if title and len(re.findall(r"(?<!\w)" + re.escape(title) + r"(?!\w)", text, re.IGNORECASE)) > 2:
        out.append(f"repeats the title: {title}")
    body = _blank(text, [title]) if rest is None else rest
    words = [w.lower() for w in _WORD.findall(body)]
    for w, n in Counter(words).items():
        if n > MAX_WORD_REPEATS and w not in STOPWORDS:
            out.append(f"repeats a word: {w} ×{n}")
    grams = Counter(zip(words, words[1:], words[2:], strict=False))
    out += [f"repeats a phrase: {' '.join(g)}" for g, n in grams.items() if n > 1]
    out += [f"repeats a word: {m.group(0)}" for m in _DOUBLED.finditer(body)]
    out += [f"wrong article: {m.group(0)}" for m in _ARTICLE.finditer(body)]
    return out
