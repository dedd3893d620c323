"""`/openapi.json` is the contract: every status the API answers is documented with the body it carries."""

from __future__ import annotations

import pytest

from serving.ingress import api


@pytest.mark.parametrize(("path", "codes"), [
    ("/recommend", {"200", "400", "401", "413", "422", "500", "503"}),  # 401 when reads need a key
    ("/feedback", {"200", "400", "401", "413", "422", "429", "500", "503"}),
])
def test_every_answer_is_documented_with_its_body(path: str, codes: set[str]) -> None:
    spec = api.openapi()
    responses = spec["paths"][path]["post"]["responses"]
    assert set(responses) == codes
    for code in codes - {"200"}:
        schema = responses[code]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, code)
        assert responses[code]["description"], (path, code)
    body = spec["components"]["schemas"]["ErrorBody"]
    assert body["required"] == ["error"] and {"field", "event_ids"} <= set(body["properties"])


def test_the_documented_request_is_the_strict_one() -> None:
    """The body the route validates itself (`recommend_request`) is documented as its request body."""
    body = api.openapi()["paths"]["/recommend"]["post"]["requestBody"]
    assert body["required"]
    schema = body["content"]["application/json"]["schema"]
    assert schema["additionalProperties"] is False and schema["required"] == ["user_id"]
    props = schema["properties"]
    assert props["user_id"]["type"] == "integer" and props["user_id"]["maximum"] == 2**62
    assert props["include_copy"]["type"] == "boolean" and props["k"]["maximum"] == 100
