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
