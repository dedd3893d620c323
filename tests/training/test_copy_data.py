"""Copy-LM training pairs: grounded targets, held-out items, prompts the model is trained and served on."""

from __future__ import annotations

from collections import Counter

import pytest

from core.copy_guard import CopyFacts, Guard, ItemFacts, Taste
from core.copy_phrasings import genre_phrase, target_forms
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


def test_no_phrasing_lets_a_watched_title_run_into_the_movie() -> None:
    """A colon right after a watched title ("Because you watched Terminator 2: Judgment Day: …") reads as if
    the title's second half were the movie; the fine-tuned model then dropped the movie (11 of 1,000 copies)."""
    facts = CopyFacts(ItemFacts.from_row(1, "Fargo (1996)", 1996, ["Crime"]),
                      Taste(("Drama",), ("Mission: Impossible", "Terminator 2: Judgment Day")))
    forms = target_forms(facts)
    # two plain phrasings, two naming the last watched title, two naming the taste
    assert len(forms) == 6 and all("Fargo" in f for f in forms)
    assert sum("Terminator 2" in f for f in forms) == 2 and sum("drama" in f for f in forms) == 2
    assert not [f for f in forms for w in facts.taste.liked if f"{w}:" in f]
