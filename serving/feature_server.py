"""Feast feature server client: the same reads as the SDK, over HTTP (`feast serve`, the chart's
feature-server Deployment), so serving replicas need no registry or online-store credentials.

Selected by `feature_read: server` (settings); `FeatureReader` calls it exactly like a `FeatureStore`.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from core.errors import RecsysError
from core.http_json import HttpError, request_json


class FeatureServerError(RecsysError):
    """The feature server did not answer, or answered with an error."""


class OnlineResponse:
    """`to_dict()` in the SDK's shape: {feature name: [value per entity row]}."""

    def __init__(self, columns: dict[str, list[Any]]) -> None:
        self._columns = columns

    def to_dict(self) -> dict[str, list[Any]]:
        return self._columns


class FeatureServerClient:
    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            return request_json(f"{self.url}{path}", payload, self.timeout_s)
        except HttpError as e:
            if e.status:
                raise FeatureServerError(f"feature server {self.url}{path} answered {e.status}: {e.message}") from None
            raise FeatureServerError(f"no feature server at {self.url} ({e.message})") from None

    def get_online_features(self, features: list[str], entity_rows: list[dict[str, Any]]) -> OnlineResponse:
        """Rows → the server's columnar request; its columnar answer → {name: values} (NOT_FOUND → None)."""
        keys = list(entity_rows[0]) if entity_rows else []
        entities = {k: [row[k] for row in entity_rows] for k in keys}
        out = self._post("/get-online-features", {"features": features, "entities": entities})
        names = out["metadata"]["feature_names"]
        columns = {}
        for name, res in zip(names, out["results"], strict=True):
            columns[name] = [v if s == "PRESENT" or name in keys else None
                             for v, s in zip(res["values"], res.get("statuses") or ["PRESENT"] * len(res["values"]),
                                             strict=True)]
        return OnlineResponse(columns)

    def push(self, push_source_name: str, df, to=None) -> None:
        """The SDK's `store.push` over HTTP (`to`: a PushMode; online unless it says offline too)."""
        mode = "online_and_offline" if to is not None and "OFFLINE" in str(to).upper() else "online"
        frame = df.copy()
        for col in frame.columns:
            if str(frame[col].dtype).startswith("datetime64"):
                frame[col] = frame[col].map(lambda t: t.isoformat())
        self._post("/push", {"push_source_name": push_source_name, "df": frame.to_dict(orient="list"), "to": mode})


def defer_feast_torch() -> None:
    """Feast imports torch as it is imported (feast/torch_wrapper.py runs `_import_torch()` at module level) for
    its tensor conversions (`to_tensor`), which serving never calls: each replica reading through the SDK carried
    torch, ~150 MB, for nothing. Registered before feast is first imported, this stand-in imports torch only if
    `get_torch` is ever called (the three feast modules that use it import only that name)."""
    if "feast" in sys.modules or "feast.torch_wrapper" in sys.modules:
        return
    shim = types.ModuleType("feast.torch_wrapper", "recsys stand-in: torch imported on first use")

    def get_torch():
        import torch

        return torch

    shim.get_torch = get_torch
    sys.modules["feast.torch_wrapper"] = shim


def online_store(settings):
    """What serving reads and pushes through: the SDK on the store itself (`feature_read: sdk`, the local
    default) or the Feast feature server over HTTP (`feature_read: server`, the chart's default)."""
    if settings.feature_read == "server":
        return FeatureServerClient(settings.feature_server_url, settings.feature_server_timeout_s)
    defer_feast_torch()
    from core.feature_store import feature_store

    return feature_store(settings)
