"""Online results per model version (impressions joined with feedback on request_id) beside offline metrics.

Click-through: an impression with at least one positive event (click, rate, favorite, purchase) on an item it
showed, carrying that impression's request_id. Conversion: the same with a purchase. Views are not clicks.
Events without a request_id (organic activity) feed the profile and training, not these rates.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from core.names import RANKER_MODEL, RETRIEVAL_MODEL

POSITIVE = {"click", "rate", "favorite", "purchase"}
MODELS = {"ranker": RANKER_MODEL, "retrieval": RETRIEVAL_MODEL}  # impression key → registered model
OFFLINE = ("val_hr_at_10", "test_hr_at_10", "test_ndcg_at_10")


def online_rates(impressions: Iterable[dict], events: Iterable[dict]) -> list[dict[str, Any]]:
    """One row per (model, version): impressions, click-throughs, CTR, conversions, conversion rate."""
    by_request: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        if e.get("request_id"):
            by_request[e["request_id"]].append(e)
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for imp in impressions:
        shown = set(imp["items"])
        hits = [e for e in by_request.get(imp["request_id"], []) if e["item_id"] in shown]
        clicked = any(e["event_type"] in POSITIVE for e in hits)
        bought = any(e["event_type"] == "purchase" for e in hits)
        for model, version in imp["model_versions"].items():
            if model in MODELS:
                c = counts[(model, version or "none")]
                c[0] += 1
                c[1] += clicked
                c[2] += bought
    return [{"model": m, "version": v, "impressions": n, "clicks": k, "ctr": round(k / n, 4) if n else 0.0,
             "conversions": b, "conversion_rate": round(b / n, 4) if n else 0.0}
            for (m, v), (n, k, b) in sorted(counts.items())]


def with_offline(rows: list[dict[str, Any]], tracking_uri: str) -> list[dict[str, Any]]:
    """Add each version's offline metrics from its MLflow run (blank where the version is not registered)."""
    from mlflow.exceptions import MlflowException

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    out = []
    for r in rows:
        metrics: dict[str, float] = {}
        if r["version"] != "none":
            try:
                mv = client.get_model_version(MODELS[r["model"]], r["version"])
                metrics = client.get_run(mv.run_id).data.metrics
            except MlflowException:
                pass
        out.append({**r, **{k: round(metrics[k], 4) for k in OFFLINE if k in metrics}})
    return out
