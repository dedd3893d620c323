"""Logged feedback → the prepared training tables, so the next training run learns from what users just did.

Events are appended to `interactions` in the canonical schema (event_type kept; an event without a rating
gets the implicit rating of its type). Only events after the last merge are read (a watermark beside the
data), a (user, item) pair already in the data is not added again (training sequences have no repeats), and
users first seen through feedback get a side-table row with unknown demographics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from core.settings import Settings
from training.data.schema import (
    AGE,
    EVENT_TYPE,
    GENDER,
    ITEM_ID,
    OCCUPATION,
    RATING,
    TIMESTAMP,
    USER_ID,
    Dataset,
    load_dataset,
    save_dataset,
)

IMPLICIT_RATING = {"view": 3.0, "click": 4.0, "favorite": 5.0, "purchase": 5.0}  # events without a value
WATERMARK = "feedback_merged.json"


def _watermark(data_dir: Path) -> int:
    path = data_dir / WATERMARK
    return int(json.loads(path.read_text())["last_seq"]) if path.exists() else 0


def merge_events(settings: Settings) -> dict[str, Any]:
    """Append feedback logged since the last merge to the prepared data; returns what was added."""
    from core.events import has_event_log, open_event_log
    from training.catalogue_data import merge_catalogue
    from training.tombstones import purge_deleted_users

    data_dir = settings.data_dir
    since = _watermark(data_dir)
    purge_deleted_users(settings)
    merge_catalogue(settings)  # before the events: feedback on an upserted item must find its row
    if not has_event_log(settings):
        return {"events": 0, "added": 0, "new_users": 0, "last_seq": since}
    events = [e for e in open_event_log(settings).events() if e["seq"] > since]
    if not events:
        return {"events": 0, "added": 0, "new_users": 0, "last_seq": since}
    ds = load_dataset(data_dir)
    ev = pd.DataFrame(events)
    ev = ev[ev["item_id"].isin(ds.items[ITEM_ID])]  # the API rejects unknown items; an old log may not have
    rows = pd.DataFrame({
        USER_ID: ev["user_id"].astype("int64"),
        ITEM_ID: ev["item_id"].astype("int64"),
        RATING: pd.to_numeric(ev["value"], errors="coerce").fillna(ev["event_type"].map(IMPLICIT_RATING))
        .fillna(4.0).astype("float32"),  # numeric first: fillna on the object column (all None) is deprecated
        EVENT_TYPE: ev["event_type"].astype(str),
        TIMESTAMP: pd.to_datetime(ev["ts"], utc=True, format="ISO8601").astype("datetime64[ns, UTC]"),
    })
    seen = set(zip(ds.interactions[USER_ID], ds.interactions[ITEM_ID], strict=True))
    rows = rows[[(u, i) not in seen for u, i in zip(rows[USER_ID], rows[ITEM_ID], strict=True)]]
    rows = rows.drop_duplicates([USER_ID, ITEM_ID], keep="first")
    new_users = sorted(set(rows[USER_ID]) - set(ds.users[USER_ID]))
    users = ds.users
    if new_users:
        extra = pd.DataFrame({USER_ID: pd.Series(new_users, dtype="int64"),
                              AGE: pd.Series([pd.NA] * len(new_users), dtype="Int64"),
                              GENDER: pd.Series([None] * len(new_users), dtype="object"),
                              OCCUPATION: pd.Series([None] * len(new_users), dtype="object")})
        users = pd.concat([ds.users, extra], ignore_index=True)
    inter = pd.concat([ds.interactions, rows], ignore_index=True)
    save_dataset(Dataset(ds.name, inter, ds.items, users), data_dir)
    last = int(max(e["seq"] for e in events))
    (data_dir / WATERMARK).write_text(json.dumps({"last_seq": last}))
    return {"events": len(events), "added": len(rows), "new_users": len(new_users), "last_seq": last}
