"""The ranking stage's item cache against the real Feast online store (synthetic data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class CountingReader:
    """The real FeatureReader, counting how many item rows it was asked for."""

    def __init__(self, reader) -> None:
        self.reader, self.rows = reader, 0

    def items(self, ids, fields=None):
        self.rows += len(ids)
        return self.reader.items(ids)


def test_cache_returns_what_the_store_returns_and_rereads_only_stale_rows(feature_home: Path, use_home) -> None:
    use_home(feature_home)
    from core.settings import load_settings
    from serving.features import FeatureReader, ItemCache

    reader = FeatureReader(load_settings())
    counting = CountingReader(reader)
    cache = ItemCache(counting, ttl_s=3600)
    ids = [3, 1, 2, 3, 999_999, 5]  # a repeat and an id the store does not know
    first = cache.items(ids)
    direct = reader.items(ids)
    assert counting.rows == 5  # each distinct id read once
    for got in (first, cache.items(ids)):
        assert got.item_ids.tolist() == ids
        assert got.found.tolist() == direct.found.tolist() == [True, True, True, True, False, True]
        assert got.title == direct.title and got.genres == direct.genres
        for col in ("year", "popularity", "item_mean_rating", "content"):
            np.testing.assert_array_equal(getattr(got, col), getattr(direct, col))
    assert counting.rows == 5  # the second call came from memory
    many = list(range(1, 301))  # grows the column arrays past their first capacity
    assert cache.items(many).title == reader.items(many).title
    cache.ttl_s = 1e-9  # everything is stale now: read again
    before = counting.rows
    cache.items([1, 2])
    assert counting.rows == before + 2


def test_concurrent_fills_give_every_item_its_own_row(feature_home: Path, use_home) -> None:
    """The ranking stage fills the cache from worker threads while requests overlap: no two items may end up
    sharing a row (each slot is taken under the cache's lock)."""
    from concurrent.futures import ThreadPoolExecutor

    use_home(feature_home)
    from core.settings import load_settings
    from serving.features import FeatureReader, ItemCache

    reader = FeatureReader(load_settings())
    cache = ItemCache(reader, ttl_s=3600)
    groups = [list(range(1 + 37 * k, 121 + 37 * k)) for k in range(8)]  # overlapping, and past the first capacity
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(cache.items, groups))
    ids = sorted(set().union(*groups))
    got, direct = cache.items(ids), reader.items(ids)
    assert got.title == direct.title and got.genres == direct.genres
    np.testing.assert_array_equal(got.content, direct.content)
    np.testing.assert_array_equal(got.year, direct.year)


def test_derived_rows_are_computed_once_per_read_and_again_after_an_invalidation(feature_home: Path,
                                                                                  use_home) -> None:
    """What the ranking stage derives per item (dense features, projected content) is kept per cache slot: a
    request computes only rows read from the store since their last computation, and gets what a full
    computation gives."""
    use_home(feature_home)
    from core.settings import load_settings
    from serving.features import FeatureReader, ItemCache

    reader = FeatureReader(load_settings())
    cache = ItemCache(reader, ttl_s=3600)
    computed: list[int] = []

    def f(rows):
        computed.append(len(rows.item_ids))
        return np.stack([rows.year * 2.0, rows.content[:, 0]], axis=1)

    ids = [4, 2, 9, 2]
    first = cache.derived("k", cache.items(ids), f)
    np.testing.assert_array_equal(first, f(reader.items(ids)))
    computed.clear()
    again = cache.derived("k", cache.fresh([9, 4, 7]) or cache.items([9, 4, 7]), f)
    assert computed == [1]  # only item 7 was new to the cache
    np.testing.assert_array_equal(again, f(reader.items([9, 4, 7])))
    computed.clear()
    cache.invalidate([4])  # a catalogue upsert changed item 4: its row is read again, and derived again
    assert cache.fresh([4, 9]) is None
    cache.derived("k", cache.items([4, 9]), f)
    assert computed == [1]
    computed.clear()
    cache.derived("other", cache.items([4, 9]), f)  # another key (another ranker version) has its own rows
    assert computed == [2]


def test_id_lookup_maps_whole_lists_including_ids_past_the_table() -> None:
    from serving.id_lookup import DENSE_LIMIT, IdLookup

    big = DENSE_LIMIT + 5  # catalogue ids go up to 2^62: kept beside the table
    lookup = IdLookup({3: 0, 7: 1, big: 2})
    lookup.set([5000], [3])  # grows the table
    assert lookup.rows([7, 3, 4, big, 5000, -1, 2**62]).tolist() == [1, 0, -1, 2, 3, -1, -1]
    assert lookup.rows([4, 7], missing=0).tolist() == [0, 1]
    assert 5000 in lookup and big in lookup and 4 not in lookup
