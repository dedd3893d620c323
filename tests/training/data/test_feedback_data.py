"""Logged feedback becomes training data: appended once, in the canonical schema, new users included."""

from __future__ import annotations

from datetime import UTC, datetime

from core.events import EventLog, FeedbackEvent
from core.settings import load_settings
from training.data.schema import load_dataset, save_dataset
from training.data.synthetic import generate_synthetic
from training.feedback_data import merge_events


def test_events_since_the_last_merge_are_appended_once(tmp_path):
    s = load_settings(overrides={"home": tmp_path})
    ds = generate_synthetic(seed=0)
    save_dataset(ds, s.data_dir)
    known_user = int(ds.interactions["user_id"].iloc[0])
    had = set(ds.interactions.loc[ds.interactions["user_id"] == known_user, "item_id"])
    new_item = int(next(i for i in ds.items["item_id"] if i not in had))
    old_item = int(next(iter(had)))
    log = EventLog(s.event_log_path, s.sequence_length)
    ts = datetime.now(UTC).replace(microsecond=0)

    def ev(user: int, item: int, kind: str = "click", value: float | None = None, eid: str = "") -> FeedbackEvent:
        return FeedbackEvent(user_id=user, item_id=item, event_type=kind, value=value, timestamp=ts, event_id=eid)

    log.append([ev(known_user, new_item, "rate", 2.5, "a"), ev(known_user, old_item, eid="b"),
                ev(known_user, new_item, eid="c"), ev(10**6, new_item, "view", eid="d")], lambda users: {})
    out = merge_events(s)
    assert out == {"events": 4, "added": 2, "new_users": 1, "last_seq": 4}  # b: pair known; c: repeat of a
    merged = load_dataset(s.data_dir)
    assert len(merged.interactions) == len(ds.interactions) + 2
    rows = merged.interactions.tail(2).reset_index(drop=True)
    assert rows[["user_id", "item_id", "event_type"]].values.tolist() == [[known_user, new_item, "rate"],
                                                                          [10**6, new_item, "view"]]
    assert rows["rating"].tolist() == [2.5, 3.0]  # the given rating; a view's implicit rating
    assert rows["timestamp"].iloc[0] == ts
    assert 10**6 in set(merged.users["user_id"])
    assert merge_events(s)["added"] == 0  # nothing new since the watermark
    log.append([ev(known_user, int(ds.items["item_id"].iloc[-1]), eid="e")], lambda users: {})
    assert merge_events(s)["events"] == 1
