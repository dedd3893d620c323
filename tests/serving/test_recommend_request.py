"""The /recommend body, validated by the route itself (`serving.ingress.recommend_request`), answers as FastAPI's
body dependency did: malformed JSON 400, an invalid field 422 naming it (the API's handler, `serving.failures`)."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.exceptions import RequestValidationError

from serving.ingress import api, recommend_request


def _answer(body: bytes) -> tuple[int, dict]:
    try:
        recommend_request(body)
    except RequestValidationError as e:
        handler = api.exception_handlers[RequestValidationError]
        resp = asyncio.run(handler(None, e))
        return resp.status_code, json.loads(resp.body)
    return 200, {}


def test_a_valid_body_is_the_strict_contract() -> None:
    req = recommend_request(b'{"user_id": 7, "k": 3, "include_copy": false, "context": {"exclude_items": [5]}}')
    assert (req.user_id, req.k, req.include_copy, req.context.exclude_items) == (7, 3, False, [5])


@pytest.mark.parametrize(("body", "status", "field"), [
    (b'{"user_id": 1,', 400, None),
    (b"", 400, None),
    (b'{"user_id": 1, "k": 0}', 422, "k"),
    (b'{"k": 5}', 422, "user_id"),
    (b'{"user_id": "7"}', 422, "user_id"),  # strict: a string is a client's type error, not an id
    (b'{"user_id": 1, "surprise": true}', 422, "surprise"),
    (b'[1, 2]', 422, "body"),
    (b'{"user_id": 1, "context": {"exclude_items": ["7"]}}', 422, "context.exclude_items.0"),
])
def test_bad_bodies_get_the_apis_client_errors(body: bytes, status: int, field: str | None) -> None:
    got, payload = _answer(body)
    assert got == status, payload
    assert payload.get("field") == field and "Traceback" not in payload["error"]
