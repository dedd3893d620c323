"""The scheduled retrain closes its loop without `--force`: the gate compares like with like on newer data.

Real stack (Feast SQLite, Ray Train, MLflow SQLite), no serving graph. A weak champion (1 epoch) is in place;
feedback that follows the data's planted structure is logged; `recsys retrain` trains warm-started challengers
on the merged data, re-evaluates each champion on the challenger's validation split, and promotes; a second
cycle with honestly worse challengers (1 epoch from scratch) is refused with the reason. Both decisions record
the two numbers and the split's digest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _client(home: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{(home / 'mlflow.db').resolve()}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _log_feedback(home: Path, per_user: int, first_id: int) -> int:
    """Events continuing each user's history along the synthetic data's successor cycle (learnable signal)."""
    import pandas as pd

    from core.events import EventLog, FeedbackEvent
    from training.data.synthetic import successor_map

    inter = pd.read_parquet(home / "data" / "interactions.parquet").sort_values(["user_id", "timestamp", "item_id"])
    succ = successor_map()
    now = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1)
    log = EventLog(home / "events" / "events.db", 50)
    events, n = [], first_id
    for uid, g in inter.groupby("user_id"):
        seen, item = set(g["item_id"].tolist()), int(g["item_id"].iloc[-1])
        for _ in range(per_user):
            item = succ[item]
            if item in seen:
                break
            seen.add(item)
            events.append(FeedbackEvent(event_id=f"e{n}", user_id=int(uid), item_id=item, event_type="rate",
                                        value=4.0, timestamp=now + pd.Timedelta(seconds=n)))
            n += 1
    for i in range(0, len(events), 500):
        log.append(events[i : i + 500], lambda users: {})
    log.close()
    return n


def _decision(home: Path, model: str, version: str) -> dict[str, str]:
    return {k.removeprefix("promotion."): v for k, v in _client(home).get_model_version(model, version).tags.items()
            if k.startswith("promotion.")}


def _digest(home: Path) -> str:
    return json.loads((home / "data" / "manifest.json").read_text())["interactions_sha256"]


def test_scheduled_retrain_promotes_a_better_challenger_and_refuses_a_worse_one(feature_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(feature_home, home)
    for args in (("train", "retrieval", "--epochs", "1"), ("train", "ranking", "--epochs", "1"), ("promote", "all")):
        res = run_cli(home, *args, timeout=900)
        assert res.returncode == 0, f"{args}: {res.stderr[-3000:]}"  # a first promotion: floors, no comparison
    first = _digest(home)

    n = _log_feedback(home, per_user=3, first_id=0)
    res = run_cli(home, "retrain", timeout=900)  # no --force: the loop the chart's CronJob runs
    assert res.returncode == 0, res.stderr[-3000:]
    assert "retrain cycle: promoted" in res.stdout, res.stdout[-3000:]
    second = _digest(home)
    assert second != first  # the merged feedback changed the data: the old rule refused exactly this
    for model in ("recsys-retrieval", "recsys-ranker"):
        d = _decision(home, model, "2")
        assert d["decision"] == "promoted" and d["split_digest"] == second
        assert "re-evaluated on the challenger's validation split" in d["reasons"]
        assert "(champion v1 " in d["metric"]  # both numbers: the challenger's and the re-evaluated champion's

    _log_feedback(home, per_user=2, first_id=n)
    res = run_cli(home, "retrain", "--cold", "--retrieval-epochs", "1", "--ranking-epochs", "1", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]  # a refusal is a normal outcome of a scheduled cycle
    assert "retrain cycle: champions kept" in res.stdout, res.stdout[-3000:]
    d = _decision(home, "recsys-retrieval", "3")
    assert d["decision"] == "refused" and d["split_digest"] == _digest(home) != second
    assert "val_ndcg@10" in d["reasons"] and "< champion v2" in d["reasons"]
    c = _client(home)
    assert str(c.get_model_version_by_alias("recsys-retrieval", "champion").version) == "2"
    assert str(c.get_model_version_by_alias("recsys-ranker", "champion").version) == "2"
