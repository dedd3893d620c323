"""Clients of the running graph (the CLI's `recsys recommend`); errors become one readable line."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from recsys.errors import RecsysError
from recsys.settings import Settings
from serving.launcher import grpc_target, http_url


class ServingError(RecsysError):
    """The graph did not answer, or answered with an error."""


def recommend_http(settings: Settings, user_id: int, k: int = 10, include_copy: bool = True,
                   timeout: float = 10.0) -> dict[str, Any]:
    body = json.dumps({"user_id": user_id, "k": k, "include_copy": include_copy}).encode()
    url = f"{http_url(settings)}/recommend"
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("error", e.reason)
        except (ValueError, AttributeError):
            msg = e.reason
        raise ServingError(f"{url} answered {e.code}: {msg}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ServingError(f"no graph at {url} ({getattr(e, 'reason', e)}): start it with `recsys serve`") from None


def recommend_grpc(settings: Settings, user_id: int, k: int = 10, include_copy: bool = True,
                   timeout: float = 10.0) -> dict[str, Any]:
    """`Recommender.Recommend` through Serve's gRPC proxy; the same dict as `recommend_http`."""
    import grpc

    from serving.contracts import RecommendRequest
    from serving.grpc_api import request_to_proto, response_from_proto
    from serving.proto.recsys_pb2_grpc import RecommenderStub

    target = grpc_target(settings)
    try:
        req = RecommendRequest(user_id=user_id, k=k, include_copy=include_copy)
    except ValueError as e:
        raise ServingError(f"invalid request: {e}") from None
    with grpc.insecure_channel(target) as channel:
        try:
            resp = RecommenderStub(channel).Recommend(request_to_proto(req), timeout=timeout,
                                                      metadata=(("application", settings.serve_app_name),))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE and "unavailable:" not in (e.details() or ""):
                raise ServingError(f"no graph at grpc://{target} ({e.details()}): start it with `recsys serve`"
                                   ) from None
            raise ServingError(f"grpc://{target} answered {e.code().name}: {e.details()}") from None
    return response_from_proto(resp).model_dump(by_alias=True)
