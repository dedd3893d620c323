"""The catalogue log: files a user writes, both backends, and the state every replica folds from it."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from core.catalogue import (
    CatalogueItem,
    CatalogueOp,
    CatalogueState,
    RedisCatalogue,
    SqliteCatalogue,
    read_items_file,
    upsert_ops,
)
from core.errors import DataFormatError


def test_csv_and_jsonl_files_give_the_same_items(tmp_path: Path) -> None:
    csv = tmp_path / "new.csv"
    csv.write_text("item_id,title,genres,year,text\n5001,Quiet Harbour (2024),Drama|Romance,2024,A  slow   film\n"
                   "5002,Untitled,,,\n")
    jsonl = tmp_path / "new.jsonl"
    jsonl.write_text('{"item_id": 5001, "title": "Quiet Harbour (2024)", "genres": ["Drama", "Romance"], '
                     '"year": 2024, "text": "A slow film"}\n\n{"item_id": 5002, "title": "Untitled"}\n')
    a, b = read_items_file(csv), read_items_file(jsonl)
    assert a == b
    assert a[0].genres == ["Drama", "Romance"] and a[0].text == "A slow film" and a[1].year is None
    assert a[1].row() == {"item_id": 5002, "title": "Untitled", "year": None, "genres": [], "tags": []}


@pytest.mark.parametrize(("name", "text", "needle"), [
    ("a.csv", "item_id,title,year\n7,Ok,19x9\n", "line 2: year: '19x9' is not an integer"),
    ("a.csv", "item_id,title,rating\n7,Ok,5\n", "unknown column 'rating'"),
    ("a.csv", "item_id,title\n7,\n", "title"),
    ("a.csv", "item_id,title\n0,Zero\n", "item_id"),
    ("a.csv", "item_id,title\n7,A\n7,B\n", "more than once: [7]"),
    ("a.jsonl", '{"item_id": 7, "title": "A"}\n{"item_id": "8", "title": "B"}\n', "object 2: item_id"),
    ("a.jsonl", '{"item_id": 7, "title": "A", "price": 3}\n', "price"),
    ("a.jsonl", '{"item_id": 7, "title": "A"\n', "line 1: not JSON"),
    ("a.jsonl", '[1, 2]\n', "expected a JSON object"),
    ("a.txt", "7,A\n", "expected a .csv or .jsonl file"),
])
def test_a_bad_file_is_refused_naming_the_place_and_the_field(tmp_path: Path, name: str, text: str,
                                                               needle: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataFormatError, match=None) as err:
        read_items_file(path)
    assert needle in str(err.value)


def _item(i: int, title: str = "Item") -> CatalogueItem:
    return CatalogueItem(item_id=i, title=f"{title} {i}", genres=["Drama"], year=2020)


@pytest.fixture(params=["sqlite", "redis"])
def log(request, tmp_path: Path):
    if request.param == "sqlite":
        out = SqliteCatalogue(tmp_path / "events.db")
    else:
        out = RedisCatalogue(request.getfixturevalue("redis_server").url)
    yield out
    out.close()


def test_the_state_folds_upserts_retirements_and_relisting_from_a_cursor(log) -> None:
    content = np.random.default_rng(0).normal(size=(3, 384)).astype(np.float32)
    state = CatalogueState()
    assert state.follow(log) == set()
    log.append(upsert_ops([_item(1), _item(2), _item(3)], content, now=100.0))
    assert state.follow(log) == {1, 2, 3}
    np.testing.assert_array_equal(state.items[2].content, content[1])  # the embedding travels exactly
    log.append([CatalogueOp("retire", 2, 101.0)])
    assert state.follow(log) == {2}
    assert set(state.items) == {1, 3} and state.retired == {2}
    log.append(upsert_ops([_item(2, "Back")], content[:1], now=102.0))
    assert state.follow(log) == {2} and state.retired == set() and state.items[2].item.title == "Back 2"
    fresh = CatalogueState()  # a replica started later reads the same state from the start
    fresh.follow(log, limit=2)
    assert fresh.items.keys() == state.items.keys() and fresh.retired == state.retired


def test_concurrent_upserts_lose_nothing(log) -> None:
    content = np.ones((1, 384), dtype=np.float32)

    def write(t: int) -> None:
        for j in range(25):
            log.append(upsert_ops([_item(1000 * (t + 1) + j)], content))

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    state = CatalogueState()
    state.follow(log, limit=7)
    assert len(state.items) == 100
