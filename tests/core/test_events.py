"""The feedback event log and the profile push: durable, exactly once, convergent with the online store."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.events import EventLog, FeedbackBatch, FeedbackEvent, Profile
from core.events_redis import RedisEventLog
from tests.conftest import run_spawned


def ev(user: int, item: int, **kw) -> FeedbackEvent:
    return FeedbackEvent(user_id=user, item_id=item, event_type=kw.pop("event_type", "click"), **kw)


def no_base(users: list[int]) -> dict[int, Profile]:
    return {}


def _open(where: str, max_len: int = 50, **rules):
    if where.startswith("redis://"):
        return RedisEventLog(where, max_len, **rules)
    return EventLog(Path(where), max_len, **rules)


@pytest.fixture(params=["sqlite", "redis"])
def log_at(request, tmp_path) -> str:
    """Where a log lives: the local SQLite file, or the cluster's Redis (a real server, fsync always)."""
    if request.param == "sqlite":
        return str(tmp_path / "events.db")
    return request.getfixturevalue("redis_server").url


def test_events_are_stored_once_and_advance_the_profile(log_at):
    log = _open(log_at, max_len=3)
    base = {7: Profile(recent_items=[1, 2, 3], n_interactions=3, mean_rating=4.0, favourite_genres=["Drama"])}
    r = log.append([ev(7, 9, event_id="a"), ev(7, 2, event_id="b", event_type="rate", value=1.0)],
                   lambda users: {u: base[u] for u in users if u in base})
    assert r.accepted == ["a", "b"] and r.duplicates == [] and r.users == [7]
    again = log.append([ev(7, 9, event_id="a"), ev(8, 5, event_id="c")], no_base)
    assert again.accepted == ["c"] and again.duplicates == ["a"]
    (user, version, p, _), = log.dirty_profiles([7])
    assert (user, version) == (7, 1)
    assert p.recent_items == [3, 9, 2]  # 2 moved to the end, oldest dropped at max_len 3
    assert p.n_interactions == 5 and p.mean_rating == pytest.approx((4.0 * 4 + 1.0) / 5)
    assert p.favourite_genres == ["Drama"]
    assert [e["event_id"] for e in log.events()] == ["a", "b", "c"]


def test_the_exclusion_set_keeps_the_whole_history_but_not_repeatable_types(log_at):
    """The model's window holds 3 items; what may not be recommended again is all 300, minus the views when the
    operator says a view may repeat, and is bounded by max_seen (the most recent kept)."""
    log = _open(log_at, max_len=3, repeatable=frozenset({"view"}), max_seen=250)
    base = {7: Profile(recent_items=[1, 2, 3], n_interactions=3, mean_rating=4.0, favourite_genres=[],
                       seen_items=[1, 2, 3])}
    log.append([ev(7, 100 + i, event_id=f"p{i}", event_type="purchase") for i in range(300)],
               lambda users: {u: base[u] for u in users if u in base})
    log.append([ev(7, 5, event_id="v", event_type="view"), ev(7, 120, event_id="again", event_type="rate",
                                                              value=4.0)], no_base)
    p = log.profile(7)
    assert p.recent_items == [399, 5, 120]  # the model's window includes the view
    assert 5 not in p.seen_items  # the view may be recommended again
    assert len(p.seen_items) == 250 and p.seen_items[-1] == 120  # bounded; an item met again moves to the end
    assert set(p.seen_items) == set(range(151, 400)) | {120}
    old = Profile(recent_items=[1, 2], n_interactions=2, mean_rating=3.0, favourite_genres=[])  # stored earlier
    old.apply(ev(7, 9), max_len=3)
    assert old.seen_items == [1, 2, 9]  # a profile from before the field starts from its recent window


def _files_hold(where: str, marker: bytes) -> bool:
    """Whether any file the log keeps on disk (the SQLite file and its WAL, or Redis' append-only files) holds it."""
    if where.startswith("redis://"):
        import redis

        r = redis.Redis.from_url(where)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the rewrite the deletion started must have finished
            info = r.info("persistence")
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                break
            time.sleep(0.05)
        root = Path(r.config_get("dir")["dir"])
    else:
        root = Path(where).parent
    held = [f for f in root.rglob("*") if f.is_file() and marker in f.read_bytes()]
    return bool(held)


def test_deleting_a_user_erases_their_events_and_leaves_a_tombstone(log_at):
    log = _open(log_at)
    marker = "gdpr-marker-7"
    log.append([ev(7, i, event_id=f"{marker}-{i}") for i in range(1, 6)] + [ev(8, 3, event_id="b")], no_base)
    log.mark_pushed([(d.user_id, d.version) for d in log.dirty_profiles()])
    assert _files_hold(log_at, marker.encode())  # the check can fail: the events were on disk
    assert log.delete_user(7) == 5
    assert [e["event_id"] for e in log.events()] == ["b"] and log.events(7) == []
    assert not _files_hold(log_at, marker.encode())  # no copy left in free pages, the WAL or the AOF
    p = log.profile(7)
    assert (p.recent_items, p.seen_items, p.n_interactions, p.age) == ([], [], 0, -1)
    assert [d.user_id for d in log.dirty_profiles()] == [7]  # the erased profile waits for its push
    assert set(log.tombstones()) == {7} and log.tombstones()[7] <= time.time()
    assert log.delete_user(7) == 0  # idempotent
    again = log.append([ev(7, 9, event_id=f"{marker}-1")], no_base)  # back as a new user: the id is new again
    assert again.accepted == [f"{marker}-1"] and log.profile(7).recent_items == [9]


def test_pushed_marks_only_the_version_that_was_pushed(log_at):
    log = _open(log_at)
    log.append([ev(1, 10, event_id="x")], no_base)
    (u, v, _, t1), = log.dirty_profiles()
    log.append([ev(1, 11, event_id="y")], no_base, now=0.0)  # a newer version lands before the push is recorded
    log.mark_pushed([(u, v)])
    (_, v2, p, t2), = log.dirty_profiles()
    assert v2 == 2 and p.recent_items == [10, 11]
    assert t2 > t1  # the update time rises per user even when a clock goes back: pushes land in version order
    log.mark_pushed([(1, v2)])
    assert log.dirty_profiles() == []
    assert log.mark_all_dirty() == 1 and [d.user_id for d in log.dirty_profiles()] == [1]
    # the re-push after a rebuild is stamped past any rebuilt row (client times may run 5 minutes ahead)
    assert log.dirty_profiles()[0].updated > time.time() + 300


def test_an_event_without_an_id_is_idempotent_only_when_it_carries_a_timestamp(log_at):
    log = _open(log_at)
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    first = log.append([ev(1, 10, timestamp=ts)], no_base)
    retry = log.append([ev(1, 10, timestamp=ts)], no_base)
    assert retry.duplicates == first.accepted
    untimed = log.append([ev(1, 10), ev(1, 10)], no_base)
    assert len(untimed.accepted) == 2  # two clicks without ids or times are two clicks


def three_before(users: list[int]) -> dict[int, Profile]:
    """Every user had 3 interactions online before the log saw them (the usual first feedback)."""
    return {u: Profile(recent_items=[], n_interactions=3, mean_rating=4.0, favourite_genres=[]) for u in users}


def _writer(where: str, worker: int, n: int) -> None:
    log = _open(where)
    for i in range(n):  # every event twice: the second is a duplicate whichever process wins
        log.append([ev(worker % 3, 1 + i, event_id=f"w{worker % 2}-{i}")], three_before)


def test_concurrent_processes_store_every_event_exactly_once(log_at):
    """Four writer processes (replicas), each event sent by two of them: stored once, and every user's
    profile counts each of its events once (no lost update between replicas)."""
    _open(log_at).close()
    run_spawned(_writer, [(log_at, w, 60) for w in range(4)], timeout=120)
    log = _open(log_at)
    events = log.events()
    assert sorted(e["event_id"] for e in events) == sorted({f"w{w}-{i}" for w in range(2) for i in range(60)})
    assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})  # arrival order, no seq twice
    for user in {e["user_id"] for e in events}:
        # the online start counted once, each stored event once (a lost compare-and-set round re-applies nothing)
        assert log.profile(user).n_interactions == 3 + sum(e["user_id"] == user for e in events)


@pytest.mark.parametrize("body, field", [
    ({"user_id": 1, "item_id": 2, "event_type": "like"}, "event_type"),
    ({"user_id": 1, "item_id": 2, "event_type": "rate"}, "value"),
    ({"user_id": 1, "item_id": 2, "event_type": "rate", "value": 50}, "value"),
    ({"user_id": -1, "item_id": 2, "event_type": "click"}, "user_id"),
    ({"user_id": 1, "item_id": "two", "event_type": "click"}, "item_id"),
    ({"user_id": 1, "item_id": 2, "event_type": "click", "extra": 1}, "extra"),
    ({"user_id": 1, "item_id": 2, "event_type": "click", "event_id": "x" * 65}, "event_id"),
    ({"user_id": 1, "item_id": 2, "event_type": "click",
      "timestamp": (datetime.now(UTC) + timedelta(days=2)).isoformat()}, "timestamp"),
])
def test_bad_events_are_rejected_naming_the_field(body, field):
    with pytest.raises(ValidationError) as e:
        FeedbackBatch.model_validate({"events": [body]})
    assert field in str(e.value)


def test_push_failure_leaves_the_profile_dirty_and_replay_converges(feature_home, tmp_path, use_home):
    """A real outage: the online store is a Redis nobody listens on; then the real SQLite store again."""
    home = tmp_path / "home"
    shutil.copytree(feature_home, home)
    use_home(home)
    from core.feature_store import feature_store
    from core.settings import load_settings
    from serving.features import FeatureReader
    from serving.feedback import FeedbackWriter

    s = load_settings()
    reader = FeatureReader(s)
    user = next(u for u in range(1, 50) if reader.user(u).known)
    ctx = reader.user(user)
    before, n_before = ctx.recent_items, ctx.n_interactions
    item = next(i for i in range(1, 200) if i not in before)
    down = feature_store(s.model_copy(update={"feast_online_store": {
        "type": "redis", "connection_string": "127.0.0.1:1,socket_connect_timeout=0.2"}}))
    writer = FeedbackWriter(s, store=down)
    writer.base_profiles = FeedbackWriter(s).base_profiles  # the first read works; only the push fails
    out = writer.record([ev(user, item, event_id="e1")])
    assert out["accepted"] == ["e1"] and out["pushed"] is False and out["push_error"]
    assert reader.user(user).recent_items == before  # not in the online store yet, but logged
    assert [p[0] for p in writer.log.dirty_profiles()] == [user]

    ok, _ = FeedbackWriter(s).push()  # the replay after the store is back (a restarted replica does this)
    assert ok and writer.log.dirty_profiles() == []
    after = FeatureReader(s).user(user)
    assert after.recent_items == [*before, item][-s.sequence_length:]
    assert after.n_interactions == n_before + 1
    assert after.seen_items is not None and after.seen_items[-1] == item and set(ctx.seen_items) < set(after.seen_items)


def test_the_push_lock_excludes_threads_of_one_process_too(log_at):
    """The Feedback writer relies on the log's lock alone (no lock of its own): replay loop and request
    threads of one replica must not push at the same time either."""
    import threading

    log = _open(log_at)
    inside, overlapped = [0], [False]

    def push() -> None:
        with log.push_lock():
            inside[0] += 1
            overlapped[0] |= inside[0] > 1
            time.sleep(0.1)
            inside[0] -= 1

    threads = [threading.Thread(target=push) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlapped[0]


def test_favourite_genres_follow_feedback_as_the_offline_table_counts_them(log_at):
    log = _open(log_at)
    base = {7: Profile(recent_items=[1], n_interactions=3, mean_rating=4.0, favourite_genres=["Drama", "War"],
                       genre_counts={"Drama": 2.0, "War": 1.0})}
    genres = {10: ["Comedy"], 11: ["Comedy", "Romance"], 12: ["Comedy"]}
    log.append([ev(7, 10, event_id="g1")], lambda users: {u: base[u] for u in users if u in base}, genres=genres)
    assert log.profile(7).favourite_genres == ["Drama", "Comedy", "War"]  # ties by name, as offline
    log.append([ev(7, 11, event_id="g2"), ev(7, 12, event_id="g3")], no_base, genres=genres)
    p = log.profile(7)
    assert p.favourite_genres == ["Comedy", "Drama", "Romance"] and p.genre_counts["Comedy"] == 3.0
    old = Profile(recent_items=[], n_interactions=2, mean_rating=3.0, favourite_genres=["Drama", "War"])
    old.apply(ev(7, 10), max_len=3, genres=["War"])  # stored before counts were kept: favourites by rank
    assert old.favourite_genres == ["Drama", "War"] and old.genre_counts == {"Drama": 2.0, "War": 2.0}
    old.apply(ev(7, 11), max_len=3, genres=["War"])
    assert old.favourite_genres == ["War", "Drama"]


def test_a_users_feedback_moves_their_online_taste(feature_home, tmp_path, use_home):
    home = tmp_path / "home"
    shutil.copytree(feature_home, home)
    use_home(home)
    from core.settings import load_settings
    from serving.features import FeatureReader
    from serving.feedback import FeedbackWriter

    s = load_settings()
    reader, writer = FeatureReader(s), FeedbackWriter(s)
    user = next(u for u in range(1, 50) if reader.user(u).known)
    before = reader.user(user)
    rows = reader.items(list(range(1, 201)), fields=("genres",))
    genre = next(g for gs in rows.genres for g in gs if g not in before.favourite_genres)
    items = [int(i) for i, gs in zip(rows.item_ids, rows.genres, strict=True)
             if gs == [genre] and int(i) not in before.excluded()][:40]
    writer.record([FeedbackEvent(event_id=f"t{i}", user_id=user, item_id=i, event_type="click") for i in items])
    after = reader.user(user)
    assert after.favourite_genres[0] == genre, (before.favourite_genres, after.favourite_genres)


def test_deleting_a_user_the_log_never_saw_leaves_only_the_tombstone(log_at):
    log = _open(log_at)  # an empty log: no stream, no table rows yet
    assert log.delete_user(9) == 0
    assert set(log.tombstones()) == {9} and log.events() == []
