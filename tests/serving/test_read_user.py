"""The user's features read inside Recall (`serving.features.read_user`): the normal answer, and the flagged
cold start when Feast is unreachable or late, against a real store and real sockets."""

from __future__ import annotations

import asyncio
import socket
import time


def _reader(feature_home, use_home, server: str | None = None, timeout_s: float = 2.0):
    use_home(feature_home)
    from core.settings import load_settings
    from serving.features import FeatureReader

    s = load_settings()
    if server:
        s = s.model_copy(update={"feature_read": "server", "feature_server_url": server,
                                 "feature_server_timeout_s": timeout_s})
    return FeatureReader(s)


def test_a_known_user_is_read_without_degradation(feature_home, use_home):
    from serving.features import read_user

    reader = _reader(feature_home, use_home)
    user, degraded, _ = asyncio.run(read_user(reader, 1, 5000))
    assert degraded is None and user.known and user.recent_items
    assert user == reader.user(1)


def test_an_unreachable_feature_server_gives_a_flagged_cold_start(feature_home, use_home):
    from serving.features import read_user

    user, degraded, _ = asyncio.run(read_user(_reader(feature_home, use_home, "http://127.0.0.1:1"), 1, 5000))
    assert not user.known and user.recent_items == [] and user.user_id == 1
    assert degraded is not None and degraded.stage == "features"
    assert degraded.fallback == "cold-start (popularity)"
    # What failed, without the server's address (that is in the replica's log).
    assert degraded.reason == "online store error (FeatureServerError)"


def test_a_stalled_feature_server_is_cut_at_the_stage_timeout(feature_home, use_home):
    """A server that accepts the connection and never answers: the read gives up at the stage's timeout, not
    at the client's own (3 s here; the abandoned thread ends then)."""
    from serving.features import read_user

    async def timed(reader):
        t0 = time.monotonic()
        out = await read_user(reader, 1, 100)
        return out, time.monotonic() - t0

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        reader = _reader(feature_home, use_home, f"http://127.0.0.1:{srv.getsockname()[1]}", timeout_s=3)
        (user, degraded, ms), waited = asyncio.run(timed(reader))
    assert not user.known
    assert degraded is not None and degraded.reason == "timeout after 100 ms"
    assert 100 <= ms <= waited * 1e3  # the stage's timing is the time it waited
    assert waited < 2, f"answered after {waited:.1f} s: the client's timeout, not the stage's"


def test_an_unknown_user_is_a_normal_answer_not_a_degradation(feature_home, use_home):
    from serving.features import read_user

    user, degraded, _ = asyncio.run(read_user(_reader(feature_home, use_home), 10**7, 5000))
    assert degraded is None and not user.known


def test_the_embedded_store_is_read_on_the_loop_and_never_waits_on_a_writer(feature_home, use_home, tmp_path):
    """`recsys features` leaves the SQLite online store in WAL mode, so `read_user` reads it on the event loop: a
    writer holding the file's exclusive lock (a commit in progress) does not hold the read up, and the read sees
    the last committed row. A store in rollback-journal mode keeps the reader thread, where the timeout holds."""
    import shutil
    import sqlite3

    from core.feature_store import embedded_online_path, in_wal
    from serving.features import read_user

    reader = _reader(feature_home, use_home)
    path = embedded_online_path(reader.store)
    assert path is not None and in_wal(path) and reader.inline
    before = reader.user(1)
    writer = sqlite3.connect(path, timeout=0)
    try:
        writer.execute("BEGIN EXCLUSIVE")
        writer.execute("DELETE FROM " + next(t for (t,) in writer.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE '%user_profile'")))
        t0 = time.monotonic()
        user, degraded, _ = asyncio.run(read_user(reader, 1, 5000))
        assert time.monotonic() - t0 < 1.0
        assert degraded is None and user == before  # the committed row, not the writer's pending delete
    finally:
        writer.rollback()
        writer.close()

    home = tmp_path / "home"
    shutil.copytree(feature_home, home)
    with sqlite3.connect(home / "features" / "online_store.db") as db:
        assert db.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    assert not _reader(home, use_home).inline
