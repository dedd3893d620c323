"""Ingress: the HTTP API (FastAPI) that validates a request and walks the graph, one awaited stage per step.

Input: `RecommendRequest` (HTTP POST /recommend, or gRPC `recsys.v1.Recommender/Recommend` through Serve's
gRPC proxy; one contract, see `serving.grpc_api`). Output: `RecommendResponse`.
Every stage has its own timeout and degraded answer, visible in `recommend` below; the response lists what
degraded and why (HTTP 200), so a client is never told a fallback is the real thing.
"""


import asyncio
import contextlib
import functools
import hmac
import json
import logging
import time
import uuid
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle

from recsys.settings import Settings, load_settings
from serving.artifacts import Route, load_item_ids
from serving.contracts import (
    Candidates,
    CopyResult,
    Degradation,
    RankedItem,
    RankedItems,
    Recalled,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    UserContext,
    one_line,
)
from serving.copy import template_copy
from serving.events import FeedbackBatch
from serving.features import FeatureReader, read_user
from serving.grpc_api import InvalidRequest, feedback_from_proto, first_error, request_from_proto, response_to_proto
from serving.impressions import ImpressionLog
from serving.metrics import StageMetrics
from serving.proto import recsys_pb2 as pb
from serving.ranking import Ranker
from serving.ratelimit import RateLimiter, retry_after

log = logging.getLogger("ray.serve")  # the replica's log

api = FastAPI(title="recsys", version="1", description="Real-time recommendations: features → recall → "
              "ranking (Triton) → copy. Degraded stages are listed in every response.")


class StageFailed(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


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


@functools.cache
def _settings() -> Settings:
    """This replica's settings, read once (not per request); the keys file is re-read at each check."""
    return load_settings()

READ_PATHS = frozenset({"/recommend"})  # what `read_requires_key` closes; health and readiness stay open


def _authorized(header: str | None, keys: list[str]) -> bool:
    """Bearer key check in constant time; no keys configured → nothing is authorized (writes are closed)."""
    scheme, _, key = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        return False
    return any(hmac.compare_digest(key.encode(), k.encode()) for k in keys)


def _read_refused(authorization: str | None) -> str | None:
    """Why a read is refused (read_requires_key on and no valid key), or None when it may go on."""
    s = _settings()
    if not s.read_requires_key or _authorized(authorization, s.accepted_keys()):
        return None
    return "missing or invalid API key (Authorization: Bearer KEY): this deployment requires one for reads"


class Gate:
    """413 before the body is read when Content-Length is over the limit; 401 on a read without a required key.

    Pure ASGI, so both answer before FastAPI parses (a bad body without a key is a 401, not a 422), and
    Starlette's `@app.middleware("http")` would wrap every request in an extra task and stream.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            size = headers.get(b"content-length", b"")
            limit = _settings().max_request_bytes
            if size.isdigit() and int(size) > limit:
                await JSONResponse({"error": f"request body over {limit} bytes"}, status_code=413)(scope, receive, send)
                return
            if scope["path"] in READ_PATHS:
                refused = _read_refused(headers.get(b"authorization", b"").decode("latin-1") or None)
                if refused:
                    await JSONResponse({"error": refused}, status_code=401,
                                       headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                    return
        await self.app(scope, receive, send)


api.add_middleware(Gate)


async def _call(stage: str, response, timeout_ms: float) -> Any:
    """Await one handle call (or a stage run in this replica: a coroutine) with the stage's timeout; any
    failure becomes StageFailed(stage, reason).

    Under overload Serve's router can cancel a call this request never cancelled (measured at 32 concurrent
    clients: ~25 % of requests, which Serve answered as a bare HTTP 500). That is the stage's failure, answered
    with its degraded fallback; only a cancellation of this request itself (client gone, replica stopping)
    propagates.
    """
    try:
        return await asyncio.wait_for(response, timeout_ms / 1e3)
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
        lines = str(e).strip().splitlines()
        raise StageFailed(stage, (lines[-1] if lines else type(e).__name__)[:200]) from None


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


def _parse_feedback(raw: bytes) -> FeedbackBatch:
    """One event or {"events": [...]} → a batch; malformed JSON 400, invalid fields 422 naming the field."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Refusal(400, grpc.StatusCode.INVALID_ARGUMENT, "malformed JSON body") from None
    except RecursionError:  # "[[[[…" within the size limit: the decoder gives up, the client gets a 400
        raise Refusal(400, grpc.StatusCode.INVALID_ARGUMENT, "malformed JSON body (nested too deeply)") from None
    if isinstance(body, dict) and "events" not in body:
        body = {"events": [body]}
    try:
        return FeedbackBatch.model_validate(body)
    except ValidationError as e:
        field, msg = first_error(e.errors())
        raise Refusal(422, grpc.StatusCode.INVALID_ARGUMENT, msg, field) from None


def _set_status(grpc_context: RayServegRPCContext, e: Exception) -> None:
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


def _recall_order(cands: Candidates, k: int, reason: str) -> RankedItems:
    """The ranking stage itself was lost: recall's first k, unranked and without attributes."""
    items = [RankedItem(item_id=i, score=s, title="", year=-1, genres=[])
             for i, s in list(zip(cands.item_ids, cands.scores, strict=True))[:k]]
    return RankedItems(items=items, model_version="",
                       degraded=Degradation(stage="ranking", reason=reason, fallback="recall order"))


def _popular_order(popular: list[int], user: UserContext, n: int) -> Candidates:
    """Recall itself was lost: the most popular items the user has not seen, as unpersonalised candidates."""
    seen = set(user.recent_items)
    items = [i for i in popular if i not in seen][:n]
    return Candidates(item_ids=items, scores=[1.0 - r / max(1, len(items)) for r in range(len(items))],
                      channels=["popular"] * len(items), model_version="")


# Module functions the Ingress methods use are defined above the class: the deployment decorator captures
# the class with the globals that exist when it runs, so a helper defined below it is missing in a replica.
@serve.deployment(name="Ingress", max_ongoing_requests=64)
@serve.ingress(api)
class Ingress:
    def __init__(self, recall: DeploymentHandle, copy: DeploymentHandle, feedback: DeploymentHandle) -> None:
        self.recall, self.copy, self.feedback = recall, copy, feedback
        self.s = _settings()  # the same object the ASGI gate reads
        self.reader = FeatureReader(self.s)  # item rows for ranking; the user's only when Recall is lost
        self.ranker: Ranker | None = None  # the ranking stage: Triton client, item cache, rules
        self.ranker_error = ""
        self._load_ranker(None)
        self.known_items = {int(i) for i in load_item_ids(self.s)[1:]}  # index 0 is padding
        self.limiter = RateLimiter(self.s.write_rate_per_s, self.s.write_burst)
        self.metrics = StageMetrics()
        self.impressions = ImpressionLog(self.s.impressions_dir, "ingress")
        self.popular: list[int] = []  # recall's popular items, kept here as the answer when recall is lost
        self._popular_task: asyncio.Task | None = None

    def _load_ranker(self, route: Route | None) -> None:
        """A ranking stage that cannot start (its route's files missing at start-up) does not take the API down:
        requests get recall order, flagged with this reason, and /readyz says not ready."""
        try:
            self.ranker = Ranker(self.s, self.reader, route=route)
        except Exception as e:
            self.ranker_error = one_line(e)
            log.error("ranking stage not loaded, answering in recall order: %s", self.ranker_error)

    def reconfigure(self, config: dict) -> None:
        """`user_config` = the ranker route ({champion, challenger, percent}); a change reconfigures live
        replicas between requests (`recsys promote`, `recsys canary`, the RayService's serveConfigV2). A route
        that cannot load fails the update (the operator sees it); routes are checked before they are applied."""
        if not config:
            return
        if self.ranker is None:
            self._load_ranker(Route.from_dict(config))
        else:
            self.ranker.set_route(Route.from_dict(config))

    async def _rank(self, user: UserContext, cands: Candidates, k: int) -> RankedItems:
        if self.ranker is None:
            raise RuntimeError(f"ranker not loaded: {self.ranker_error}")
        return await self.ranker.rank(user, cands, k)

    async def _keep_popular(self) -> None:
        """Refresh the fallback list from Recall now and then; a failed refresh keeps the last good one."""
        while True:
            with contextlib.suppress(StageFailed):
                self.popular = await _call("recall", self.recall.popular.remote(
                    self.s.recall_candidates + self.s.popular_candidates), 5000)
            await asyncio.sleep(60 if self.popular else 2)

    @api.post("/recommend", response_model=RecommendResponse, response_model_by_alias=True)
    async def recommend(self, req: RecommendRequest, request: Request) -> Response:
        resp = await self._recommend(req, request.headers.get("x-request-id") or uuid.uuid4().hex)
        # Serialised once here; returning the model would make FastAPI validate it again before dumping.
        return Response(resp.model_dump_json(by_alias=True), media_type="application/json")

    @api.post("/feedback", openapi_extra={"requestBody": {"content": {"application/json": {
        "schema": FeedbackBatch.model_json_schema()}}, "required": True}})
    async def feedback_route(self, request: Request) -> JSONResponse:
        """Events (one, or {"events": [...]}): acknowledged only once durably logged; 401 without a key."""
        try:
            key = self._admit(request.headers.get("authorization"))
            batch = _parse_feedback(await request.body())
            result = await self._feedback(key, batch)
        except Refusal as r:
            return r.response()
        return JSONResponse({"accepted": len(result["accepted"]), "duplicates": len(result["duplicates"]),
                             "event_ids": result["accepted"] + result["duplicates"], "pushed": result["pushed"],
                             **({"push_error": result["push_error"]} if result["push_error"] else {})})

    async def Feedback(self, request: pb.FeedbackRequest,  # the gRPC method name
                       grpc_context: RayServegRPCContext) -> pb.FeedbackResponse:
        try:
            key = self._admit(dict(grpc_context.invocation_metadata()).get("authorization"))
            result = await self._feedback(key, feedback_from_proto(request))
            return pb.FeedbackResponse(accepted=len(result["accepted"]), duplicates=len(result["duplicates"]),
                                       event_ids=result["accepted"] + result["duplicates"],
                                       pushed=result["pushed"], push_error=result["push_error"] or "")
        except Exception as e:
            _set_status(grpc_context, e)
        return pb.FeedbackResponse()

    def _admit(self, authorization: str | None) -> str:
        """The caller's key if it is valid and within its rate, else a Refusal (401 / 429)."""
        if not _authorized(authorization, self.s.accepted_keys()):
            raise Refusal(401, grpc.StatusCode.UNAUTHENTICATED,
                          "missing or invalid API key (Authorization: Bearer KEY)")
        key = (authorization or "").partition(" ")[2]
        wait = self.limiter.acquire(key)
        if wait > 0:
            raise Refusal(429, grpc.StatusCode.RESOURCE_EXHAUSTED, f"rate limit of {self.s.write_rate_per_s:g} "
                          "writes/s for this key", retry_after=retry_after(wait))
        return key

    async def _feedback(self, key: str, batch: FeedbackBatch) -> dict:
        unknown = [j for j, e in enumerate(batch.events) if e.item_id not in self.known_items]
        if unknown:
            j = unknown[0]
            raise Refusal(422, grpc.StatusCode.INVALID_ARGUMENT, f"unknown item {batch.events[j].item_id}",
                          f"events.{j}.item_id")
        return await _call("feedback", self.feedback.record.remote(batch.events), self.s.feedback_timeout_ms)

    async def Recommend(self, request: pb.RecommendRequest,  # the gRPC method name
                        grpc_context: RayServegRPCContext) -> pb.RecommendResponse:
        """gRPC: same walk as HTTP; INVALID_ARGUMENT names the field, UNAVAILABLE names the lost stage."""
        metadata = dict(grpc_context.invocation_metadata())
        rid = metadata.get("x-request-id") or uuid.uuid4().hex
        try:
            refused = _read_refused(metadata.get("authorization"))
            if refused:
                raise Refusal(401, grpc.StatusCode.UNAUTHENTICATED, refused)
            return response_to_proto(await self._recommend(request_from_proto(request), rid))
        except Exception as e:
            _set_status(grpc_context, e)
        return pb.RecommendResponse()

    async def _recommend(self, req: RecommendRequest, rid: str) -> RecommendResponse:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        degraded: list[Degradation] = []

        def lap(stage: str, start: float) -> None:
            timings[stage] = round((time.perf_counter() - start) * 1e3, 3)
            self.metrics.observe(stage, timings[stage])

        # 1+2. Features (Feast online) and recall (encoder + ANN + popularity), one hop: Recall reads the
        # features. Features down or late → cold start, flagged by Recall. Recall lost → the Ingress reads the
        # features itself and serves popular items the user has not seen, flagged; 503 only when there is not
        # even that yet (a replica that never reached Recall), said plainly.
        if self._popular_task is None:
            self._popular_task = asyncio.create_task(self._keep_popular())
        t = time.perf_counter()
        try:
            got: Recalled = await _call("recall", self.recall.recall.remote(req.user_id),
                                        self.s.features_timeout_ms + self.s.recall_timeout_ms)
            user, cands, features_ms = got.user, got.candidates, got.features_ms
            if got.degraded:
                degraded.append(got.degraded)
        except StageFailed as e:
            if not self.popular:
                raise
            user, lost, features_ms = await read_user(self.reader, req.user_id, self.s.features_timeout_ms)
            if lost:
                degraded.append(lost)
            cands = _popular_order(self.popular, user, self.s.recall_candidates)
            degraded.append(Degradation(stage="recall", reason=e.reason, fallback="popular items"))
        timings["features"] = round(features_ms, 3)
        self.metrics.observe("features", timings["features"])
        lap("recall", t + features_ms / 1e3)  # the hop's time less the features read

        # 3. Ranking (Triton), in this replica. Degraded inside the stage (Triton down or slow → recall order);
        # here: the stage itself failed or overran (e.g. its item read stuck) → recall order too.
        t = time.perf_counter()
        try:
            ranked: RankedItems = await _call("ranking", self._rank(user, cands, req.k),
                                              self.s.ranking_timeout_ms + self.s.features_timeout_ms)
        except StageFailed as e:
            ranked = _recall_order(cands, req.k, e.reason)
        if ranked.degraded:
            degraded.append(ranked.degraded)
        lap("ranking", t)

        # 4. Copy (fine-tuned LM, guarded). Degraded: the grounded template, for the late items or for all.
        copies: list = [None] * len(ranked.items)
        copy_version = "template"
        if req.include_copy and ranked.items:
            t = time.perf_counter()
            try:
                res: CopyResult = await _call("copy", self.copy.write.remote(user, ranked), self.s.copy_timeout_ms)
                copies, copy_version = res.copies, res.version
                if res.late:
                    degraded.append(Degradation(
                        stage="copy", reason=f"{res.late} of {len(copies)} copies missed the {res.budget_ms:.0f} ms "
                        "budget", fallback="template copy for those; their model copy is being cached"))
                if res.error:
                    degraded.append(Degradation(stage="copy", reason=res.error, fallback="template copy for those"))
            except StageFailed as e:
                copies = [template_copy(it) for it in ranked.items]
                degraded.append(Degradation(stage="copy", reason=e.reason, fallback="template copy"))
            lap("copy", t)

        timings["total"] = round((time.perf_counter() - t0) * 1e3, 3)
        self.metrics.request(timings["total"], [d.stage for d in degraded])
        items = [RecommendedItem(item_id=it.item_id, title=it.title, score=it.score, rank=r + 1,
                                 copy=c.text if c else None, copy_source=c.source if c else "none")
                 for r, (it, c) in enumerate(zip(ranked.items, copies, strict=True))]
        versions = {"retrieval": cands.model_version, "ranker": ranked.model_version}
        if req.include_copy:
            versions["copy"] = copy_version
        resp = RecommendResponse(request_id=rid, user_id=req.user_id, items=items, model_versions=versions,
                                 timings_ms=timings, degraded=degraded)
        self.impressions.write(resp, req.context)
        return resp

    @api.get("/healthz")
    async def healthz(self) -> dict[str, bool]:
        return {"ok": True}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Ready only when Triton has the champion ranker loaded (the graph can answer un-degraded)."""
        try:
            ok = self.ranker is not None and await _call("ranking", self.ranker.client.ready(self.ranker.version),
                                                         2000)
        except StageFailed:
            ok = False
        return JSONResponse({"ready": bool(ok)}, status_code=200 if ok else 503)
