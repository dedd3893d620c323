"""How a request fails, in one place: a stage lost (`StageFailed`, answered with its degraded fallback), a
request refused before anything was stored (`Refusal`: one HTTP status and one gRPC code), the per-stage
timeout that turns any stage failure into `StageFailed`, the budget a stage's answer is waited for
(`within_budget`), and the one mapping of failures to gRPC status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.serve.grpc_util import RayServegRPCContext

from core.errors import one_line
from serving.breaker import Breaker
from serving.grpc_api import InvalidRequest, first_error

T = TypeVar("T")
log = logging.getLogger("ray.serve")  # the replica's log: where the full messages go
_last_logged: dict[str, str] = {}  # stage → the last failure logged for it


def public_reason(stage: str, e: BaseException) -> str:
    """What failed, in words a client can act on. Addresses, actor ids and tracebacks stay in the replica's log
    (logged here, once per change of message: during an outage every request fails the same way, and a line per
    request would put the log on the hot path): a Ray error names actors and nodes, a gRPC error the peer's
    `ipv4:…` address."""
    detail = one_line(e, last=True, typed=True)
    if _last_logged.get(stage) != detail:
        _last_logged[stage] = detail
        log.warning("%s failed: %s", stage, detail)
    name = type(e).__name__
    if "Actor" in name or name in ("DeploymentUnavailableError", "BackPressureError"):
        return "replica unavailable (restarting or overloaded)"
    cause = getattr(e, "cause", None)  # RayTaskError: the remote exception
    if isinstance(cause, BaseException):
        name = type(cause).__name__
    status = getattr(e, "status", None) or getattr(e, "code", None)  # tritonclient's status(), grpc's code()
    code = status() if callable(status) else None
    code = getattr(code, "name", code)  # a grpc.StatusCode: its name
    if isinstance(code, str) and code:
        return f"error ({code.removeprefix('StatusCode.')})"
    return f"error ({name})"


class StageFailed(Exception):
    """A stage of the walk did not answer in time or failed: `reason` is what the degraded answer says."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


class Refusal(Exception):
    """A write refused before anything was stored; one refusal, two encodings (HTTP status, gRPC code)."""

    def __init__(self, http: int, code: grpc.StatusCode, message: str, field: str | None = None,
                 retry_after: str | None = None) -> None:
        super().__init__(message)
        self.http, self.code, self.message, self.field, self.retry_after = http, code, message, field, retry_after

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.http == 401 else {}
        if self.retry_after:
            headers["Retry-After"] = self.retry_after
        body = {"error": self.message, **({"field": self.field} if self.field else {})}
        return JSONResponse(body, status_code=self.http, headers=headers)


async def call_stage(stage: str, response, timeout_ms: float, breaker: Breaker | None = None) -> Any:
    """Await one handle call (or a stage run in this replica: a coroutine) with the stage's timeout; any
    failure becomes StageFailed(stage, reason). With a `breaker`, `response` is a function making the call, made
    only if the breaker allows it (else StageFailed at once), and the outcome is recorded on the breaker.

    Under overload Serve's router can cancel a call this request never cancelled (Serve would answer it as a
    bare HTTP 500). That is the stage's failure, answered with its degraded fallback; only a cancellation of
    this request itself (client gone, replica stopping) propagates.
    """
    if breaker is not None:
        if not breaker.allow():
            raise StageFailed(stage, breaker.reason())
        try:
            out = await call_stage(stage, response(), timeout_ms)
        except StageFailed:
            breaker.failure()
            raise
        breaker.success()
        return out
    try:
        async with asyncio.timeout(timeout_ms / 1e3):  # not wait_for: that wraps each call in a task of its own
            return await response
    except TimeoutError:
        if not asyncio.iscoroutine(response):  # wait_for cancelled a coroutine itself; a handle call is remote
            response.cancel()
        raise StageFailed(stage, f"timeout after {timeout_ms:.0f} ms") from None
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        why = "cancelled" if asyncio.iscoroutine(response) else "call cancelled by Serve (overloaded)"
        raise StageFailed(stage, why) from None
    except Exception as e:
        raise StageFailed(stage, public_reason(stage, e)) from None


async def within_budget(call: Awaitable[T], budget_s: float, later: Callable[[T], None]) -> tuple[bool, T | None]:
    """(True, its result) when `call` finishes within `budget_s`, raising what it raises; else (False, None) at the
    budget, with `call` left running: its result, when it comes, goes to `later`, and a failure after the budget
    is dropped (the call's own timeout and breaker have seen it). A budget is what a stage may add to an answer,
    hops included, where its timeout is when it counts as lost. This request cancelled while it waits: the call
    is cancelled with it, as an awaited `call_stage` would be (so the stage's breaker does not count it)."""
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=budget_s)
    except BaseException:
        task.cancel()  # a no-op once it is done; then the callback still takes its answer or its error
        _after(task, later)
        raise
    if not done:
        _after(task, later)
        return False, None
    return True, task.result()


_running: set[asyncio.Future] = set()  # calls past their budget: held here until they end (the loop holds weakly)


def _after(task: asyncio.Future, later: Callable[[T], None]) -> None:
    _running.add(task)
    task.add_done_callback(partial(_deliver, later))


def _deliver(later: Callable[[T], None], task: asyncio.Future) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is None:
        later(task.result())


def grpc_status(grpc_context: RayServegRPCContext, e: Exception) -> None:
    """One mapping of failures to gRPC status for every method: the code and a one-line message."""
    if isinstance(e, Refusal):
        code, details = e.code, e.message
    elif isinstance(e, InvalidRequest):
        code, details = grpc.StatusCode.INVALID_ARGUMENT, str(e)
    elif isinstance(e, StageFailed):
        code, details = grpc.StatusCode.UNAVAILABLE, f"{e.stage} unavailable: {e.reason}"
    else:
        code, details = grpc.StatusCode.INTERNAL, f"internal error ({type(e).__name__})"
    grpc_context.set_code(code)
    grpc_context.set_details(details)


def add_error_responses(api: FastAPI) -> None:
    """HTTP answers for what escapes a route: malformed JSON 400, an invalid field 422 naming it, a lost stage
    503 naming it (with Retry-After), anything else 500 naming only its type."""

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse({"error": "malformed JSON body"}, status_code=400)
        field, msg = first_error(errors)
        return JSONResponse({"error": msg, "field": field}, status_code=422)

    @api.exception_handler(StageFailed)
    async def _stage_failed(request: Request, exc: StageFailed) -> JSONResponse:
        return JSONResponse({"error": f"{exc.stage} unavailable: {exc.reason}"}, status_code=503,
                            headers={"Retry-After": "1"})

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)
