"""The gRPC encoding of the API and the canary split: pure functions, no server."""

from __future__ import annotations

import pytest

from serving.contracts import Degradation, RecommendedItem, RecommendResponse
from serving.grpc_api import InvalidRequest, request_from_proto, response_from_proto, response_to_proto
from serving.proto import recsys_pb2 as pb
from serving.ranking import user_bucket
from training.export import MAX_BATCH, config_pbtxt, ranker_specs


def test_proto_defaults_mean_the_http_defaults() -> None:
    req = request_from_proto(pb.RecommendRequest(user_id=5))
    assert (req.k, req.include_copy, req.context) == (10, True, None)
    req = request_from_proto(pb.RecommendRequest(user_id=5, k=3, include_copy=False, context={"page": "home"}))
    assert (req.k, req.include_copy, req.context) == (3, False, {"page": "home"})


@pytest.mark.parametrize(("fields", "field"), [({"user_id": 1, "k": 101}, "k"), ({"user_id": -2}, "user_id")])
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
