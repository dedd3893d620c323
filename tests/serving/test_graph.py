"""The live graph on the real local stack: tritonserver (own venv), Ray Serve on a local Ray head, Feast SQLite.

One module-scoped stack on test ports: train small models on the synthetic data, promote, export, serve.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import run_cli

PORTS = {"RECSYS_SERVE_HTTP_PORT": "28000", "RECSYS_TRITON_HTTP_PORT": "28100", "RECSYS_TRITON_GRPC_PORT": "28101",
         "RECSYS_TRITON_METRICS_PORT": "28102", "RECSYS_RAY_HEAD_PORT": "26379"}
URL = "http://127.0.0.1:28000"  # ports outside the local Ray worker range (10002-19999)


def post(path: str, body: bytes | dict, timeout: float = 30) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(URL + path, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def get(path: str) -> int:
    try:
        with urllib.request.urlopen(URL + path, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(scope="module")
def served(feature_home: Path, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("served") / "home"
    shutil.copytree(feature_home, home)
    try:  # the teardown runs even when start-up fails half-way (no stray Triton or Ray left behind)
        for args in (("train", "retrieval", "--epochs", "3"), ("train", "ranking", "--epochs", "1"),
                     ("promote", "all", "--force"), ("export",), ("serve",)):
            res = run_cli(home, *args, **PORTS)
            assert res.returncode == 0, f"{args}: {res.stderr[-3000:]}"
        yield home
    finally:
        run_cli(home, "serve", "--down", timeout=180, **PORTS)


def recommend(user_id: int, k: int = 10, include_copy: bool = False) -> dict:
    status, body = post("/recommend", {"user_id": user_id, "k": k, "include_copy": include_copy})
    assert status == 200, body
    return body


def test_known_user_gets_ranked_unseen_items_with_model_versions_and_copy(served, use_home):
    use_home(served)
    from recsys.feature_store import feature_store
    from recsys.settings import load_settings

    user = 1
    seen = set(feature_store(load_settings()).get_online_features(
        features=["user_profile:recent_items"], entity_rows=[{"user_id": user}]).to_dict()["recent_items"][0])
    body = recommend(user, k=10, include_copy=True)
    items = body["items"]
    assert len(items) == 10 and [it["rank"] for it in items] == list(range(1, 11))
    assert not body["degraded"]
    assert body["model_versions"] == {"retrieval": "1", "ranker": "1", "copy": "template"}
    assert not seen & {it["item_id"] for it in items}  # nothing the user already has
    assert len({it["item_id"] for it in items}) == 10  # no repeats
    scores = [it["score"] for it in items]
    assert all(0.0 <= s <= 1.0 for s in scores)  # ranker probabilities, not recall dot products
    assert all(it["copy_source"] == "template" and it["title"].split(" (")[0] in it["copy"] for it in items)
    assert {"features", "recall", "ranking", "copy", "total"} <= set(body["timings_ms"])


def test_recommendations_follow_the_users_latest_sequence(served, use_home):
    """Give user A user B's profile through the Feast push source: A's next answer becomes B's."""
    use_home(served)
    import pandas as pd
    from feast.data_source import PushMode

    from recsys.feature_store import feature_store
    from recsys.settings import load_settings

    a, b = 3, 4
    before_a, rec_b = recommend(a)["items"], recommend(b)["items"]
    assert [it["item_id"] for it in before_a] != [it["item_id"] for it in rec_b]
    store = feature_store(load_settings())
    fields = ["recent_items", "n_interactions", "mean_rating", "favourite_genres", "age", "gender", "occupation"]
    row = store.get_online_features(features=[f"user_profile:{f}" for f in fields],
                                    entity_rows=[{"user_id": b}]).to_dict()
    df = pd.DataFrame({**{f: row[f] for f in fields}, "user_id": [a],
                       "event_timestamp": [pd.Timestamp.now(tz="UTC")]})
    store.push("user_profile_push", df, to=PushMode.ONLINE)
    after_a = recommend(a)["items"]
    assert [it["item_id"] for it in after_a] == [it["item_id"] for it in rec_b]


def test_unknown_user_gets_cold_start_items_without_a_retrieval_version(served):
    body = recommend(987_654, k=5)
    assert len(body["items"]) == 5 and not body["degraded"]
    assert body["model_versions"]["retrieval"] == ""  # popularity channel, no user vector
    assert body["model_versions"]["ranker"] == "1"


@pytest.mark.parametrize(("body", "status", "needle"), [
    (b'{"user_id": 1,', 400, "malformed JSON"),
    ({"user_id": 1, "k": 0}, 422, "k:"),
    ({"user_id": 1, "k": 101}, 422, "k:"),
    ({"k": 5}, 422, "user_id"),
    ({"user_id": "abc"}, 422, "user_id"),
    ({"user_id": 1, "surprise": True}, 422, "surprise"),
    ({"user_id": 1, "context": {"x": "y" * 20_000}}, 413, "bytes"),
])
def test_bad_input_gets_a_clear_client_error(served, body, status, needle):
    got, payload = post("/recommend", body)
    assert got == status, payload
    assert needle in payload["error"] and "Traceback" not in payload["error"]


def test_triton_down_gives_flagged_recall_order_then_recovers(served):
    pid = int((served / "triton" / "tritonserver.pid").read_text())
    os.killpg(pid, signal.SIGKILL)
    time.sleep(0.5)
    body = recommend(5, k=5)
    assert len(body["items"]) == 5
    assert [d["stage"] for d in body["degraded"]] == ["ranking"]
    assert body["degraded"][0]["fallback"] == "recall order"
    assert body["model_versions"]["ranker"] == ""
    assert get("/readyz") == 503

    res = run_cli(served, "triton", "up", **PORTS)
    assert res.returncode == 0, res.stderr[-2000:]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = recommend(5, k=5)
        if not body["degraded"]:
            break
        time.sleep(0.5)
    assert not body["degraded"] and body["model_versions"]["ranker"] == "1"
    assert get("/readyz") == 200


def test_cli_recommend_prints_json_and_fails_in_one_line_without_a_graph(served):
    res = run_cli(served, "recommend", "1", "-k", "3", "--json", **PORTS)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(json.loads(res.stdout)["items"]) == 3
    down = run_cli(served, "recommend", "1", **{**PORTS, "RECSYS_SERVE_HTTP_PORT": "28999"})
    assert down.returncode == 1
    assert down.stderr.strip().count("\n") == 0 and "recsys serve" in down.stderr
