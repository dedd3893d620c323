"""The catalogue through the CLI on both event-log backends: upsert and retire, then the next data load and
feature rebuild carry the new item (real Feast, SQLite or Redis log, the sentence-transformers model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # the CLI loads the embedding model; a feature rebuild (~1 min per backend)


@pytest.fixture
def home(log_home: Path) -> Path:
    return log_home  # conftest: a prepared home with the event log on each backend (`log_env`)


def test_an_upserted_item_is_online_now_and_in_the_next_data_and_features(home: Path, log_env, tmp_path) -> None:
    from core.catalogue import read_state
    from core.settings import load_settings
    from serving.features import FeatureReader
    from training.data.schema import load_dataset
    from training.datasets import prepare

    s = load_settings()
    reader = FeatureReader(s)
    existing = int(prepare(s).item_ids[1])
    before = reader.items([existing])
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"item_id": 777_001, "title": "A New Film (2026)", "genres": ["Genre1"],
                                 "year": 2026, "text": "quiet and slow"}) + "\n" +
                     json.dumps({"item_id": existing, "title": "Renamed Film",
                                 "genres": list(before.genres[0])}) + "\n")
    res = run_cli(home, "items", "upsert", str(items), "--json", **log_env)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["new"] == [777_001] and out["updated"] == [existing]
    rows = reader.items([777_001, existing])
    assert rows.found.all() and rows.title == ["A New Film (2026)", "Renamed Film"]
    assert rows.popularity[1] == before.popularity[0]  # an existing item keeps its statistics
    assert abs(float(rows.content[0] @ rows.content[0]) - 1.0) < 1e-4  # a real, normalised embedding
    res = run_cli(home, "items", "retire", "999999999", **log_env)
    assert res.returncode == 1 and "unknown item ids" in res.stderr and "Traceback" not in res.stderr
    assert json.loads(run_cli(home, "items", "retire", str(existing), "--json", **log_env).stdout)["retired"] == [
        existing]
    state = read_state(s)
    assert set(state.items) == {777_001} and state.retired == {existing}

    prepared = prepare(s)  # the next data load merges the catalogue
    assert 777_001 in prepared.item_ids and existing in prepared.item_ids  # retired items keep their history
    titles = load_dataset(s.data_dir).items.set_index("item_id")["title"]
    assert titles[777_001] == "A New Film (2026)"
    res = run_cli(home, "features", **log_env)  # the rebuild: its row now, with the rebuilt statistics
    assert res.returncode == 0, res.stderr[-2000:]
    assert FeatureReader(load_settings()).items([777_001]).found.all()
