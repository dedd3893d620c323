"""Where the running parts answer, derived from the settings: the Ray cluster (and attaching to it), the HTTP
and gRPC addresses of the Serve application. Training attaches to the same Ray the launcher starts."""

from __future__ import annotations

import os
import socket

from core.settings import Settings


def ray_address(settings: Settings) -> str:
    return settings.ray_address or f"127.0.0.1:{settings.ray_head_port}"


def port_open(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray keeps a 127.0.0.1 node address (single-node only)


def loopback_ray() -> None:
    """Keep this process's local Ray on 127.0.0.1. Ray replaces a loopback `_node_ip_address` with the machine's
    external address unless multi-node clustering is off (ray/_private/services.py `resolve_ip_for_localhost`,
    ray/_private/ray_constants.py `ENABLE_RAY_CLUSTER`, read at import from this variable); the GCS, raylet,
    workers, agents and the Ray Client server then bind that address. The constant is set here too in case ray
    was imported before (it is looked up at call time)."""
    os.environ[LOOPBACK_ENV] = "0"
    import ray._private.ray_constants as constants

    constants.ENABLE_RAY_CLUSTER = False


def connect(settings: Settings) -> bool:
    """Connect this process to the serving Ray cluster; False if none answers.

    Locally the GCS port is probed first: `ray.init(address=…)` with nothing listening retries for minutes.
    """
    import ray

    if ray.is_initialized():
        return True
    if not settings.ray_address and not port_open(ray_address(settings)):
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not settings.ray_address:
        loopback_ray()
    kwargs = {} if settings.ray_address else {"_node_ip_address": "127.0.0.1"}
    try:
        ray.init(address=ray_address(settings), log_to_driver=False, configure_logging=False, **kwargs)
    except (ConnectionError, RuntimeError):
        return False
    return True


def _client_host(settings: Settings) -> str:
    return "127.0.0.1" if settings.serve_host in ("0.0.0.0", "") else settings.serve_host


def http_url(settings: Settings) -> str:
    return f"http://{_client_host(settings)}:{settings.serve_http_port}"


def grpc_target(settings: Settings) -> str:
    return f"{_client_host(settings)}:{settings.serve_grpc_port}"
