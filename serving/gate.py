"""The API's gate: which keys may read and write, the body size limit, write admission (key + rate) and read
admission (load: `serving.admission`).

The ASGI `Gate` answers 413, 401 and 503 (overloaded) before FastAPI parses a body; `admit` is the writes' check
(401 / 429).
"""

from __future__ import annotations

import functools
import hmac

import grpc
from fastapi.responses import JSONResponse

from core.settings import Settings, load_settings
from serving.admission import Admission
from serving.failures import Refusal
from serving.ratelimit import RateLimiter, retry_after


@functools.cache
def replica_settings() -> Settings:
    """This replica's settings, read once (not per request); the keys file is re-read at each check."""
    return load_settings()


@functools.cache
def replica_admission() -> Admission:
    """The replica's one read admission, shared by HTTP (`Gate`) and gRPC (`Ingress.Recommend`)."""
    from ray.util import metrics

    s = replica_settings()
    refused = metrics.Counter("recsys_overload_refused_total", "Reads refused by admission control (503).")
    return Admission(s.admission_limit, s.admission_queue, s.admission_wait_ms, on_refuse=refused.inc)


CATALOGUE_PATH = "/items"  # catalogue upserts: many items with free text, so a larger body limit
READ_PATHS = frozenset({"/recommend"})  # what `read_requires_key` closes; health and readiness stay open


def authorized(header: str | None, keys: list[str]) -> bool:
    """Bearer key check in constant time; no keys configured → nothing is authorized (writes are closed)."""
    scheme, _, key = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        return False
    return any(hmac.compare_digest(key.encode(), k.encode()) for k in keys)


def read_refused(authorization: str | None) -> str | None:
    """Why a read is refused (read_requires_key on and no valid key), or None when it may go on."""
    s = replica_settings()
    if not s.read_requires_key or authorized(authorization, s.accepted_keys()):
        return None
    return "missing or invalid API key (Authorization: Bearer KEY): this deployment requires one for reads"


async def read_bounded(receive, limit: int) -> bytes | None:
    """A body sent without Content-Length (chunked), read up to `limit` bytes; None as soon as it goes over, so an
    oversized stream is neither buffered whole nor parsed."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return bytes(body)  # the client went away: the app sees an empty body and answers nobody
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body", False):
            return bytes(body)


class Gate:
    """413 when the body is over the limit: at once from Content-Length, or while a chunked body streams in; 401
    on a read without a required key; 503 with Retry-After on a read the replica has no room for (admission).

    Pure ASGI, so both answer before FastAPI parses (a bad body without a key is a 401, not a 422), and
    Starlette's `@app.middleware("http")` would wrap every request in an extra task and stream.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            size = headers.get(b"content-length", b"")
            s = replica_settings()
            limit = s.max_catalogue_request_bytes if scope["path"] == CATALOGUE_PATH else s.max_request_bytes
            if size.isdigit() and int(size) > limit:
                await JSONResponse({"error": f"request body over {limit} bytes"}, status_code=413)(scope, receive, send)
                return
            if scope["path"] in READ_PATHS:
                refused = read_refused(headers.get(b"authorization", b"").decode("latin-1") or None)
                if refused:
                    await JSONResponse({"error": refused}, status_code=401,
                                       headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                    return
            if not size.isdigit() and scope.get("method") in ("POST", "PUT", "PATCH"):
                body = await read_bounded(receive, limit)
                if body is None:
                    await JSONResponse({"error": f"request body over {limit} bytes"}, status_code=413)(
                        scope, receive, send)
                    return
                receive = _replay(body, receive)
            if scope["path"] in READ_PATHS:
                admission = replica_admission()
                try:
                    await admission.acquire()
                except Refusal as r:
                    await r.response()(scope, receive, send)
                    return
                try:
                    await self.app(scope, receive, send)
                finally:
                    admission.release()
                return
        await self.app(scope, receive, send)


def _replay(body: bytes, receive):
    """The buffered body as one message, then the connection's own messages (a disconnect, say)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> dict:
        return pending.pop() if pending else await receive()

    return replayed


def admit_read(authorization: str | None) -> None:
    """A Refusal (401) when reads need a key and this one is not valid (the gRPC path; HTTP has the `Gate`)."""
    refused = read_refused(authorization)
    if refused:
        raise Refusal(401, grpc.StatusCode.UNAUTHENTICATED, refused)


def admit(authorization: str | None, settings: Settings, limiter: RateLimiter) -> str:
    """The caller's key if it is valid and within its rate, else a Refusal (401 / 429)."""
    if not authorized(authorization, settings.accepted_keys()):
        raise Refusal(401, grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key (Authorization: Bearer KEY)")
    key = (authorization or "").partition(" ")[2]
    wait = limiter.acquire(key)
    if wait > 0:
        raise Refusal(429, grpc.StatusCode.RESOURCE_EXHAUSTED, f"rate limit of {settings.write_rate_per_s:g} "
                      "writes/s for this key", retry_after=retry_after(wait))
    return key
