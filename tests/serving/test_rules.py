"""Business rules and template copy: pure functions, no services."""

from __future__ import annotations

from serving.contracts import RankedItem
from serving.copy import template_copy
from serving.ranking import _unique, diversify


def test_diversify_caps_items_sharing_a_first_genre():
    genres = ["Drama"] * 6 + ["Comedy", "Action"]
    picked = diversify(list(range(8)), genres, k=4, max_share=0.5)
    assert picked == [0, 1, 6, 7]  # two dramas (cap = ceil(0.5·4)), then the best of the others


def test_diversify_fills_from_deferred_items_when_too_few_others():
    genres = ["Drama"] * 5 + ["Comedy"]
    picked = diversify(list(range(6)), genres, k=4, max_share=0.25)
    assert picked == [0, 5, 1, 2]  # one drama, the comedy, then deferred dramas in score order
    assert len(set(picked)) == 4


def test_unique_drops_repeated_items_keeping_the_better_ranked():
    assert _unique([2, 0, 1, 3], [7, 8, 7, 9]) == [2, 1, 3]  # position 0 repeats item 7


def test_template_copy_uses_only_true_attributes():
    item = RankedItem(item_id=5, score=0.9, title="Fargo", year=1996, genres=["Crime", "Drama", "Thriller", "X"])
    c = template_copy(item, because="Heat (1995)")
    assert c.source == "template"
    assert c.text == "Fargo (1996) · Crime, Drama, Thriller. Because you watched Heat (1995)."


def test_template_copy_does_not_repeat_a_year_already_in_the_title():
    item = RankedItem(item_id=5, score=0.9, title="Fargo (1996)", year=1996, genres=[])
    assert template_copy(item).text == "Fargo (1996). Picked for you."  # short: one true sentence more


def test_blend_weight_moves_the_order_from_ranker_to_recall():
    import numpy as np

    from core.ranking_inputs import blend

    p_click = np.array([0.9, 0.5, 0.1])  # the ranker prefers 0, 1, 2
    recall = np.array([1.0, 2.0, 3.0])  # recall prefers 2, 1, 0
    assert list(np.argsort(-blend(p_click, recall, 0.0))) == [0, 1, 2]
    assert list(np.argsort(-blend(p_click, recall, 1000.0))) == [2, 1, 0]
    assert blend(p_click[None, :], recall[None, :], 1.0).shape == (1, 3)  # per-user rows
