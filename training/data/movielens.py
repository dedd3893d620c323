"""MovieLens loaders (ML-100K and ml-latest layouts) producing the canonical Dataset, plus the download.

The format is picked by which files the directory holds, so `recsys data --source DIR` works on either
an unpacked GroupLens archive or a copy of one.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import DataFormatError
from training.data.download import MD5SUMS, URLS, download_movielens
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
from training.data.textfile import fail, parse_id, parse_rating, parse_timestamp, read_rows

__all__ = ["MD5SUMS", "ML100K_GENRES", "URLS", "download_movielens", "load_movielens"]

# Genre order of the u.item flag columns, used when u.genre is absent.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
NO_GENRES = "(no genres listed)"
RATE = "rate"
_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")
_RELEASE_DATE = re.compile(r"^\d{1,2}-[A-Za-z]{3}-(\d{4})$")
_ML100K_ITEM_FIXED = 5  # item_id|title|release_date|video_release_date|imdb_url before the genre flags


def load_movielens(path: Path) -> Dataset:
    """Load an ML-100K (u.data, u.item) or ml-latest (ratings.csv, movies.csv) directory."""
    path = Path(path)
    if not path.is_dir():
        raise DataFormatError(f"MovieLens source {path} is not a directory")
    if (path / "u.data").is_file():
        ds = _load_ml100k(path)
    elif (path / "ratings.csv").is_file():
        ds = _load_ml_latest(path)
    else:
        raise DataFormatError(
            f"no MovieLens data in {path}: looked for u.data + u.item (ML-100K) "
            "or ratings.csv + movies.csv (ml-latest)"
        )
    validate(ds)
    return ds


def _require(path: Path, layout: str) -> Path:
    if not path.is_file():
        raise DataFormatError(f"{path} is missing ({layout} layout needs it)")
    return path


def _load_ml100k(directory: Path) -> Dataset:
    genre_file = directory / "u.genre"
    genres = _read_ml100k_genres(genre_file) if genre_file.is_file() else ML100K_GENRES
    items = _read_ml100k_items(_require(directory / "u.item", "ML-100K"), genres)
    user_file = directory / "u.user"
    users = _read_ml100k_users(user_file) if user_file.is_file() else None
    interactions = _read_ratings(
        directory / "u.data",
        delimiter="\t",
        header=None,
        item_ids=set(items[ITEM_ID].tolist()),
        user_ids=None if users is None else set(users[USER_ID].tolist()),
    )
    if users is None:
        users = _anonymous_users(interactions)
    return Dataset(name=directory.resolve().name, interactions=interactions, items=items, users=users)


def _load_ml_latest(directory: Path) -> Dataset:
    items = _read_ml_latest_movies(_require(directory / "movies.csv", "ml-latest"))
    tag_file = directory / "tags.csv"
    if tag_file.is_file():
        tags = _read_ml_latest_tags(tag_file, set(items[ITEM_ID].tolist()))
        item_tags = [tags.get(item_id, []) for item_id in items[ITEM_ID].tolist()]
        items[TAGS] = pd.Series(item_tags, index=items.index, dtype=object)
    interactions = _read_ratings(
        directory / "ratings.csv",
        delimiter=",",
        header=("userId", "movieId", "rating", "timestamp"),
        item_ids=set(items[ITEM_ID].tolist()),
        user_ids=None,
    )
    users = _anonymous_users(interactions)
    return Dataset(name=directory.resolve().name, interactions=interactions, items=items, users=users)


def _read_ratings(
    path: Path,
    *,
    delimiter: str,
    header: tuple[str, ...] | None,
    item_ids: set[int],
    user_ids: set[int] | None,
) -> pd.DataFrame:
    """Rating rows `user item rating unix_ts`; every referenced item (and user, if known) must exist."""
    users: list[int] = []
    items: list[int] = []
    ratings: list[float] = []
    stamps: list[int] = []
    # The ML-100K files never quote; the ml-latest CSVs may.
    rows = read_rows(path, delimiter=delimiter, n_fields=4, header=header, quoted=header is not None)
    for line, (user_s, item_s, rating_s, ts_s) in rows:
        user = parse_id(user_s, "user id", path, line)
        item = parse_id(item_s, "item id", path, line)
        if item not in item_ids:
            raise fail(path, line, f"item id {item} is not in the item file")
        if user_ids is not None and user not in user_ids:
            raise fail(path, line, f"user id {user} is not in the user file")
        ratings.append(parse_rating(rating_s, path, line))
        stamps.append(parse_timestamp(ts_s, path, line))
        users.append(user)
        items.append(item)
    if not users:
        raise DataFormatError(f"{path}: no ratings found")
    frame = pd.DataFrame(
        {
            USER_ID: np.array(users, dtype=np.int64),
            ITEM_ID: np.array(items, dtype=np.int64),
            RATING: np.array(ratings, dtype=np.float32),
            EVENT_TYPE: np.full(len(users), RATE, dtype=object),
            TIMESTAMP: pd.to_datetime(np.array(stamps, dtype=np.int64), unit="s", utc=True).astype(
                TIMESTAMP_DTYPE
            ),
        }
    )
    # One canonical row order, whatever order the file had (u.data is shuffled).
    return frame.sort_values([USER_ID, TIMESTAMP, ITEM_ID], kind="stable", ignore_index=True)


def _read_ml100k_genres(path: Path) -> tuple[str, ...]:
    """u.genre: `name|index`, indices 0..n-1 giving the order of u.item's flag columns."""
    by_index: dict[int, str] = {}
    for line, (name, index_s) in read_rows(path, delimiter="|", n_fields=2, encoding="latin-1", quoted=False):
        index = parse_id(index_s, "genre index", path, line)
        if index in by_index:
            raise fail(path, line, f"genre index {index} appears twice")
        by_index[index] = name
    if sorted(by_index) != list(range(len(by_index))) or not by_index:
        raise DataFormatError(f"{path}: genre indices must be 0..n-1, found {sorted(by_index)}")
    return tuple(by_index[i] for i in range(len(by_index)))


def _read_ml100k_items(path: Path, genres: tuple[str, ...]) -> pd.DataFrame:
    """u.item (latin-1, pipe-separated) with one 0/1 flag per genre."""
    ids: list[int] = []
    titles: list[str] = []
    years: list[int | None] = []
    item_genres: list[list[str]] = []
    seen: set[int] = set()
    n_fields = _ML100K_ITEM_FIXED + len(genres)
    for line, fields in read_rows(path, delimiter="|", n_fields=n_fields, encoding="latin-1", quoted=False):
        item = parse_id(fields[0], "item id", path, line)
        if item in seen:
            raise fail(path, line, f"item id {item} appears twice")
        seen.add(item)
        title = fields[1].strip()
        release = fields[2].strip()
        match = _RELEASE_DATE.match(release)
        if release and match is None:
            raise fail(path, line, f"release date {release!r} is not like 01-Jan-1995")
        flags = fields[_ML100K_ITEM_FIXED:]
        if any(flag not in ("0", "1") for flag in flags):
            raise fail(path, line, f"genre flags must be 0 or 1, found {'|'.join(flags)!r}")
        # The title year is the film's year; release_date is often a later (video) release.
        year = _title_year(title)
        if year is None and match is not None:
            year = int(match.group(1))
        ids.append(item)
        titles.append(title)
        years.append(year)
        item_genres.append([name for name, flag in zip(genres, flags, strict=True) if flag == "1"])
    return _items_frame(ids, titles, years, item_genres, [[] for _ in ids])


def _read_ml100k_users(path: Path) -> pd.DataFrame:
    """u.user: `user_id|age|gender|occupation|zip`; empty fields become nulls, zip is dropped."""
    ids: list[int] = []
    ages: list[int | None] = []
    genders: list[str | None] = []
    occupations: list[str | None] = []
    seen: set[int] = set()
    for line, fields in read_rows(path, delimiter="|", n_fields=5, encoding="latin-1", quoted=False):
        user = parse_id(fields[0], "user id", path, line)
        if user in seen:
            raise fail(path, line, f"user id {user} appears twice")
        seen.add(user)
        age_s = fields[1].strip()
        ids.append(user)
        ages.append(parse_id(age_s, "age", path, line) if age_s else None)
        genders.append(fields[2].strip() or None)
        occupations.append(fields[3].strip() or None)
    return pd.DataFrame(
        {
            USER_ID: np.array(ids, dtype=np.int64),
            AGE: pd.array(ages, dtype="Int64"),
            GENDER: pd.Series(genders, dtype=object),
            OCCUPATION: pd.Series(occupations, dtype=object),
        }
    )


def _read_ml_latest_movies(path: Path) -> pd.DataFrame:
    """movies.csv: `movieId,title,genres` with `|`-separated genres; the title keeps its "(1995)"."""
    ids: list[int] = []
    titles: list[str] = []
    years: list[int | None] = []
    item_genres: list[list[str]] = []
    seen: set[int] = set()
    for line, (item_s, title, genre_s) in read_rows(
        path, delimiter=",", n_fields=3, header=("movieId", "title", "genres")
    ):
        item = parse_id(item_s, "movie id", path, line)
        if item in seen:
            raise fail(path, line, f"movie id {item} appears twice")
        seen.add(item)
        title = title.strip()
        genre_s = genre_s.strip()
        ids.append(item)
        titles.append(title)
        years.append(_title_year(title))
        item_genres.append([] if genre_s in ("", NO_GENRES) else [g.strip() for g in genre_s.split("|")])
    return _items_frame(ids, titles, years, item_genres, [[] for _ in ids])


def _read_ml_latest_tags(path: Path, item_ids: set[int]) -> dict[int, list[str]]:
    """tags.csv: per movie, the distinct tags any user applied, lowercased and sorted."""
    tags: defaultdict[int, set[str]] = defaultdict(set)
    for line, (user_s, item_s, tag, ts_s) in read_rows(
        path, delimiter=",", n_fields=4, header=("userId", "movieId", "tag", "timestamp")
    ):
        parse_id(user_s, "user id", path, line)
        item = parse_id(item_s, "movie id", path, line)
        parse_timestamp(ts_s, path, line)
        if item not in item_ids:
            raise fail(path, line, f"movie id {item} is not in movies.csv")
        tag = tag.strip().lower()
        if tag:
            tags[item].add(tag)
    return {item: sorted(values) for item, values in tags.items()}


def _title_year(title: str) -> int | None:
    match = _TITLE_YEAR.search(title)
    return int(match.group(1)) if match else None


def _items_frame(
    ids: list[int],
    titles: list[str],
    years: list[int | None],
    genres: list[list[str]],
    tags: list[list[str]],
) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            ITEM_ID: np.array(ids, dtype=np.int64),
            TITLE: pd.Series(titles, dtype=object),
            YEAR: pd.array(years, dtype="Int64"),
            GENRES: pd.Series(genres, dtype=object),
            TAGS: pd.Series(tags, dtype=object),
        }
    )
    return frame.sort_values(ITEM_ID, ignore_index=True)


def _anonymous_users(interactions: pd.DataFrame) -> pd.DataFrame:
    """A user table for sources without demographics: every rating user, attributes null."""
    ids = np.unique(interactions[USER_ID].to_numpy())
    return pd.DataFrame(
        {
            USER_ID: ids.astype(np.int64),
            AGE: pd.array([None] * len(ids), dtype="Int64"),
            GENDER: pd.Series([None] * len(ids), dtype=object),
            OCCUPATION: pd.Series([None] * len(ids), dtype=object),
        }
    )
