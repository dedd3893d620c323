"""Synthetic MovieLens-shaped data with planted structure that tests can check models learn.

Planted signals, each a thing a model family should pick up:
- taste: users belong to clusters with a preference over genres (collaborative filtering);
- drift: each user's history moves from favourite genre A (first half) to genre B (second half), so
  recency matters;
- sequence: the next item is often `successor[previous item]`, a fixed cycle within each genre, so a
  sequential model beats popularity clearly;
- ratings: higher on the user's current favourite genre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.errors import ConfigError
from training.data.schema import (
    AGE,
    EVENT_TYPE,
    GENDER,
    GENRES,
    ITEM_ID,
    OCCUPATION,
    RATING,
    TAGS,
    TIMESTAMP,
    TIMESTAMP_DTYPE,
    TITLE,
    USER_ID,
    YEAR,
    Dataset,
    validate,
)

P_FOLLOW = 0.6  # chance the next item is the successor of the previous one
P_FAVOURITE = 0.8  # otherwise: chance the item comes from the current favourite genre
P_SECOND_GENRE = 0.3  # chance an item also carries a second genre
DUPLICATE_TS_USERS = 0.05  # share of users given two events with the same timestamp
START = pd.Timestamp("2020-01-01", tz="UTC")
OCCUPATIONS = ("student", "engineer", "artist", "educator", "retired", "other")


@dataclass(frozen=True)
class _Catalogue:
    primary: np.ndarray  # item index -> primary genre
    genres: list[list[int]]  # item index -> genres (primary first)
    successor: np.ndarray  # item index -> item index, a single cycle within each primary genre
    popularity: np.ndarray  # item index -> sampling weight within its primary genre


def generate_synthetic(
    n_users: int = 300,
    n_items: int = 200,
    n_genres: int = 6,
    interactions_per_user: tuple[int, int] = (20, 40),
    n_clusters: int = 4,
    seed: int = 0,
) -> Dataset:
    """A deterministic (per seed) data set; item ids are 1..n_items, user ids 1..n_users."""
    low, high = interactions_per_user
    if n_genres < 2 or n_items < 2 * n_genres:
        raise ConfigError(f"synthetic data needs 2 <= n_genres <= n_items / 2, got {n_genres}, {n_items}")
    if not 3 <= low <= high <= n_items:
        raise ConfigError(f"interactions_per_user needs 3 <= low <= high <= n_items, got {low}, {high}")
    if n_users < 1 or n_clusters < 1:
        raise ConfigError(f"n_users and n_clusters must be positive, got {n_users}, {n_clusters}")

    rng = np.random.default_rng(seed)
    cat = _catalogue(rng, n_items, n_genres)
    members = [np.flatnonzero(cat.primary == g) for g in range(n_genres)]
    tastes = rng.dirichlet(np.full(n_genres, 0.5), size=n_clusters)

    users, items, ratings, stamps = [], [], [], []
    duplicate_ts = rng.random(n_users) < DUPLICATE_TS_USERS
    duplicate_ts[rng.integers(n_users)] = True  # always at least one tie to exercise tie handling
    for user in range(n_users):
        taste = tastes[rng.integers(n_clusters)]
        first = int(rng.choice(n_genres, p=taste))
        rest = taste.copy()
        rest[first] = 0.0
        second = int(rng.choice(n_genres, p=rest / rest.sum())) if rest.sum() > 0 else (first + 1) % n_genres
        length = int(rng.integers(low, high + 1))
        seq = _sequence(rng, cat, members, taste, (first, second), length)
        for step, item in enumerate(seq):
            current = first if step < length / 2 else second
            liked = current in cat.genres[item]
            score = (4.2 if liked else 2.6) + rng.normal(0.0, 0.7)
            ratings.append(float(np.clip(np.rint(score), 1, 5)))
        gaps = rng.exponential(6 * 3600, size=length).astype(np.int64) + 1
        gaps[0] = rng.integers(0, 30 * 86400)
        if duplicate_ts[user]:
            gaps[rng.integers(1, length)] = 0
        users.extend([user + 1] * length)
        items.extend(int(i) + 1 for i in seq)
        stamps.extend(np.cumsum(gaps).tolist())

    interactions = pd.DataFrame(
        {
            USER_ID: np.array(users, dtype=np.int64),
            ITEM_ID: np.array(items, dtype=np.int64),
            RATING: np.array(ratings, dtype=np.float32),
            EVENT_TYPE: np.full(len(users), "rate", dtype=object),
            TIMESTAMP: (START + pd.to_timedelta(np.array(stamps, dtype=np.int64), unit="s")).astype(
                TIMESTAMP_DTYPE
            ),
        }
    )
    ds = Dataset("synthetic", interactions, _items_table(rng, cat), _users_table(rng, n_users))
    validate(ds)
    return ds


def successor_map(n_items: int = 200, n_genres: int = 6, seed: int = 0) -> dict[int, int]:
    """Ground truth: item id -> its planted successor, for the same arguments given to generate_synthetic."""
    # The catalogue is the first thing drawn from the generator, so it is reproducible on its own.
    cat = _catalogue(np.random.default_rng(seed), n_items, n_genres)
    return {i + 1: int(s) + 1 for i, s in enumerate(cat.successor)}


def _catalogue(rng: np.random.Generator, n_items: int, n_genres: int) -> _Catalogue:
    primary = rng.permutation(np.arange(n_items) % n_genres)
    genres: list[list[int]] = []
    for g in primary.tolist():
        extra = int(rng.integers(n_genres - 1))
        second = extra + (extra >= g)  # uniform over the other genres
        genres.append([g, second] if rng.random() < P_SECOND_GENRE else [g])
    successor = np.empty(n_items, dtype=np.int64)
    popularity = np.empty(n_items, dtype=np.float64)
    for g in range(n_genres):
        cycle = rng.permutation(np.flatnonzero(primary == g))
        successor[cycle] = np.roll(cycle, -1)
        weights = 1.0 / (1.0 + rng.permutation(len(cycle))) ** 0.8  # Zipf-like: a few hits per genre
        popularity[cycle] = weights / weights.sum()
    return _Catalogue(primary, genres, successor, popularity)


def _sequence(
    rng: np.random.Generator,
    cat: _Catalogue,
    members: list[np.ndarray],
    taste: np.ndarray,
    favourites: tuple[int, int],
    length: int,
) -> list[int]:
    """One user's items in time order, without repeats."""
    seen: set[int] = set()
    seq: list[int] = []
    for step in range(length):
        follow = int(cat.successor[seq[-1]]) if seq else -1
        if seq and follow not in seen and rng.random() < P_FOLLOW:
            item = follow
        else:
            current = favourites[0] if step < length / 2 else favourites[1]
            genre = current if rng.random() < P_FAVOURITE else int(rng.choice(len(taste), p=taste))
            pool = [i for i in members[genre].tolist() if i not in seen]
            if not pool:  # genre exhausted: any unseen item
                pool = [i for i in range(len(cat.primary)) if i not in seen]
            weights = cat.popularity[pool]
            item = int(rng.choice(pool, p=weights / weights.sum()))
        seen.add(item)
        seq.append(item)
    return seq


def _items_table(rng: np.random.Generator, cat: _Catalogue) -> pd.DataFrame:
    n_items = len(cat.primary)
    years = rng.integers(1950, 2021, size=n_items)
    return pd.DataFrame(
        {
            ITEM_ID: np.arange(1, n_items + 1, dtype=np.int64),
            TITLE: pd.Series([f"Synthetic Movie {i + 1} ({y})" for i, y in enumerate(years)], dtype=object),
            YEAR: pd.array(years, dtype="Int64"),
            GENRES: pd.Series([[f"Genre{g}" for g in gs] for gs in cat.genres], dtype=object),
            TAGS: pd.Series([[] for _ in range(n_items)], dtype=object),
        }
    )


def _users_table(rng: np.random.Generator, n_users: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            USER_ID: np.arange(1, n_users + 1, dtype=np.int64),
            AGE: pd.array(rng.integers(18, 70, size=n_users), dtype="Int64"),
            GENDER: pd.Series(rng.choice(["F", "M"], size=n_users).tolist(), dtype=object),
            OCCUPATION: pd.Series(rng.choice(OCCUPATIONS, size=n_users).tolist(), dtype=object),
        }
    )
