"""The cluster's event log on a real Redis: acknowledged means fsynced, a SIGKILL of the server loses nothing,
and Feedback replicas pushing out of order cannot leave an older profile in Feast's Redis online store."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import redis

from core.errors import ConfigError
from core.events import FeedbackEvent, Profile
from core.events_redis import RedisEventLog


def ev(user: int, item: int, event_id: str) -> FeedbackEvent:
    return FeedbackEvent(user_id=user, item_id=item, event_type="click", event_id=event_id)


def no_base(users: list[int]) -> dict[int, Profile]:
    return {}


def test_a_redis_that_does_not_fsync_every_write_is_refused(tmp_path):
    from tests.conftest import RedisProcess

    server = RedisProcess(tmp_path / "r").start("--appendfsync", "everysec")
    try:
        with pytest.raises(ConfigError, match="appendfsync=everysec"):
            RedisEventLog(server.url, 50)
    finally:
        server.kill()


def test_sigkill_of_the_server_under_load_loses_no_acknowledged_event(redis_server):
    """Writers append until the server is SIGKILLed; after a restart on the same append-only file every
    acknowledged event is there exactly once and the profiles count them."""
    acked: list[str] = []
    stop = threading.Event()

    def write(worker: int) -> None:
        log = RedisEventLog(redis_server.url, 50)
        i = 0
        while not stop.is_set():
            eid = f"w{worker}-{i}"
            try:
                log.append([ev(worker, 1 + i % 40, eid)], no_base)
            except (redis.ConnectionError, redis.TimeoutError):
                return  # the server is gone: this one was never acknowledged
            acked.append(eid)
            i += 1

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    redis_server.kill()
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= 300
    redis_server.start()
    log = RedisEventLog(redis_server.url, 50)
    stored = [e["event_id"] for e in log.events()]
    assert set(acked) <= set(stored) and len(stored) == len(set(stored))
    assert len(stored) - len(acked) <= 4  # at most the in-flight append of each writer, stored but not acked
    for worker in range(4):
        assert log.profile(worker).n_interactions == sum(e.startswith(f"w{worker}-") for e in stored)


def test_replicas_pushing_out_of_order_leave_the_newest_profile_online(feature_home, tmp_path, use_home,
                                                                       redis_server):
    """Replica A reads version 1, replica B appends and pushes version 2, then A's push of version 1 lands:
    Feast's Redis store keeps version 2 because each version carries its own, rising, event time."""
    home = tmp_path / "home"
    shutil.copytree(feature_home, home)
    use_home(home)
    from core.settings import load_settings
    from serving.features import FeatureReader
    from serving.feedback import FeedbackWriter

    s = load_settings().model_copy(update={
        "event_log_url": redis_server.url,
        "feast_online_store": {"type": "redis", "connection_string": f"127.0.0.1:{redis_server.port},db=0"}})
    a, b = FeedbackWriter(s), FeedbackWriter(s)
    a.log.append([ev(5, 10, "e1")], a.base_profiles)
    stale = a.log.dirty_profiles([5])
    out = b.record([ev(5, 11, "e2")])
    assert out["pushed"] is True
    assert a.write(stale) == (True, None)
    assert FeatureReader(s).user(5).recent_items == [10, 11]
    assert a.log.dirty_profiles() == []


def test_a_lost_compare_and_set_round_applies_nothing_twice(redis_server):
    """Another replica wins the first round (the script answers conflict): the retry starts again from the
    user's online row, so the event is counted once on top of it."""
    log = RedisEventLog(redis_server.url, 50)
    real, rounds = log._append_script, []

    def another_replica_first(**kw):
        rounds.append(1)
        return [b"conflict", b"7"] if len(rounds) == 1 else real(**kw)

    log._append_script = another_replica_first
    online = Profile(recent_items=[1, 2], n_interactions=2, mean_rating=4.0, favourite_genres=["Drama"])
    log.append([ev(7, 10, "a")], lambda users: {u: online for u in users})
    assert len(rounds) == 2
    p = log.profile(7)
    assert p.n_interactions == 3 and p.recent_items == [1, 2, 10]
    assert online.n_interactions == 2  # the caller's row is not changed either


def test_a_password_protected_redis_is_reached_with_the_password_from_the_environment(tmp_path, monkeypatch):
    """The chart's URLs name `${REDIS_PASSWORD}` (loaded from its mounted file): the log and the catalogue expand it
    when they connect, and a refusal never prints it."""
    from core.catalogue import RedisCatalogue
    from tests.conftest import RedisProcess

    server = RedisProcess(tmp_path / "redis").start(password="s3cret-pw")
    try:
        url = f"redis://:${{REDIS_PASSWORD}}@127.0.0.1:{server.port}/1"
        monkeypatch.setenv("REDIS_PASSWORD", "wrong")
        with pytest.raises(redis.AuthenticationError) as err:
            RedisEventLog(url, 50)
        assert "wrong" not in str(err.value) and "s3cret" not in str(err.value)
        monkeypatch.setenv("REDIS_PASSWORD", "s3cret-pw")
        log = RedisEventLog(url, 50)
        log.append([FeedbackEvent(event_id="pw-1", user_id=1, item_id=2, event_type="click")], lambda users: {})
        assert [e["event_id"] for e in log.events()] == ["pw-1"]
        assert RedisCatalogue(url).read("0") == ([], "0")
        assert "s3cret" not in log.url
    finally:
        server.kill()


def test_the_feature_stores_online_settings_expand_the_password(monkeypatch, tmp_path):
    from core.feature_store import _expanded

    monkeypatch.setenv("REDIS_PASSWORD", "pw")
    assert _expanded({"type": "redis", "connection_string": "r-redis:6379,password=${REDIS_PASSWORD}"}) == {
        "type": "redis", "connection_string": "r-redis:6379,password=pw"}
    assert _expanded(None) is None
