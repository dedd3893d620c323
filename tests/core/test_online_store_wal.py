"""The embedded online store's journal mode (`core.feature_store.use_wal` / `in_wal`): what decides whether serving
reads it on the event loop (`serving.features.FeatureReader.inline`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def test_wal_is_set_once_and_read_back_from_any_path(tmp_path: Path) -> None:
    from core.feature_store import in_wal, use_wal

    folder = tmp_path / "a home #1?x"  # characters a file: URI must escape
    folder.mkdir()
    path = folder / "online store.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
    assert not in_wal(path)
    assert use_wal(path) and in_wal(path)
    assert use_wal(path)  # already in WAL: a retrain's `recsys features` sets it again harmlessly
    assert not in_wal(tmp_path / "missing.db")  # unreadable: the reader thread, never an error
