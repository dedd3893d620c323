"""The gRPC encoding of the API and the canary split: pure functions, no server."""

from __future__ import annotations

import pytest

from serving.contracts import Degradation, RecommendedItem, RecommendRequest, RecommendResponse
from serving.grpc_api import (
    InvalidRequest,
    feedback_from_proto,
    request_from_proto,
    request_to_proto,
    response_from_proto,
    response_to_proto,
)
from serving.proto import recsys_pb2 as pb
from serving.ranking import user_bucket
from training.export import MAX_BATCH, config_pbtxt, ranker_specs


def test_proto_defaults_mean_the_http_defaults() -> None:
    req = request_from_proto(pb.RecommendRequest(user_id=5))
    assert (req.k, req.include_copy, req.context) == (10, True, None)
    req = request_from_proto(pb.RecommendRequest(user_id=5, k=3, include_copy=False, context={"page": "home"}))
    assert (req.k, req.include_copy, req.context.page) == (3, False, "home")


@pytest.mark.parametrize(("fields", "field"), [
    ({"user_id": 1, "k": 101}, "k"), ({"user_id": -2}, "user_id"), ({"user_id": 2**62 + 1}, "user_id"),
    ({"user_id": 2**63 - 1}, "user_id"),
])
def test_invalid_proto_request_names_the_field(fields: dict, field: str) -> None:
    with pytest.raises(InvalidRequest, match=f"^{field}: "):
        request_from_proto(pb.RecommendRequest(**fields))


def test_response_survives_the_proto_round_trip() -> None:
    resp = RecommendResponse(
        request_id="r1", user_id=9,
        items=[RecommendedItem(item_id=50, title="Star Wars (1977)", score=0.75, rank=1, copy="Because…",
                               copy_source="template"),
               RecommendedItem(item_id=7, title="Twelve Monkeys (1995)", score=0.5, rank=2, copy_source="none")],
        model_versions={"retrieval": "3", "ranker": "4"}, timings_ms={"total": 12.5},
        degraded=[Degradation(stage="copy", reason="timeout after 300 ms", fallback="template copy")])
    assert response_from_proto(response_to_proto(resp)) == resp


def test_user_bucket_is_stable_and_splits_users_by_percent() -> None:
    buckets = [user_bucket(u) for u in range(20_000)]
    assert buckets == [user_bucket(u) for u in range(20_000)]  # no per-process salt (unlike hash())
    assert all(0 <= b < 100 for b in buckets)
    share = sum(b < 10 for b in buckets) / len(buckets)
    assert 0.09 < share < 0.11


def test_config_loads_exactly_the_routed_versions() -> None:
    cfg = {"genres": ["Action", "Drama"], "max_len": 20, "content_dim": 8}
    text = config_pbtxt("ranker", "python", *ranker_specs(cfg), MAX_BATCH["ranker"], ["3", "5"])
    assert "version_policy: { specific: { versions: [ 3, 5 ] } }" in text
    assert "latest" not in text
    # One request is one user's candidates: whole shapes, nothing for Triton to batch across requests.
    assert "max_batch_size: 0" in text and "dynamic_batching" not in text
    assert '{ name: "history" data_type: TYPE_INT64 dims: [ -1, 20 ] }' in text


def test_the_ranker_asks_for_tritons_response_cache_and_the_user_encoder_does_not(tmp_path) -> None:
    """The config `recsys export` writes and `recsys rollout` publishes to KServe (`write_config`): the ranker's
    answer depends on its request alone, so a repeat may come from Triton's cache."""
    from training.export import write_config

    cfg = {"genres": ["Action", "Drama"], "max_len": 20, "content_dim": 8, "d_model": 4}
    for name, cached in (("ranker", True), ("user_encoder", False)):
        (tmp_path / name).mkdir()
        write_config(tmp_path, name, cfg, "onnxruntime", ["2"])
        text = (tmp_path / name / "config.pbtxt").read_text()
        assert ("response_cache { enable: true }" in text) is cached, name
    plain = config_pbtxt("ranker", "python", *ranker_specs(cfg), MAX_BATCH["ranker"], ["3"])
    assert "response_cache" not in plain


@pytest.mark.parametrize("ms", [10**15, 2**62, -(2**62), 2**63 - 1, -(2**63)])
def test_a_feedback_timestamp_out_of_range_is_invalid_argument_naming_the_field(ms: int) -> None:
    """Not INTERNAL: the conversion is part of the validation (out of datetime's range, or beyond the 5-minute
    future / 30-year past the contract allows)."""
    ok = pb.FeedbackEvent(user_id=1, item_id=2, event_type="click")
    bad = pb.FeedbackEvent(user_id=1, item_id=2, event_type="click", timestamp_ms=ms)
    with pytest.raises(InvalidRequest, match=r"^events\.1\.timestamp"):
        feedback_from_proto(pb.FeedbackRequest(events=[ok, bad]))


@pytest.mark.parametrize(("body", "field"), [
    ({"user_id": "7"}, "user_id"), ({"user_id": True}, "user_id"), ({"user_id": 10.0}, "user_id"),
    ({"user_id": 2**63}, "user_id"), ({"user_id": 10**30}, "user_id"), ({"user_id": 1, "k": "5"}, "k"),
    ({"user_id": 1, "include_copy": 0}, "include_copy"), ({"user_id": 1, "include_copy": "false"}, "include_copy"),
])
def test_recommend_is_as_strict_as_feedback(body: dict, field: str) -> None:
    """The same bounds and types on every endpoint: no coercion of strings, booleans or floats to ids, ids ≤ 2^62
    (JSON, as HTTP parses it)."""
    import json

    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        RecommendRequest.model_validate_json(json.dumps(body))
    assert e.value.errors()[0]["loc"][0] == field
    assert RecommendRequest.model_validate_json('{"user_id": 7, "k": 5, "include_copy": false}').user_id == 7


def test_a_context_bigger_than_the_log_takes_is_refused_on_both_encodings() -> None:
    """A 5 MB gRPC context was accepted and logged whole; the contract bounds it (HTTP 422, INVALID_ARGUMENT)."""
    import json

    from pydantic import ValidationError

    with pytest.raises(InvalidRequest, match=r"^context\.blob: "):
        request_from_proto(pb.RecommendRequest(user_id=1, context={"blob": "x" * 5_000_000}))
    with pytest.raises(InvalidRequest, match=r"^context\.page: "):
        request_from_proto(pb.RecommendRequest(user_id=1, context={"page": "x" * 5_000_000}))
    with pytest.raises(ValidationError):
        RecommendRequest.model_validate_json(json.dumps({"user_id": 1, "context": {
            "exclude_items": list(range(1, 1002))}}))
    assert request_from_proto(pb.RecommendRequest(user_id=1, context={"page": "home"})).context.page == "home"


@pytest.mark.parametrize(("context", "field"), [
    ({"colour": "red"}, "context.colour"),  # unknown key, named
    ({"exclude_items": "5,x"}, "context.exclude_items.1"),
    ({"exclude_items": "0"}, "context.exclude_items.0"),
    ({"min_year": "nineteen"}, "context.min_year"),
    ({"min_year": "2000", "max_year": "1990"}, "context"),
])
def test_grpc_filters_are_the_http_contract_with_comma_separated_lists(context, field) -> None:
    with pytest.raises(InvalidRequest, match=rf"^{field.replace('.', chr(92) + '.')}: "):
        request_from_proto(pb.RecommendRequest(user_id=1, context=context))
    req = request_from_proto(pb.RecommendRequest(user_id=1, context={
        "exclude_items": "5, 7", "include_genres": "Comedy,Drama", "min_year": "1990", "page": "home"}))
    assert req.context.exclude_items == [5, 7] and req.context.include_genres == ["Comedy", "Drama"]
    assert req.context.min_year == 1990
    back = request_from_proto(request_to_proto(req))
    assert back == req  # round trip through the proto map


@pytest.mark.parametrize("context", [
    {"exclude_items": ["5"]}, {"exclude_items": [True]}, {"min_year": 1990.0}, {"include_genres": "Comedy"},
    {"nope": 1},
])
def test_http_filters_are_strict(context) -> None:
    import json

    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        RecommendRequest.model_validate_json(json.dumps({"user_id": 1, "context": context}))
    assert e.value.errors()[0]["loc"][0] == "context"
