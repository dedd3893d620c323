"""The feedback routes' parsing: every malformed or invalid body is a client error with a message."""

from __future__ import annotations

import pytest

from serving.failures import Refusal
from serving.feedback_api import parse_feedback
from tests.serving.fuzz_feedback import bodies


def test_fuzzed_bodies_are_each_refused_with_a_client_error_and_a_message():
    """2,000 seeded bodies invalid by construction (tests/serving/fuzz_feedback.py): the parser turns every one
    into a 400/422 with a message; no other exception (a 500 for the client) and no batch escapes."""
    codes: dict[int, int] = {}
    for raw in bodies(2000, user=7, item=2):
        with pytest.raises(Refusal) as r:
            parse_feedback(raw)
        assert r.value.http in (400, 422) and r.value.message, raw[:120]
        codes[r.value.http] = codes.get(r.value.http, 0) + 1
    assert codes[400] > 50 and codes[422] > 1000  # both kinds of refusal were exercised


def test_every_event_has_its_stored_id_before_the_write_and_a_503_lists_them() -> None:
    from core.events import FeedbackBatch
    from serving.feedback_api import identified, unavailable_json

    batch = FeedbackBatch.model_validate({"events": [
        {"user_id": 1, "item_id": 2, "event_type": "click"},  # server time and a generated id
        {"user_id": 1, "item_id": 3, "event_type": "click", "event_id": "c-1"},  # the client's id
        {"user_id": 1, "item_id": 4, "event_type": "click", "timestamp": "2026-11-30T10:00:00Z"}]})  # content hash
    events = identified(batch, 1_764_000_000.0)
    ids = [e.key() for e in events]
    assert ids[0].startswith("g:") and ids[1] == "c-1" and ids[2].startswith("h:")
    assert [e.key() for e in identified(FeedbackBatch(events=events), 0.0)] == ids  # stable: a retry keeps them
    body = unavailable_json(events, "timeout after 3000 ms")
    assert body["event_ids"] == ids and body["error"] == "feedback unavailable: timeout after 3000 ms"
