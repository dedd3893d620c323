"""Clients of the running graph (the CLI's `recsys recommend`); errors become one readable line."""

from __future__ import annotations

from typing import Any

from core.endpoints import grpc_target, http_url
from core.errors import RecsysError
from core.http_json import HttpError, request_json
from core.settings import Settings


class ServingError(RecsysError):
    """The graph did not answer, or answered with an error."""


def recommend_http(settings: Settings, user_id: int, k: int = 10, include_copy: bool = True,
                   timeout: float = 10.0) -> dict[str, Any]:
    return _post(settings, "/recommend", {"user_id": user_id, "k": k, "include_copy": include_copy}, timeout,
                 _auth(settings, required=False))


def feedback_http(settings: Settings, events: list[dict[str, Any]], timeout: float = 10.0) -> dict[str, Any]:
    """POST /feedback with this machine's key (settings `api_key`)."""
    return _post(settings, "/feedback", {"events": events}, timeout, _auth(settings))


def _auth(settings: Settings, required: bool = True) -> dict[str, str]:
    """This machine's key as a header: writes need one; reads carry it when there is one (a deployment may
    require it: `read_requires_key`)."""
    if not settings.api_key:
        if not required:
            return {}
        raise ServingError("no API key: set RECSYS_API_KEY (or api_key in the settings file)")
    return {"Authorization": f"Bearer {settings.api_key}"}


OWN_UNAVAILABLE = ("overloaded:",)  # how the graph's own UNAVAILABLE answers begin (serving.admission)


def _grpc_metadata(settings: Settings, required: bool) -> list[tuple[str, str]]:
    """Serve's application name and the key (gRPC metadata keys are lower case)."""
    return [("application", settings.serve_app_name),
            *((k.lower(), v) for k, v in _auth(settings, required).items())]


def _post(settings: Settings, path: str, payload: dict[str, Any], timeout: float,
          headers: dict[str, str] | None = None) -> dict[str, Any]:
    url = f"{http_url(settings)}{path}"
    try:
        return request_json(url, payload, timeout, headers)
    except HttpError as e:
        if e.status:
            raise ServingError(f"{url} answered {e.status}: {e.message}") from None
        raise ServingError(f"no graph at {url} ({e.message}): start it with `recsys serve`") from None


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
                                                      metadata=_grpc_metadata(settings, required=False))
        except grpc.RpcError as e:
            raise grpc_failure(target, e) from None
    return response_from_proto(resp).model_dump(by_alias=True)


def grpc_failure(target: str, e) -> ServingError:
    """One line for a failed call: the graph's own UNAVAILABLE (a lost stage, or overloaded: retry later) as it
    said it; gRPC's own UNAVAILABLE (nothing listening) as "start it"."""
    import grpc

    details = e.details() or ""
    if e.code() == grpc.StatusCode.UNAVAILABLE and not details.startswith(OWN_UNAVAILABLE) \
            and "unavailable:" not in details:
        return ServingError(f"no graph at grpc://{target} ({details}): start it with `recsys serve`")
    return ServingError(f"grpc://{target} answered {e.code().name}: {details}")


def feedback_grpc(settings: Settings, events: list[dict[str, Any]], timeout: float = 10.0) -> dict[str, Any]:
    """`Recommender.Feedback` with the key in `authorization` metadata; the same dict as `feedback_http`."""
    import grpc

    from serving.proto import recsys_pb2 as pb
    from serving.proto.recsys_pb2_grpc import RecommenderStub

    target = grpc_target(settings)
    metadata = _grpc_metadata(settings, required=True)
    msg = pb.FeedbackRequest(events=[pb.FeedbackEvent(**e) for e in events])
    with grpc.insecure_channel(target) as channel:
        try:
            resp = RecommenderStub(channel).Feedback(msg, timeout=timeout, metadata=metadata)
        except grpc.RpcError as e:
            raise ServingError(f"grpc://{target} answered {e.code().name}: {e.details()}") from None
    out = {"accepted": resp.accepted, "duplicates": resp.duplicates, "event_ids": list(resp.event_ids),
           "pushed": resp.pushed}
    return {**out, "push_error": resp.push_error} if resp.push_error else out
