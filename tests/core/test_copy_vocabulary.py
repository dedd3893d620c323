"""The copy's vocabulary (`core.copy_vocabulary`) on SmolLM2's tokenizer: every composition of every style a
copy's facts allow is written in its tokens, and a claim the facts do not hold is not."""

from __future__ import annotations

import random

import pytest

from core.copy_decoding import answer_ids, sentence_ends
from core.copy_guard import CopyFacts, ItemFacts, Taste
from core.copy_phrasings import compose, styles
from core.copy_vocabulary import columns, copy_vocabularies

TITLES = ["Toy Story (1995)", "Usual Suspects, The (1995)", "Sunset Blvd. (1950)", "Airplane! (1980)",
          "Seven (Se7en) (1995)", "Monty Python's Life of Brian (1979)", "D3: The Mighty Ducks (1996)",
          "8 1/2 (1963)", "Nikita (La Femme Nikita) (1990)", "Dr. Strangelove or: How I Learned to Stop Worrying "
          "and Love the Bomb (1963)", "Three Colors: Red (1994)", "Amélie (2001)"]
GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western", "IMAX"]


@pytest.fixture(scope="module")
def tok():
    from core.copy_lm import TINY, load_tokenizer
    from core.settings import load_settings

    return load_tokenizer(TINY, load_settings().model_cache)


def viewers(n: int, seed: int = 0) -> list[list[CopyFacts]]:
    """n viewers' k=6 lists over TITLES and GENRES: with and without years, watched titles and a taste."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        liked = tuple(t.rsplit(" (", 1)[0] for t in rng.sample(TITLES, rng.randint(0, 2)))
        taste = Taste(tuple(rng.sample(GENRES, rng.randint(0, 2))), liked)
        out.append([CopyFacts(ItemFacts.from_row(i, t, rng.choice([1995, 1963, -1]),
                                                 rng.sample(GENRES, rng.randint(0, 3))), taste)
                    for i, t in enumerate(rng.sample(TITLES, 6))])
    return out


def test_every_composition_of_a_copys_facts_is_written_in_its_vocabulary(tok) -> None:
    rng = random.Random(1)
    checked = 0
    for batch in viewers(12):
        rows = copy_vocabularies(tok, batch, sentence_ends(tok)[1])
        for f, row in zip(batch, rows, strict=True):
            for d in rng.sample(styles(f), 40):
                ids = answer_ids(tok, [compose(f, d)], f)[0]  # as training tokenizes targets, turn end included
                assert set(ids) <= row, (compose(f, d), [tok.decode([i]) for i in set(ids) - row])
                checked += 1
    assert checked >= 12 * 6 * 40


def test_the_vocabulary_is_small_and_holds_no_claim_the_facts_lack(tok) -> None:
    batch = viewers(1, seed=3)[0]
    rows = copy_vocabularies(tok, batch, sentence_ends(tok)[1])
    vocab, own = columns(rows)
    assert len(vocab) < 0.01 * len(tok), len(vocab)  # the point: a few hundred columns, not 49,152
    assert own.shape == (len(batch), len(vocab)) and bool(own.sum(1).lt(len(vocab)).any())  # rows differ
    fargo = CopyFacts(ItemFacts.from_row(1, "Fargo (1996)", 1996, ["Crime", "Drama"]), Taste(("Drama",), ("Heat",)))
    row = copy_vocabularies(tok, [fargo])[0]
    for claim in (" Hanks", " Oscars", " Spielberg", " astronaut", " eleven", " 1997", " Godfather", " Titanic"):
        assert not set(tok(claim, add_special_tokens=False)["input_ids"]) <= row, claim
    for fact in (" Fargo", " Heat", " 1996", " crime", " drama", " Because", " watched"):
        assert set(tok(fact, add_special_tokens=False)["input_ids"]) <= row, fact
