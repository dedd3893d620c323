"""The catalogue's lifecycle against the running graph: how long an upserted item takes to be shown, and a retired
one to be gone, measured from the client's side (send → the answer that shows it)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
from rich.console import Console

from core.settings import Settings


def _send(url: str, key: str, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None,
                                 method=method, headers={"Content-Type": "application/json",
                                                         "Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def _items(url: str, user: int) -> list[int]:
    return [it["item_id"] for it in _send(url, "", "POST", "/recommend",
                                          {"user_id": user, "k": 10, "include_copy": False})["items"]]


def _until(check, limit_s: float) -> float | None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        if check():
            return (time.perf_counter() - t0) * 1e3
        time.sleep(0.02)
    return None


def catalogue_lifecycle(s: Settings, console: Console, users: list[int], limit_s: float = 15.0) -> dict[str, Any]:
    """Per user: upsert a new item whose content is the user's latest item's (POST /items), then ms until the
    user's `/recommend` shows it (the "new" channel and the exploration slot), then retire it (DELETE /items/{id})
    and ms until it is gone. One new item at a time, so each is its user's best new candidate. The first upsert
    loads the item encoder (its ONNX graph, `core.content_onnx`) in the Feedback replica: reported apart."""
    from core.endpoints import http_url
    from serving.features import FeatureReader

    url, key = http_url(s), (s.api_key or (s.api_keys or [""])[0])
    reader = FeatureReader(s)
    t0 = time.perf_counter()
    _send(url, key, "POST", "/items", {"items": [{"item_id": 8_000_000, "title": "Warm-up", "genres": []}]})
    first_ms = (time.perf_counter() - t0) * 1e3
    _send(url, key, "DELETE", "/items/8000000")
    ack, shown, gone, missed = [], [], [], 0
    for j, u in enumerate(users):
        latest = reader.user(u).recent_items[-1:]
        if not latest:
            continue
        row = reader.items(latest)
        item_id = 8_000_001 + j
        item = {"item_id": item_id, "title": f"{row.title[0]} Returns", "genres": row.genres[0], "text": "A sequel."}
        t0 = time.perf_counter()
        _send(url, key, "POST", "/items", {"items": [item]})
        ack.append((time.perf_counter() - t0) * 1e3)
        ms = _until(lambda u=u, i=item_id: i in _items(url, u), limit_s)
        if ms is None:
            missed += 1
        else:
            shown.append(ack[-1] + ms)
        t0 = time.perf_counter()
        _send(url, key, "DELETE", f"/items/{item_id}")
        ms = _until(lambda u=u, i=item_id: i not in _items(url, u), limit_s)
        gone.append((time.perf_counter() - t0) * 1e3 if ms is not None else float("nan"))

    def pct(v: list[float]) -> dict[str, float]:
        if not v:
            return {"p50_ms": float("nan"), "p99_ms": float("nan")}
        return {"p50_ms": round(float(np.nanpercentile(v, 50)), 1), "p99_ms": round(float(np.nanpercentile(v, 99)), 1)}

    out = {"items": len(ack), "first_upsert_ms": round(first_ms, 1), "upsert_ack": pct(ack), "to_shown": pct(shown),
           "not_shown_within_s": {"count": missed, "limit_s": limit_s}, "retire_to_gone": pct(gone)}
    console.print(f"catalogue: upsert ack p50 {out['upsert_ack']['p50_ms']} ms; shown p50 {out['to_shown']['p50_ms']}"
                  f" / p99 {out['to_shown']['p99_ms']} ms ({missed} of {len(ack)} not within {limit_s:g} s); retired "
                  f"→ gone p99 {out['retire_to_gone']['p99_ms']} ms; first upsert {first_ms:.0f} ms (model load)")
    return out
