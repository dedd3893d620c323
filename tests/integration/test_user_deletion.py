"""Deleting a user: every copy this home keeps goes, on both event-log backends, and stays gone.

Real Feast (SQLite online store, file offline store), the real SQLite and Redis event logs, the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import run_cli


@pytest.fixture
def home(log_home: Path) -> Path:
    return log_home  # conftest: a prepared home with the event log on each backend (`log_env`)


def _rows_of(home: Path, user: int) -> dict[str, int]:
    out = {}
    for path in [home / "data" / "interactions.parquet", home / "data" / "users.parquet",
                 *sorted((home / "features").glob("user_*.parquet"))]:
        out[path.name] = int((pd.read_parquet(path)["user_id"] == user).sum())
    return out


def test_a_deleted_user_leaves_log_store_impressions_and_data_and_comes_back_as_new(home: Path) -> None:
    from core.events import FeedbackEvent
    from core.settings import load_settings
    from serving.contracts import RecommendResponse
    from serving.features import FeatureReader
    from serving.feedback import FeedbackWriter
    from serving.impressions import ImpressionLog, read_impressions
    from training.datasets import prepare

    s = load_settings()
    reader = FeatureReader(s)
    user = next(u for u in range(1, 50) if reader.user(u).known)
    other = user + 1
    writer = FeedbackWriter(s)
    writer.record([FeedbackEvent(event_id=f"d{i}", user_id=user, item_id=i, event_type="click") for i in (3, 4)]
                  + [FeedbackEvent(event_id="keep", user_id=other, item_id=5, event_type="click")])
    log = ImpressionLog(s.impressions_dir)
    for u in (user, other, user):
        log.write(RecommendResponse(request_id=f"r-{u}", user_id=u, items=[], model_versions={}, timings_ms={},
                                    degraded=[]))
    before = _rows_of(home, user)
    assert all(before.values()), before  # the check can fail: every table held the user

    out = writer.delete_user(user, s.impressions_dir)
    assert out == {"user_id": user, "events_deleted": 2, "online_rows": "blanked", "push_error": None,
                   "impressions_redacted": 2, "tombstone": True}
    assert writer.log.events(user) == [] and [e["event_id"] for e in writer.log.events()] == ["keep"]
    after = reader.user(user)
    assert not after.known and after.recent_items == []  # /recommend treats them as a new user
    assert reader.user(other).known
    assert [r["user_id"] for r in read_impressions(s.impressions_dir)] == [other]
    log.write(RecommendResponse(request_id="later", user_id=other, items=[], model_versions={}, timings_ms={},
                                degraded=[]))  # the replica's open file still appends after the redaction
    assert [r["request_id"] for r in read_impressions(s.impressions_dir)] == [f"r-{other}", "later"]

    prepared = prepare(s)  # every data load purges first
    assert user not in prepared.train and _rows_of(home, user) == dict.fromkeys(before, 0)
    assert other in prepared.train

    # Back as a new user: their new events are theirs, and the tombstone keeps only the old ones out.
    writer.record([FeedbackEvent(event_id="again", user_id=user, item_id=7, event_type="click")])
    assert reader.user(user).recent_items == [7]


def test_cli_deletes_and_a_fresh_data_import_does_not_bring_the_user_back(home: Path, log_env) -> None:
    res = run_cli(home, "users", "delete", "3", "--json", **log_env)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["user_id"] == 3 and out["online_rows"] == "blanked" and out["offline_rows"]["interactions"] > 0
    assert _rows_of(home, 3) == dict.fromkeys(_rows_of(home, 3), 0)
    res = run_cli(home, "data", "--synthetic", **log_env)  # the raw source still has user 3
    assert res.returncode == 0, res.stderr[-2000:]
    assert int((pd.read_parquet(home / "data" / "interactions.parquet")["user_id"] == 3).sum()) == 0
    bad = run_cli(home, "users", "delete", "x4", **log_env)
    assert bad.returncode != 0 and "user_id" in bad.stderr.lower() and "Traceback" not in bad.stderr
