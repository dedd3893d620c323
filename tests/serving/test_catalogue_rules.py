"""Exploration slots and decayed popularity: the two rules that let new and newly popular items be shown."""

from __future__ import annotations

import math

import numpy as np

from serving.popularity import ItemHeat
from serving.ranking import explore


def test_exploration_gives_the_best_new_item_one_slot_of_ten_and_counts_those_that_earned_theirs() -> None:
    channels = ["ann"] * 12 + ["new", "new"]
    order = list(range(14))  # positions in score order: the new items scored last
    top, explored = explore(order[:10], order, channels, 10, 0.1)
    assert top == [*range(9), 12] and explored == {12}  # the 10th item made room for the best new one
    channels[3] = "new"  # a new item that ranked in on its own: the share is already met
    assert explore(order[:10], order, channels, 10, 0.1) == (order[:10], set())
    assert explore(order[:10], order, ["ann"] * 14, 10, 0.1) == (order[:10], set())  # no new item: unchanged
    assert explore(order[:10], order, channels, 10, 0.0)[1] == set()  # share 0: off
    few = explore([0, 1], [0, 1, 12], ["ann"] * 12 + ["new"], 10, 0.1)
    assert few == ([0, 1, 12], {12})  # a free slot: nothing is dropped for it
    assert explore(order[:10], order, ["ann"] * 11 + ["new"] * 3, 10, 0.3)[1] == {11, 12, 13}


def test_popularity_follows_events_and_forgets_them_with_the_half_life() -> None:
    day = 86_400.0
    heat = ItemHeat(half_life_s=day, since=1_000.0)
    ids = np.array([1, 2, 3])
    rebuilt = np.array([100, 10, 0])
    assert list(heat.decayed(ids, rebuilt, 1_000.0)) == [100, 10, 0]
    assert heat.add([(3, 500.0)] * 50) == 0  # before the rebuild: already in its counts
    heat.add([(3, 1_000.0 + day)] * 150)  # a burst on item 3, one half-life after the rebuild
    now = 1_000.0 + day
    pop = heat.decayed(ids, rebuilt, now)
    assert math.isclose(pop[0], 50.0) and math.isclose(pop[2], 150.0)  # the rebuilt count halved; 3 on top
    later = heat.decayed(ids, rebuilt, now + 2 * day)
    assert math.isclose(later[2], 37.5) and math.isclose(later[0], 12.5)  # both forgotten at the same rate


def test_popularity_sums_survive_years_of_events_without_overflow() -> None:
    heat = ItemHeat(half_life_s=3_600.0, since=0.0)
    for h in range(0, 24 * 365 * 3, 24):  # three years, an event a day
        heat.add([(1, h * 3_600.0)])
    pop = heat.decayed(np.array([1]), np.array([0]), 24 * 365 * 3 * 3_600.0)
    assert np.isfinite(pop).all() and 0 < pop[0] < 2
