"""Serve's `grpc_servicer_functions` entry for `recsys.v1.Recommender`: the generated registration, with request
deserializers that never raise.

grpc's asyncio server runs the request deserializer before the handler and answers its exception as UNKNOWN
"Unexpected DecodeError: …" (grpc/_cython/_cygrpc/aio/server.pyx.pxi, `_handle_exceptions`); Serve keeps each
method's deserializer when it reroutes the handlers (ray/serve/_private/grpc_util.py `_override_method_handler`).
Here bytes that do not decode become an empty request carrying one unknown field, which travels with the message
(pickled between Serve's processes) and which every method answers as INVALID_ARGUMENT (`serving.ingress`).
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from serving.proto import recsys_pb2 as pb

SERVICE = "recsys.v1.Recommender"
MALFORMED_FIELD = 536_870_911  # the largest field number: no schema of ours will ever use it


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


_MARK = _varint(MALFORMED_FIELD << 3) + _varint(1)  # the marker field, wire type varint, value 1


def lenient(message_type: type[Message]) -> Callable[[bytes], Message]:
    def parse(data: bytes) -> Message:
        try:
            return message_type.FromString(data)
        except DecodeError:
            return message_type.FromString(_MARK)

    return parse


def malformed(request: Message) -> bool:
    """Whether `request` stands for bytes that did not decode (see the module note)."""
    return any(f.field_number == MALFORMED_FIELD for f in UnknownFieldSet(request))


def add_servicer(servicer, server) -> None:
    """What `recsys_pb2_grpc.add_RecommenderServicer_to_server` does, for every method of the service."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["Recommender"].methods:
        request, response = getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name), request_deserializer=lenient(request),
            response_serializer=response.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
