"""The gRPC face of the API (`serving/proto/recsys.proto`): proto ⇄ the same pydantic contracts as HTTP.

One contract, two encodings: the ingress validates a gRPC request with `RecommendRequest` exactly as it
validates JSON, so the two APIs cannot drift; a validation error names the field, as HTTP 422 does.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import ValidationError

from core.catalogue import CatalogueItem, parse_items
from core.errors import DataFormatError
from core.events import FeedbackBatch
from serving.contracts import Degradation, RecommendedItem, RecommendRequest, RecommendResponse
from serving.proto import recsys_pb2 as pb

SERVICER = "serving.grpc_servicer.add_servicer"  # Serve's grpc_servicer_functions (lenient request decoding)


class InvalidRequest(ValueError):
    """A gRPC request that fails the contract; the message names the field (→ INVALID_ARGUMENT)."""


def first_error(errors: list) -> tuple[str, str]:
    """(field, "field: message") of the first validation error; shared by HTTP 422 and INVALID_ARGUMENT."""
    first = errors[0] if errors else {}
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return field, f"{field}: {first.get('msg', 'invalid')}"


LIST_KEYS = {"exclude_items": int, "include_genres": str, "exclude_genres": str}  # comma-separated in gRPC
INT_KEYS = ("min_year", "max_year")


def context_from_strings(raw: dict[str, str]) -> dict[str, object]:
    """gRPC's `map<string, string>` context → the contract's types: lists comma-separated, years as digits.
    A value that does not convert stays a string, so the contract refuses it naming the key; unknown keys pass
    through to be refused by name too."""
    out: dict[str, object] = {}
    for key, value in raw.items():
        if key in LIST_KEYS:
            parts = [p.strip() for p in value.split(",") if p.strip()]
            out[key] = [int(p) if LIST_KEYS[key] is int and p.lstrip("-").isdigit() else p for p in parts]
        elif key in INT_KEYS:
            out[key] = int(value) if value.strip().lstrip("-").isdigit() else value
        else:
            out[key] = value
    return out


def context_to_strings(ctx) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (ctx.model_dump(exclude_defaults=True) if ctx is not None else {}).items():
        out[key] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return out


def request_from_proto(msg: pb.RecommendRequest) -> RecommendRequest:
    """Proto3 has no 'unset' for scalars: k = 0 means the default (10), an unset include_copy means true."""
    try:
        return RecommendRequest(user_id=msg.user_id, k=msg.k or 10,
                                include_copy=msg.include_copy if msg.HasField("include_copy") else True,
                                context=context_from_strings(dict(msg.context)) or None)
    except ValidationError as e:
        raise InvalidRequest(first_error(e.errors())[1]) from None


def request_to_proto(req: RecommendRequest) -> pb.RecommendRequest:
    return pb.RecommendRequest(user_id=req.user_id, k=req.k, include_copy=req.include_copy,
                               context=context_to_strings(req.context))


def response_to_proto(resp: RecommendResponse) -> pb.RecommendResponse:
    items = [pb.Item(item_id=it.item_id, title=it.title, score=it.score, rank=it.rank, copy=it.copy_text or "",
                     copy_source=it.copy_source, channel=it.channel, explore=it.explore,
                     score_parts=dict(it.score_parts)) for it in resp.items]
    degraded = [pb.Degradation(stage=d.stage, reason=d.reason, fallback=d.fallback) for d in resp.degraded]
    return pb.RecommendResponse(request_id=resp.request_id, user_id=resp.user_id, items=items,
                                model_versions=dict(resp.model_versions), timings_ms=dict(resp.timings_ms),
                                degraded=degraded)


def response_from_proto(msg: pb.RecommendResponse) -> RecommendResponse:
    items = [RecommendedItem(item_id=it.item_id, title=it.title, score=it.score, rank=it.rank,
                             copy=it.copy or None, copy_source=it.copy_source or "none",
                             channel=it.channel or "ann", explore=it.explore, score_parts=dict(it.score_parts))
             for it in msg.items]
    degraded = [Degradation(stage=d.stage, reason=d.reason, fallback=d.fallback) for d in msg.degraded]
    return RecommendResponse(request_id=msg.request_id, user_id=msg.user_id, items=items,
                             model_versions=dict(msg.model_versions), timings_ms=dict(msg.timings_ms),
                             degraded=degraded)


def _timestamp(ms: int, j: int) -> datetime | None:
    """timestamp_ms → datetime; 0 is 'absent' (server time). One outside what datetime holds (±2^62, 10^15 ms
    is year 33658) is the client's error, named, like any other invalid field."""
    if not ms:
        return None
    try:
        return datetime.fromtimestamp(ms / 1e3, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidRequest(f"events.{j}.timestamp_ms: {ms} is outside the representable range") from None


def feedback_from_proto(msg: pb.FeedbackRequest) -> FeedbackBatch:
    """Proto3 defaults mean 'absent': empty event_id/request_id, timestamp_ms 0 → server time."""
    events = [{"event_id": e.event_id or None, "user_id": e.user_id, "item_id": e.item_id,
               "event_type": e.event_type, "value": e.value if e.HasField("value") else None,
               "timestamp": _timestamp(e.timestamp_ms, j), "request_id": e.request_id or None}
              for j, e in enumerate(msg.events)]
    try:
        return FeedbackBatch.model_validate({"events": events})
    except ValidationError as e:
        raise InvalidRequest(first_error(e.errors())[1]) from None


def items_from_proto(msg: pb.UpsertItemsRequest) -> list[CatalogueItem]:
    """Catalogue items, validated as the HTTP body and a file are (one contract): unset year → unknown."""
    rows = [{"item_id": it.item_id, "title": it.title, "genres": list(it.genres),
             "year": it.year if it.HasField("year") else None, "text": it.text} for it in msg.items]
    if not rows:
        raise InvalidRequest("items: at least one item")
    try:
        return parse_items(rows, where="items")
    except DataFormatError as e:
        raise InvalidRequest(str(e)) from None
