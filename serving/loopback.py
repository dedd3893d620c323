"""On a laptop, a replica's own gRPC servers listen on 127.0.0.1, as the rest of the local stack does.

Serve binds a replica's direct-ingress gRPC server and its inter-deployment gRPC server to `[::]` with no setting
to change it (ray/serve/_private/grpc_util.py `start_grpc_server`: `add_grpc_address(server, f"[::]:{port}")`;
ray/serve/_private/replica.py `_on_initialized`: `add_port_to_grpc_server(self._server, "[::]:0")`). Both are
started after the replica's constructor runs and look the helper up then (the first through
`ray.serve._private.default_impl` at call time, the second as `replica`'s module global), so a constructor can
point them at loopback. Only where the local launcher made Ray single-node and loopback
(`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, `core.endpoints.loopback_ray`); in a cluster pods must reach each other
and nothing changes. Peers reach these servers at the node's address, which is then 127.0.0.1.
"""

from __future__ import annotations

import os

from core.endpoints import LOOPBACK_ENV

_done = False


def on_loopback(address: str) -> str:
    """"[::]:P" → "127.0.0.1:P"; any other address as given."""
    return "127.0.0.1:" + address.removeprefix("[::]:") if address.startswith("[::]:") else address


def bind_loopback() -> bool:
    """Patch this replica process once; True when it did (the local stack), False in a cluster."""
    global _done
    if os.environ.get(LOOPBACK_ENV) != "0":
        return False
    if not _done:
        from ray.serve._private import default_impl, replica

        add_address, add_port = default_impl.add_grpc_address, replica.add_port_to_grpc_server
        default_impl.add_grpc_address = lambda server, address: add_address(server, on_loopback(address))
        replica.add_port_to_grpc_server = lambda server, address: add_port(server, on_loopback(address))
        _done = True
    return True
