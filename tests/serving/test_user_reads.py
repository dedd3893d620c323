"""Coalesced user reads (`serving.user_reads`, behind `serving.features.read_user`) against a real Feast store:
reads queued behind a running one share the next store read, each still gets its own user, and a failure stays
with the reads it belongs to."""

from __future__ import annotations

import asyncio
import threading


def _reader(feature_home, use_home):
    use_home(feature_home)
    from core.settings import load_settings
    from serving.features import FeatureReader

    return FeatureReader(load_settings(), inline=False)  # the reader thread, as for a store that can block


def _held_first_read(reader):
    """The reader's store read, with its first call held until `release` is set: the reads sent meanwhile queue."""
    release, calls, rows = threading.Event(), [], reader.rows

    def held(ids):
        calls.append(list(ids))
        if len(calls) == 1:
            release.wait(10)
        return rows(ids)

    reader.reads._rows = held
    return release, calls


def test_reads_queued_behind_a_running_one_are_one_store_read_each_with_its_own_user(feature_home, use_home):
    from serving.features import read_user

    reader = _reader(feature_home, use_home)
    release, calls = _held_first_read(reader)
    users = [1, 2, 3, 4, 5, 6, 7, 10**7]  # the last one has no row: a cold start, not a degradation

    async def main():
        first = asyncio.create_task(read_user(reader, 9, 5000))
        await asyncio.sleep(0.2)  # the reader thread is inside the first read
        rest = [asyncio.create_task(read_user(reader, u, 5000)) for u in users]
        await asyncio.sleep(0.2)
        release.set()
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(main())
    assert calls == [[9], users], calls  # two store reads for nine users
    assert first[0] == reader.user(9) and first[1] is None
    for u, (user, degraded, ms) in zip(users, rest, strict=True):
        assert degraded is None and user == reader.user(u) and user.user_id == u
        assert ms >= 150  # each read's timing includes its wait in the queue
    assert [u.known for u, _, _ in rest] == [True] * 7 + [False]
    assert (reader.reads.batches, reader.reads.users) == (2, 9)


def test_one_bad_row_fails_its_own_read_only(feature_home, use_home):
    from serving.features import read_user

    reader = _reader(feature_home, use_home)
    release, _ = _held_first_read(reader)
    profile = reader.reads._convert

    def convert(user_id, row):
        if user_id == 3:
            raise ValueError("recent_items: not a list")
        return profile(user_id, row)

    reader.reads._convert = convert

    async def main():
        first = asyncio.create_task(read_user(reader, 1, 5000))
        await asyncio.sleep(0.2)
        rest = [asyncio.create_task(read_user(reader, u, 5000)) for u in (2, 3, 4)]
        await asyncio.sleep(0.2)
        release.set()
        return [await first, *await asyncio.gather(*rest)]

    out = asyncio.run(main())
    assert [d is None for _, d, _ in out] == [True, True, False, True]
    assert out[2][1].stage == "features" and out[2][1].reason == "online store error (ValueError)"
    assert not out[2][0].known and out[3][0] == reader.user(4)


def test_a_read_given_up_does_not_stop_the_next_ones(feature_home, use_home):
    """The caller's timeout cuts its wait; the late answer is dropped and the reads after it are answered, also
    from another event loop (a replica's loop, a batch job's `asyncio.run`)."""
    from serving.features import read_user

    reader = _reader(feature_home, use_home)
    release, _ = _held_first_read(reader)
    late = asyncio.run(read_user(reader, 1, 100))
    assert not late[0].known and late[1].reason == "timeout after 100 ms"
    release.set()
    user, degraded, _ = asyncio.run(read_user(reader, 2, 5000))
    assert degraded is None and user == reader.user(2)
