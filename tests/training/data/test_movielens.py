"""MovieLens loaders on small fixture directories written here, plus the real ML-100K copy when present."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from core.errors import DataFormatError, DownloadError
from training.data import download
from training.data.movielens import ML100K_GENRES, download_movielens, load_movielens

REPO = Path(__file__).resolve().parents[3]
REAL_ML100K = [REPO / "shared/data/ml-100k", REPO / "../shared/data/ml-100k"]

GENRE = "unknown|0\nAction|1\nComédie|2\n\n"
ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://x/1|0|0|1\n"
    "2|Misérables, Les (1995)|01-Jan-1995||http://x/2|0|1|1\n"
    "3|No Year In Title|04-Feb-1971||http://x/3|0|1|0\n"
    "4|unknown||||1|0|0\n"
)
USER = "1|24|M|technician|85711\n2|53|F|other|94043\n3||||\n"
DATA = "2\t1\t3\t881250949\n1\t2\t5\t881250950\n1\t1\t4\t881250940\n3\t4\t1\t881250000\n"

RATINGS = (
    "userId,movieId,rating,timestamp\n"
    "1,10,4.0,964982703\n1,20,0.5,964981247\n2,10,5.0,964982224\n2,30,3.5,964983815\n"
)
MOVIES = (
    "movieId,title,genres\n"
    "10,Toy Story (1995),Adventure|Animation|Children\n"
    '20,"American President, The (1995)",Comedy|Drama|Romance\n'
    "30,Babylon 5,(no genres listed)\n"
)
TAGS = (
    "userId,movieId,tag,timestamp\n"
    "2,10,Pixar,1445714994\n3,10,pixar,1445714996\n3,10,fun,1445714997\n"
    '4,20,"politics, US",1445715000\n'
)


def write_ml100k(directory: Path, **overrides: str | None) -> Path:
    """An ML-100K layout; pass file=None to leave a file out or file=text to replace it."""
    files = {"u.genre": GENRE, "u.item": ITEM, "u.user": USER, "u.data": DATA} | overrides
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        if text is not None:
            (directory / name).write_bytes(text.encode("latin-1"))
    return directory


def write_ml_latest(directory: Path, **overrides: str | None) -> Path:
    files = {"ratings.csv": RATINGS, "movies.csv": MOVIES, "tags.csv": TAGS} | overrides
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        if text is not None:
            (directory / name).write_text(text, encoding="utf-8")
    return directory


def test_ml100k_tables_and_dtypes(tmp_path: Path) -> None:
    ds = load_movielens(write_ml100k(tmp_path / "ml-100k"))
    assert ds.name == "ml-100k"
    inter = ds.interactions
    assert dict(inter.dtypes.astype(str)) == {
        "user_id": "int64", "item_id": "int64", "rating": "float32", "event_type": "object",
        "timestamp": "datetime64[ns, UTC]",
    }
    # Rows come back ordered by user then time, whatever the file order.
    assert inter[["user_id", "item_id"]].values.tolist() == [[1, 1], [1, 2], [2, 1], [3, 4]]
    assert inter["rating"].tolist() == [4.0, 5.0, 3.0, 1.0]
    assert set(inter["event_type"]) == {"rate"}
    assert inter["timestamp"].iloc[0] == pd.Timestamp(881250940, unit="s", tz="UTC")


def test_ml100k_latin1_titles_genres_and_years(tmp_path: Path) -> None:
    items = load_movielens(write_ml100k(tmp_path / "d")).items.set_index("item_id")
    assert items.loc[2, "title"] == "Misérables, Les (1995)"
    # Flags map to u.genre's names, in u.genre's order (its latin-1 name included).
    assert items.loc[1, "genres"] == ["Comédie"]
    assert items.loc[2, "genres"] == ["Action", "Comédie"]
    assert items.loc[4, "genres"] == ["unknown"]
    assert items.loc[1, "tags"] == []
    assert str(items["year"].dtype) == "Int64"
    assert items.loc[1, "year"] == 1995  # from the title
    assert items.loc[3, "year"] == 1971  # no title year: from the release date
    assert pd.isna(items.loc[4, "year"])


def test_ml100k_without_u_genre_uses_standard_genre_list(tmp_path: Path) -> None:
    flags = ["0"] * len(ML100K_GENRES)
    flags[ML100K_GENRES.index("Film-Noir")] = "1"
    flags[ML100K_GENRES.index("Western")] = "1"
    item = "1|Noir Western (1950)|01-Jan-1950||url|" + "|".join(flags) + "\n"
    ds = load_movielens(
        write_ml100k(tmp_path / "d", **{"u.genre": None, "u.item": item, "u.data": "1\t1\t3\t881250949\n"})
    )
    assert ds.items["genres"].tolist() == [["Film-Noir", "Western"]]


def test_ml100k_users(tmp_path: Path) -> None:
    users = load_movielens(write_ml100k(tmp_path / "d")).users.set_index("user_id")
    assert str(users["age"].dtype) == "Int64"
    assert users.loc[1, "age"] == 24
    assert users.loc[2, "gender"] == "F"
    assert users.loc[1, "occupation"] == "technician"
    assert pd.isna(users.loc[3, "age"])
    assert users.loc[3, "gender"] is None


def test_ml_latest_tables(tmp_path: Path) -> None:
    ds = load_movielens(write_ml_latest(tmp_path / "ml-latest-small"))
    assert ds.name == "ml-latest-small"
    assert ds.interactions["rating"].tolist() == [0.5, 4.0, 5.0, 3.5]  # sorted by user, then time
    items = ds.items.set_index("item_id")
    assert items.loc[20, "title"] == "American President, The (1995)"
    assert items.loc[20, "year"] == 1995
    assert items.loc[10, "genres"] == ["Adventure", "Animation", "Children"]
    assert items.loc[30, "genres"] == []
    assert pd.isna(items.loc[30, "year"])
    # Tags: distinct across users, lowercased, sorted; none -> [].
    assert items.loc[10, "tags"] == ["fun", "pixar"]
    assert items.loc[20, "tags"] == ["politics, us"]
    assert items.loc[30, "tags"] == []
    users = ds.users
    assert users["user_id"].tolist() == [1, 2]
    assert users["age"].isna().all()
    assert users["gender"].tolist() == [None, None]


def test_ml_latest_tags_optional(tmp_path: Path) -> None:
    ds = load_movielens(write_ml_latest(tmp_path / "d", **{"tags.csv": None}))
    assert ds.items["tags"].tolist() == [[], [], []]


ML100K_BAD = [
    ("u.data", DATA + "1\t3\t4\n", 5, "expected 4"),
    ("u.data", "1\t1\t4\t881250940\nx\t1\t4\t881250940\n", 2, "not an integer"),
    ("u.data", "1\t1\t4\t881250940\n1\t2\t6\t881250940\n", 2, "outside"),
    ("u.data", "1\t1\t0\t881250940\n", 1, "outside"),
    ("u.data", "1\t1\t4\t881250940\n\n1\t2\t4\tyesterday\n", 3, "bad timestamp"),
    ("u.data", "1\t1\t4\t881250940\n1\t99\t4\t881250940\n", 2, "item id 99"),
    ("u.data", "1\t1\t4\t881250940\n7\t1\t4\t881250940\n", 2, "user id 7"),
    ("u.item", ITEM + "5|Short|01-Jan-1995||url|0|1\n", 5, "expected 8"),
    ("u.item", ITEM + "5|Flags (1990)|01-Jan-1990||url|0|2|0\n", 5, "genre flags"),
    ("u.item", ITEM + "1|Again (1990)|01-Jan-1990||url|0|1|0\n", 5, "appears twice"),
    ("u.item", ITEM + "5|Date (1990)|1990/01/01||url|0|1|0\n", 5, "release date"),
    ("u.user", USER + "4|old|M|writer|1\n", 4, "age"),
]
ML_LATEST_BAD = [
    ("ratings.csv", "userId,itemId,rating,timestamp\n1,10,4.0,964982703\n", 1, "expected header"),
    ("ratings.csv", RATINGS + "3,10,5.5,964982703\n", 6, "outside"),
    ("ratings.csv", RATINGS + "3,10,4.0\n", 6, "expected 4"),
    ("ratings.csv", RATINGS + "3,10,4.0,-5\n", 6, "bad timestamp"),
    ("ratings.csv", RATINGS + "3,40,4.0,964982703\n", 6, "item id 40"),
    ("movies.csv", MOVIES + "4x,Bad Id (2000),Drama\n", 5, "not an integer"),
    ("tags.csv", TAGS + "1,10,fun\n", 6, "expected 4"),
    ("tags.csv", TAGS + "1,99,fun,1445714997\n", 6, "movie id 99"),
]


@pytest.mark.parametrize(("file", "text", "line", "problem"), ML100K_BAD)
def test_ml100k_malformed_names_file_and_line(
    tmp_path: Path, file: str, text: str, line: int, problem: str
) -> None:
    directory = write_ml100k(tmp_path / "d", **{file: text})
    with pytest.raises(DataFormatError) as err:
        load_movielens(directory)
    message = str(err.value)
    assert file in message
    assert f"line {line}:" in message
    assert problem in message


@pytest.mark.parametrize(("file", "text", "line", "problem"), ML_LATEST_BAD)
def test_ml_latest_malformed_names_file_and_line(
    tmp_path: Path, file: str, text: str, line: int, problem: str
) -> None:
    directory = write_ml_latest(tmp_path / "d", **{file: text})
    with pytest.raises(DataFormatError) as err:
        load_movielens(directory)
    message = str(err.value)
    assert file in message
    assert f"line {line}:" in message
    assert problem in message


def test_ml_latest_bad_encoding_names_file(tmp_path: Path) -> None:
    directory = write_ml_latest(tmp_path / "d")
    (directory / "movies.csv").write_bytes(MOVIES.encode() + b"40,Caf\xe9 (1999),Drama\n")
    with pytest.raises(DataFormatError, match=r"movies\.csv.*utf-8"):
        load_movielens(directory)


def test_unknown_layout_names_what_it_looked_for(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataFormatError) as err:
        load_movielens(tmp_path)
    assert "u.data" in str(err.value)
    assert "ratings.csv" in str(err.value)


def test_missing_companion_file(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"u\.item"):
        load_movielens(write_ml100k(tmp_path / "d", **{"u.item": None}))
    with pytest.raises(DataFormatError, match=r"movies\.csv"):
        load_movielens(write_ml_latest(tmp_path / "e", **{"movies.csv": None}))


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="not a directory"):
        load_movielens(tmp_path / "absent")


def test_download_unreachable_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "http://127.0.0.1:9/x.zip"
    monkeypatch.setitem(download.URLS, "ml-100k", url)
    with pytest.raises(DownloadError) as err:
        download_movielens("ml-100k", tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"could not download ml-100k from {url}: ")
    assert "--source" in message
    assert not (tmp_path / "ml-100k").exists()


def _zip_of(directory: Path, out: Path) -> str:
    """Zip `directory` as GroupLens does (one top-level folder); returns the archive's md5."""
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(directory.iterdir()):
            zf.write(path, f"{directory.name}/{path.name}")
    return hashlib.md5(out.read_bytes()).hexdigest()


def test_download_verifies_and_unpacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "served" / "ml-100k.zip"
    archive.parent.mkdir()
    md5 = _zip_of(write_ml100k(tmp_path / "src" / "ml-100k"), archive)
    monkeypatch.setitem(download.URLS, "ml-100k", archive.as_uri())
    monkeypatch.setitem(download.MD5SUMS, "ml-100k", md5)
    dest = tmp_path / "cache"
    path = download_movielens("ml-100k", dest)
    assert path == dest / "ml-100k"
    assert len(load_movielens(path).interactions) == 4
    assert [p.name for p in dest.iterdir()] == ["ml-100k"]  # no temp leftovers
    # A complete copy is reused without touching the network.
    monkeypatch.setitem(download.URLS, "ml-100k", "http://127.0.0.1:9/x.zip")
    assert download_movielens("ml-100k", dest) == path


def test_download_checksum_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "ml-100k.zip"
    _zip_of(write_ml100k(tmp_path / "src" / "ml-100k"), archive)
    monkeypatch.setitem(download.URLS, "ml-100k", archive.as_uri())
    monkeypatch.setitem(download.MD5SUMS, "ml-100k", "0" * 32)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_movielens("ml-100k", tmp_path / "cache")
    assert not (tmp_path / "cache" / "ml-100k").exists()


def test_download_unpinned_uses_published_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "ml-latest-small.zip"
    md5 = _zip_of(write_ml_latest(tmp_path / "src" / "ml-latest-small"), archive)
    monkeypatch.setitem(download.URLS, "ml-latest-small", archive.as_uri())
    assert download.MD5SUMS["ml-latest-small"] is None
    (tmp_path / "ml-latest-small.zip.md5").write_text("1" * 32 + "  ml-latest-small.zip\n")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_movielens("ml-latest-small", tmp_path / "cache")
    (tmp_path / "ml-latest-small.zip.md5").write_text(f"MD5 (ml-latest-small.zip) = {md5}\n")
    path = download_movielens("ml-latest-small", tmp_path / "cache")
    assert len(load_movielens(path).items) == 3


@pytest.mark.skipif(not any(p.is_dir() for p in REAL_ML100K), reason="shared ML-100K copy not present")
def test_real_ml100k() -> None:
    path = next(p for p in REAL_ML100K if p.is_dir())
    ds = load_movielens(path)
    assert len(ds.interactions) == 100_000
    assert ds.interactions["user_id"].nunique() == len(ds.users) == 943
    assert ds.interactions["item_id"].nunique() == len(ds.items) == 1682
    assert set(ds.interactions["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    titles = ds.items.set_index("item_id")["title"]
    assert titles.loc[543] == "Misérables, Les (1995)"
