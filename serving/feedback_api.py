"""The feedback routes' request and answer: a JSON body parsed into a batch (400 malformed, 422 naming the
field), unknown items refused before anything is stored, and the acknowledgement in HTTP and gRPC form."""

from __future__ import annotations

import json

import grpc
from pydantic import ValidationError

from core.events import FeedbackBatch, FeedbackEvent
from serving.failures import Refusal
from serving.grpc_api import first_error
from serving.proto import recsys_pb2 as pb


def parse_feedback(raw: bytes) -> FeedbackBatch:
    """One event or {"events": [...]} → a batch; malformed JSON 400, invalid fields 422 naming the field."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Refusal(400, grpc.StatusCode.INVALID_ARGUMENT, "malformed JSON body") from None
    except RecursionError:  # "[[[[…" within the size limit: the decoder gives up, the client gets a 400
        raise Refusal(400, grpc.StatusCode.INVALID_ARGUMENT, "malformed JSON body (nested too deeply)") from None
    if isinstance(body, dict) and "events" not in body:
        body = {"events": [body]}
    try:
        return FeedbackBatch.model_validate(body)
    except ValidationError as e:
        field, msg = first_error(e.errors())
        raise Refusal(422, grpc.StatusCode.INVALID_ARGUMENT, msg, field) from None


def identified(batch: FeedbackBatch, now: float) -> list[FeedbackEvent]:
    """Every event with its stored id before anything is stored (the client's, its content hash, or a generated
    one with the server's time): an answer that cannot confirm the commit (a 503 after the stage's timeout, when
    the write may still land) returns these ids, and a retry carrying them is stored at most once."""
    return [e.stamped(now) for e in batch.events]


def unavailable_json(events: list[FeedbackEvent], reason: str) -> dict:
    """503 body: what failed, and the ids to retry with (the events may or may not have been stored)."""
    return {"error": f"feedback unavailable: {reason}", "event_ids": [e.key() for e in events],
            "retry": "send the same events again with these event_ids: each is stored at most once"}


def refuse_unknown_items(batch: FeedbackBatch, known_items: set[int]) -> None:
    """422 naming the first event whose item the catalogue does not have."""
    unknown = [j for j, e in enumerate(batch.events) if e.item_id not in known_items]
    if unknown:
        j = unknown[0]
        raise Refusal(422, grpc.StatusCode.INVALID_ARGUMENT, f"unknown item {batch.events[j].item_id}",
                      f"events.{j}.item_id")


def ack_json(result: dict) -> dict:
    return {"accepted": len(result["accepted"]), "duplicates": len(result["duplicates"]),
            "event_ids": result["accepted"] + result["duplicates"], "pushed": result["pushed"],
            **({"push_error": result["push_error"]} if result["push_error"] else {})}


def ack_proto(result: dict) -> pb.FeedbackResponse:
    return pb.FeedbackResponse(accepted=len(result["accepted"]), duplicates=len(result["duplicates"]),
                               event_ids=result["accepted"] + result["duplicates"], pushed=result["pushed"],
                               push_error=result["push_error"] or "")
