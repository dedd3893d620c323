"""Undecodable gRPC bytes: an empty request with a marker instead of grpc's UNKNOWN "Unexpected DecodeError"."""

from __future__ import annotations

import pickle

import pytest

from serving.grpc_api import InvalidRequest
from serving.grpc_servicer import add_servicer, lenient, malformed
from serving.ingress import decoded
from serving.proto import recsys_pb2 as pb


def test_garbage_bytes_become_a_marked_request_that_survives_pickling_and_is_refused() -> None:
    parse = lenient(pb.RecommendRequest)
    good = pb.RecommendRequest(user_id=7, k=3)
    assert parse(good.SerializeToString()) == good and not malformed(parse(good.SerializeToString()))
    bad = parse(b"\xff\xff\xff\x00garbage")
    assert malformed(bad) and malformed(pickle.loads(pickle.dumps(bad)))  # Serve pickles it between processes
    with pytest.raises(InvalidRequest, match="not a valid RecommendRequest"):
        decoded(bad)
    decoded(good)


def test_every_method_of_the_service_is_registered_with_a_lenient_deserializer() -> None:
    class Server:
        def add_generic_rpc_handlers(self, handlers):
            self.generic = handlers

        def add_registered_method_handlers(self, service, handlers):
            self.registered = (service, handlers)

    class Servicer:
        def __getattr__(self, name):
            return lambda request, context: None

    server = Server()
    add_servicer(Servicer(), server)
    service, handlers = server.registered
    assert service == "recsys.v1.Recommender"
    assert set(handlers) == {m.name for m in pb.DESCRIPTOR.services_by_name["Recommender"].methods}
    for handler in handlers.values():
        assert malformed(handler.request_deserializer(b"\xff\xff"))
