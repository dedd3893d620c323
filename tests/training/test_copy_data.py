"""Copy-LM training pairs: grounded targets, held-out items, prompts the model is trained and served on."""

from __future__ import annotations

from collections import Counter

import pytest

from core.copy_guard import CopyFacts, Guard, ItemFacts, Taste
from core.copy_phrasings import (
    compose,
    genre_phrase,
    shape,
    style,
    style_words,
    styles,
    target_forms,
    write_target,
)
from training.copy_data import build_pairs, held_out_item
from training.data.synthetic import generate_synthetic


@pytest.fixture(scope="module")
def data():
    ds = generate_synthetic(seed=3)
    pairs = build_pairs(ds.interactions, ds.items, n_train=400, n_held_out=60, held_out_fraction=0.1, seed=1)
    guard = Guard(ds.items["title"].tolist(), sorted({g for gs in ds.items["genres"] for g in gs}))
    return ds, pairs, guard


def test_every_target_passes_the_guard(data) -> None:
    _, pairs, guard = data
    assert len(pairs.train) == 400 and len(pairs.held_out) == 60
    bad = [(f.document(), t, guard.violations(t, f)) for f, t in pairs.train + pairs.held_out
           if guard.violations(t, f)]
    assert bad == []


def test_held_out_items_never_appear_in_training(data) -> None:
    _, pairs, _ = data
    train_items = {f.item.item_id for f, _ in pairs.train}
    held = {f.item.item_id for f, _ in pairs.held_out}
    assert held and not train_items & held
    assert all(held_out_item(i, 0.1) for i in held) and not any(held_out_item(i, 0.1) for i in train_items)


def test_targets_vary_and_use_the_taste(data) -> None:
    _, pairs, _ = data
    openings = Counter(t.split()[0] for _, t in pairs.train)
    assert len(openings) >= 5  # several phrasings, not one template
    with_taste = [(f, t) for f, t in pairs.train if f.taste.liked]
    assert with_taste and any(f.taste.liked[-1] in t for f, t in with_taste)


def test_genre_phrase_reads_as_english_not_a_list_of_labels() -> None:
    assert genre_phrase(("Crime", "Drama")) == "crime drama"
    assert genre_phrase(("Action", "Adventure", "Sci-Fi", "War")) == "action adventure sci-fi film"
    assert genre_phrase(("Animation", "Children's")) == "animated children's film"  # was "animation children's"
    assert genre_phrase(("Children's", "Comedy", "Musical")) == "children's musical comedy"
    assert genre_phrase(("Comedy", "Romance")) == "romantic comedy"
    assert genre_phrase(("Comedy", "Drama")) == "comedy-drama"
    assert genre_phrase(("Film-Noir", "Thriller")) == "noir thriller"
    assert genre_phrase(("Drama",)) == "drama" and genre_phrase(("Horror",)) == "horror film"
    assert genre_phrase(("unknown",)) == "film"


def test_no_composition_lets_a_watched_title_run_into_the_movie() -> None:
    """A colon right after a watched title ("Because you watched Terminator 2: Judgment Day: …") reads as if
    the title's second half were the movie; the fine-tuned model then dropped the movie (11 of 1,000 copies)."""
    facts = CopyFacts(ItemFacts.from_row(1, "Fargo (1996)", 1996, ["Crime", "Drama"]),
                      Taste(("Drama",), ("Mission: Impossible", "Terminator 2: Judgment Day")))
    forms = [compose(facts, s) for s in styles(facts)]
    assert len(forms) == len(set(forms)) == 10 * 5 * 10 * 5  # every style writes its own copy
    assert all("Fargo" in f for f in forms) and any("Terminator 2" in f for f in forms)
    assert not [f for f in forms for w in facts.taste.liked if f"{w}:" in f]


def test_the_style_is_fixed_by_the_copy_key_and_allowed_by_the_facts() -> None:
    fargo = ItemFacts.from_row(1, "Fargo (1996)", 1996, ["Crime", "Drama"])
    plain = CopyFacts(fargo)  # no watched title, no taste: only the movie, no reason
    assert {s[2] for s in styles(plain)} == {"9"}
    horror = CopyFacts(fargo, Taste(("Horror",), ()))  # a taste the movie does not share: no taste reason
    assert {s[2] for s in styles(horror)} == {"9"}
    viewer = CopyFacts(fargo, Taste(("Drama",), ("Heat",)))
    assert {s[2] for s in styles(viewer)} == set("0123456789")
    assert style(viewer) == style(CopyFacts(fargo, Taste(("Drama",), ("Heat",)))) in styles(viewer)
    drawn = {style(CopyFacts(ItemFacts.from_row(i, f"Movie {i} (1990)", 1990, ["Drama"]), viewer.taste))
             for i in range(400)}
    assert len(drawn) > 250  # movies get different compositions, not one favourite
    assert write_target(viewer) == compose(viewer, style(viewer)) and target_forms(viewer) == [write_target(viewer)]


def test_a_title_that_ends_a_sentence_gets_no_second_full_stop() -> None:
    facts = CopyFacts(ItemFacts.from_row(2, "Airplane! (1980)", 1980, ["Comedy"]), Taste((), ("Sunset Blvd.",)))
    texts = [compose(facts, s) for s in styles(facts)]
    assert not [t for t in texts if "!." in t or "Blvd.." in t]
    assert compose(facts, "9490") == "Coming up: the 1980 comedy Airplane!"


def test_the_style_is_a_line_of_the_movie_part_of_the_prompt() -> None:
    """The viewer's part (shared by every item of one request) holds no style: each item has its own."""
    facts = CopyFacts(ItemFacts.from_row(1, "Fargo (1996)", 1996, ["Crime"]), Taste(("Crime",), ("Heat",)))
    viewer, movie = facts.document_parts(style_words(style(facts)))
    assert "Style" not in viewer and movie.endswith(f"\nStyle: {style_words(style(facts))}")
    assert facts.document() == viewer + movie[: movie.index("\nStyle")]


def test_a_copy_is_verbatim_only_when_its_composition_was_trained_whole() -> None:
    """The verbatim share compares shapes (facts as slots): the trained composition about another movie and
    viewer is verbatim; the same pieces put together anew, or a copy the model wrote itself, are not."""
    fargo = CopyFacts(ItemFacts.from_row(1, "Fargo (1996)", 1996, ["Crime", "Drama"]), Taste(("Drama",), ("Heat",)))
    toy = CopyFacts(ItemFacts.from_row(2, "Toy Story (1995)", 1995, ["Animation", "Comedy"]),
                    Taste(("Comedy", "Action"), ("Babe", "Casino")))
    seen = {shape(compose(fargo, "3141"), fargo)}
    assert shape(compose(toy, "3141"), toy) in seen  # another movie, another viewer: the same phrasing
    assert shape(compose(toy, "3142"), toy) not in seen  # another sign-off: a composition not trained whole
    assert shape(compose(toy, "3161"), toy) not in seen  # a taste reason in place of the watched one
    assert shape("Toy Story (1995) is a comedy you may like.", toy) not in seen
