"""Deleted users stay deleted: the event log's tombstones applied to every table the offline side keeps.

`DELETE /users/{id}` (or `recsys users delete`) erases the user's events and online rows at once; the prepared
data set and Feast's offline sources hold copies too, and `recsys data` could bring them back from the raw
files. Every data load goes through `purge_deleted_users` first, so the user's interactions up to their
deletion never reach a training set or a feature rebuild again. Interactions logged after the deletion (the
same id coming back as a new user) are kept.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.settings import Settings
from training.data.schema import MANIFEST, TIMESTAMP, USER_ID, Dataset, load_dataset, save_dataset

FEATURE_FILES = ("user_profile.parquet", "user_history.parquet")  # Feast's offline sources keyed by user


def tombstones(settings: Settings) -> dict[int, float]:
    """Deleted user → deletion time (epoch s), from the event log (none without one)."""
    from core.events import has_event_log, open_event_log

    if not has_event_log(settings):
        return {}
    log = open_event_log(settings)
    try:
        return log.tombstones()
    finally:
        log.close()


def _erased(users: pd.Series, times: pd.Series, stones: dict[int, float]) -> pd.Series:
    """Rows of a deleted user at or before their deletion (compared in epoch seconds: converting the NaN of users
    without a tombstone to datetimes overflowed in pandas now and then)."""
    deleted = users.map(stones).astype("float64")
    seconds = pd.to_datetime(times, utc=True).astype("int64").to_numpy() / 1e9
    return deleted.notna() & (seconds <= deleted.fillna(-1.0).to_numpy())


def without_deleted(ds: Dataset, stones: dict[int, float]) -> tuple[Dataset, int, int]:
    """The data set without deleted users' interactions up to their deletion, nor their user rows once nothing of
    theirs is left; and how many interaction and user rows went."""
    if not stones:
        return ds, 0, 0
    drop = _erased(ds.interactions[USER_ID], ds.interactions[TIMESTAMP], stones)
    inter = ds.interactions[~drop]
    gone = ds.users[USER_ID].isin(stones) & ~ds.users[USER_ID].isin(inter[USER_ID])
    if not drop.any() and not gone.any():
        return ds, 0, 0
    return (Dataset(ds.name, inter.reset_index(drop=True), ds.items, ds.users[~gone].reset_index(drop=True)),
            int(drop.sum()), int(gone.sum()))


def purge_deleted_users(settings: Settings, stones: dict[int, float] | None = None) -> dict[str, int]:
    """Drop deleted users' rows from the prepared data and the offline feature sources; returns rows dropped per
    table (nothing is rewritten when nothing matches)."""
    stones = tombstones(settings) if stones is None else stones
    out: dict[str, int] = {}
    if not stones:
        return out
    if (settings.data_dir / MANIFEST).exists():
        ds, n_inter, n_users = without_deleted(load_dataset(settings.data_dir), stones)
        if n_inter or n_users:
            save_dataset(ds, settings.data_dir)
            out.update(interactions=n_inter, users=n_users)
    for name in FEATURE_FILES:
        path: Path = settings.features_dir / name
        if path.exists():
            frame = pd.read_parquet(path)
            drop = _erased(frame["user_id"], frame["event_timestamp"], stones)
            if drop.any():
                tmp = path.with_suffix(".tmp")
                frame[~drop].to_parquet(tmp, index=False)
                tmp.replace(path)
                out[name.removesuffix(".parquet")] = int(drop.sum())
    return out
