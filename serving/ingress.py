"""Ingress: the HTTP API (FastAPI) that validates a request and walks the graph, one awaited stage per step.

Input: `RecommendRequest` (HTTP POST /recommend, or gRPC `recsys.v1.Recommender/Recommend` through Serve's
gRPC proxy; one contract, see `serving.grpc_api`). Output: `RecommendResponse`.
Every stage has its own timeout and degraded answer, visible in `recommend` below; the response lists what
degraded and why (HTTP 200), so a client is never told a fallback is the real thing.
"""


import asyncio
import contextlib
import logging
import time
import uuid
from typing import Annotated

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle

from core.artifacts import Route, load_item_ids
from core.catalogue import ItemsUpsert
from core.errors import one_line
from core.events import FeedbackBatch, FeedbackEvent
from serving.breaker import Breaker
from serving.catalogue import CatalogueFollower, parse_upsert
from serving.contracts import (
    Candidates,
    Copy,
    CopyResult,
    Degradation,
    RankedItem,
    RankedItems,
    Recalled,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    RequestContext,
    UserContext,
    error_responses,
)
from serving.copy import template_copy
from serving.copy_near import NearCopies
from serving.failures import Refusal, StageFailed, add_error_responses, call_stage, grpc_status, within_budget
from serving.features import FeatureReader, read_user
from serving.feedback_api import (
    ack_json,
    ack_proto,
    identified,
    parse_feedback,
    refuse_unknown_items,
    unavailable_json,
)
from serving.gate import Gate, admit, admit_read, replica_admission, replica_settings
from serving.grpc_api import (
    InvalidRequest,
    feedback_from_proto,
    items_from_proto,
    request_from_proto,
    response_to_proto,
)
from serving.grpc_servicer import malformed
from serving.impressions import ImpressionLog
from serving.loopback import bind_loopback
from serving.metrics import StageMetrics
from serving.proto import recsys_pb2 as pb
from serving.ranking import RankingStage
from serving.ratelimit import RateLimiter

log = logging.getLogger("ray.serve")  # the replica's log
CATALOGUE_TIMEOUT_MS = 120_000.0  # an upsert embeds its items (the first one loads the sentence-transformers model)

api = FastAPI(title="recsys", version="1", description="Real-time recommendations: features → recall → "
              "ranking (Triton) → copy. Degraded stages are listed in every response.")


add_error_responses(api)  # 400 / 422 naming the field, 503 naming the lost stage, 500 without internals
api.add_middleware(Gate)  # 413 and 401 before a body is parsed


def _recall_order(cands: Candidates, k: int, reason: str, context: RequestContext | None = None) -> RankedItems:
    """The ranking stage itself was lost: recall's first k, unranked and without attributes. Without item rows a
    genre or year filter cannot be shown to hold, so such a request gets no items rather than unfiltered ones."""
    if context is not None and context.filters_items():
        return RankedItems(items=[], model_version="", degraded=Degradation(
            stage="ranking", reason=reason, fallback="no items: the request's genre/year filters need item rows"))
    drop = set(context.exclude_items) if context is not None else set()
    rows = [r for r in zip(cands.item_ids, cands.scores, cands.channels, strict=True) if r[0] not in drop][:k]
    rows.sort(key=lambda r: -r[1])  # recall's scores are the order (the popular channel comes after the model's)
    items = [RankedItem(item_id=i, score=s, title="", year=-1, genres=[], channel=c, score_parts={"recall": s})
             for i, s, c in rows]
    return RankedItems(items=items, model_version="",
                       degraded=Degradation(stage="ranking", reason=reason, fallback="recall order"))


def recommend_request(body: bytes) -> RecommendRequest:
    """The /recommend body, validated from its JSON in one call; a failure goes to the API's handler for FastAPI's
    own (`serving.failures`): malformed JSON 400, an invalid field 422 naming it."""
    try:
        return RecommendRequest.model_validate_json(body)
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None


def decoded(request) -> None:
    """INVALID_ARGUMENT for bytes that were not a protobuf message of the method's type (`serving.grpc_servicer`)."""
    if malformed(request):
        raise InvalidRequest(f"request: not a valid {type(request).__name__} protobuf message")


def _popular_order(popular: list[int], user: UserContext, n: int, exclude: list[int],
                   retired: frozenset[int] = frozenset()) -> Candidates:
    """Recall itself was lost: the most popular items the user has not seen, as unpersonalised candidates."""
    seen = set(user.excluded()) | set(exclude) | retired
    items = [i for i in popular if i not in seen][:n]
    return Candidates(item_ids=items, scores=[1.0 - r / max(1, len(items)) for r in range(len(items))],
                      channels=["popular"] * len(items), model_version="")


# Module functions the Ingress methods use are defined above the class: the deployment decorator captures
# the class with the globals that exist when it runs, so a helper defined below it is missing in a replica.
@serve.deployment(name="Ingress", max_ongoing_requests=64)
@serve.ingress(api)
class Ingress:
    def __init__(self, recall: DeploymentHandle, ranking: type[RankingStage], copy: DeploymentHandle,
                 feedback: DeploymentHandle) -> None:
        """`ranking` is built here, in this replica (see `serving.app`); the other stages are deployments."""
        bind_loopback()
        self.recall, self.ranking, self.copy, self.feedback = recall, ranking, copy, feedback
        self.s = replica_settings()  # the same object the ASGI gate reads
        self.reader = FeatureReader(self.s)  # item rows for ranking; the user's only when Recall is lost
        self.ranker: RankingStage | None = None  # the ranking stage: Triton client, item cache, rules
        self.ranker_error = ""
        self._load_ranker(None)
        self.known_items = {int(i) for i in load_item_ids(self.s)[1:]}  # index 0 is padding
        self.limiter = RateLimiter(self.s.write_rate_per_s, self.s.write_burst)
        self.breakers = {stage: Breaker(stage, self.s.breaker_failures, self.s.breaker_cooldown_s)
                         for stage in ("recall", "copy", "feedback")}  # each skipped at once while it keeps failing
        self.metrics = StageMetrics()
        # The Copy stage's final copies, answered here while it keeps answering (`serving.copy_near`): at most
        # as old as the item rows, a new copy version seen within `catalogue_poll_s` under load.
        self.near_copies = NearCopies(self.s.copy_near_cache_size, self.s.item_cache_ttl_s, self.s.catalogue_poll_s)
        self.impressions = ImpressionLog(self.s.impressions_dir, "ingress")
        self.popular: list[int] = []  # recall's popular items, kept here as the answer when recall is lost
        self._popular_task: asyncio.Task | None = None
        self.catalogue = CatalogueFollower(self.s)  # new items become known (feedback), retired ones leave answers
        self.retired: frozenset[int] = frozenset()
        self._catalogue_task: asyncio.Task | None = None

    def _load_ranker(self, route: Route | None) -> None:
        """A ranking stage that cannot start (its route's files missing at start-up) does not take the API down:
        requests get recall order, flagged with this reason, and /readyz says not ready."""
        try:
            self.ranker = self.ranking(self.s, self.reader, route=route)
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

    async def _rank(self, user: UserContext, cands: Candidates, k: int,
                    context: RequestContext | None) -> RankedItems:
        if self.ranker is None:
            raise RuntimeError(f"ranker not loaded: {self.ranker_error}")
        return await self.ranker.rank(user, cands, k, context)

    def follow_catalogue(self) -> None:
        """One poll of the catalogue log (blocking): new items accepted in feedback, retired ones filtered by the
        ranking stage too, changed rows read again."""
        changed = self.catalogue.poll()
        if not changed:
            return
        state = self.catalogue.state
        self.known_items |= set(state.items)
        self.retired = frozenset(state.retired)
        if self.ranker is not None:
            self.ranker.retired = self.retired
            self.ranker.items.invalidate(changed)

    async def _follow_catalogue(self) -> None:
        while True:
            await asyncio.to_thread(self.follow_catalogue)
            await asyncio.sleep(self.s.catalogue_poll_s)

    def _background(self) -> None:
        """Start the replica's loops at its first request (Serve calls __init__ outside a running loop)."""
        if self._popular_task is None:
            self._popular_task = asyncio.create_task(self._keep_popular())
            self._catalogue_task = asyncio.create_task(self._follow_catalogue())

    async def _keep_popular(self) -> None:
        """Refresh the fallback list from Recall now and then; a failed refresh keeps the last good one."""
        while True:
            with contextlib.suppress(StageFailed):
                self.popular = await call_stage("recall", self.recall.popular.remote(
                    self.s.recall_candidates + self.s.popular_candidates), 5000)
            await asyncio.sleep(60 if self.popular else 2)

    @api.post("/recommend", response_model=RecommendResponse, response_model_by_alias=True,
              responses=error_responses(400, 401, 413, 422, 500, 503),
              openapi_extra={"requestBody": {"content": {"application/json": {
                  "schema": RecommendRequest.model_json_schema()}}, "required": True}})
    async def recommend(self, request: Request) -> Response:
        """The body is validated here in one call (`recommend_request`), not by FastAPI's body dependency, which
        cost ~0.2 ms more CPU a request (README, measurement log); the same 400 / 422 answers."""
        req = recommend_request(await request.body())
        resp = await self._recommend(req, request.headers.get("x-request-id") or uuid.uuid4().hex)
        # Serialised once here; returning the model would make FastAPI validate it again before dumping.
        return Response(resp.model_dump_json(by_alias=True), media_type="application/json")

    @api.post("/feedback", responses=error_responses(400, 401, 413, 422, 429, 500, 503),
              openapi_extra={"requestBody": {"content": {"application/json": {
                  "schema": FeedbackBatch.model_json_schema()}}, "required": True}})
    async def feedback_route(self, request: Request) -> JSONResponse:
        """Events (one, or {"events": [...]}): acknowledged only once durably logged; 401 without a key. A 503
        lists the events' ids: the write may still land, and a retry with those ids is stored at most once."""
        try:
            admit(request.headers.get("authorization"), self.s, self.limiter)
            events = self._identified(parse_feedback(await request.body()))
            result = await call_stage("feedback", lambda: self.feedback.record.remote(events),
                                      self.s.feedback_timeout_ms, self.breakers["feedback"])
        except Refusal as r:
            return r.response()
        except StageFailed as e:
            return JSONResponse(unavailable_json(events, e.reason), status_code=503, headers={"Retry-After": "1"})
        return JSONResponse(ack_json(result))

    @api.delete("/users/{user_id}", responses=error_responses(401, 422, 429, 500, 503))
    async def delete_user_route(self, user_id: Annotated[int, Path(ge=0, le=2**62)], request: Request) -> JSONResponse:
        """Erase a user (authenticated, as a write): their logged events, their online features (blanked), their
        impression lines (redacted), and a tombstone that keeps them out of every later training set and feature
        rebuild. Afterwards `/recommend` treats them as a new user. The answer says what was deleted."""
        try:
            admit(request.headers.get("authorization"), self.s, self.limiter)
            return JSONResponse(await call_stage("feedback", self.feedback.delete_user.remote(user_id),
                                                 self.s.feedback_timeout_ms * 10))
        except Refusal as r:
            return r.response()
        except StageFailed as e:
            return JSONResponse({"error": f"deletion not confirmed: {e.reason}; it is safe to repeat"},
                                status_code=503, headers={"Retry-After": "1"})

    @api.post("/items", responses=error_responses(400, 401, 413, 422, 429, 500, 503),
              openapi_extra={"requestBody": {"content": {"application/json": {
                  "schema": ItemsUpsert.model_json_schema()}}, "required": True}})
    async def upsert_items_route(self, request: Request) -> JSONResponse:
        """Add or change catalogue items (authenticated, as a write): each gets its content embedding, its online
        row and a place in recall within `catalogue_poll_s`, with no restart; the next retrain learns its id. The
        answer lists which ids were new and which updated. Safe to repeat."""
        try:
            admit(request.headers.get("authorization"), self.s, self.limiter)
            items = parse_upsert(await request.body())
            return JSONResponse(await self._write_catalogue(self.feedback.upsert_items.remote(items)))
        except Refusal as r:
            return r.response()
        except InvalidRequest as e:
            return JSONResponse({"error": str(e)}, status_code=422)
        except StageFailed as e:
            return JSONResponse({"error": f"upsert not confirmed: {e.reason}; it is safe to repeat"},
                                status_code=503, headers={"Retry-After": "1"})

    @api.delete("/items/{item_id}", responses=error_responses(401, 422, 429, 500, 503))
    async def retire_item_route(self, item_id: Annotated[int, Path(ge=1, le=2**62)],
                                request: Request) -> JSONResponse:
        """Retire an item (authenticated): it leaves every answer within `catalogue_poll_s`. 422 if unknown."""
        try:
            admit(request.headers.get("authorization"), self.s, self.limiter)
            return JSONResponse(await self._write_catalogue(self.feedback.retire_items.remote([item_id])))
        except Refusal as r:
            return r.response()
        except InvalidRequest as e:
            return JSONResponse({"error": str(e)}, status_code=422)
        except StageFailed as e:
            return JSONResponse({"error": f"retirement not confirmed: {e.reason}; it is safe to repeat"},
                                status_code=503, headers={"Retry-After": "1"})

    async def _write_catalogue(self, call) -> dict:
        """One catalogue write on the Feedback replica (HTTP and gRPC): its answer, or InvalidRequest with the
        reason it refused the input (unknown ids, an id twice), which the caller answers 422 / INVALID_ARGUMENT."""
        out = await call_stage("feedback", call, CATALOGUE_TIMEOUT_MS)
        if "error" in out:
            raise InvalidRequest(out["error"])
        return out

    async def UpsertItems(self, request: pb.UpsertItemsRequest,  # the gRPC method name
                          grpc_context: RayServegRPCContext) -> pb.CatalogueResponse:
        try:
            admit(dict(grpc_context.invocation_metadata()).get("authorization"), self.s, self.limiter)
            decoded(request)
            out = await self._write_catalogue(self.feedback.upsert_items.remote(items_from_proto(request)))
            return pb.CatalogueResponse(new=out["new"], updated=out["updated"])
        except Exception as e:
            grpc_status(grpc_context, e)
        return pb.CatalogueResponse()

    async def RetireItems(self, request: pb.RetireItemsRequest,  # the gRPC method name
                          grpc_context: RayServegRPCContext) -> pb.CatalogueResponse:
        try:
            admit(dict(grpc_context.invocation_metadata()).get("authorization"), self.s, self.limiter)
            decoded(request)
            ids = list(request.item_ids)
            if not ids or not all(1 <= i <= 2**62 for i in ids):
                raise InvalidRequest("item_ids: between 1 and 2^62, at least one")
            out = await self._write_catalogue(self.feedback.retire_items.remote(ids))
            return pb.CatalogueResponse(retired=out["retired"])
        except Exception as e:
            grpc_status(grpc_context, e)
        return pb.CatalogueResponse()

    async def DeleteUser(self, request: pb.DeleteUserRequest,  # the gRPC method name
                         grpc_context: RayServegRPCContext) -> pb.DeleteUserResponse:
        try:
            admit(dict(grpc_context.invocation_metadata()).get("authorization"), self.s, self.limiter)
            decoded(request)
            if not 0 <= request.user_id <= 2**62:
                raise InvalidRequest("user_id: must be between 0 and 2^62")
            out = await call_stage("feedback", self.feedback.delete_user.remote(request.user_id),
                                   self.s.feedback_timeout_ms * 10)
            return pb.DeleteUserResponse(user_id=out["user_id"], events_deleted=out["events_deleted"],
                                         online_rows=out["online_rows"],
                                         impressions_redacted=out["impressions_redacted"])
        except Exception as e:
            grpc_status(grpc_context, e)
        return pb.DeleteUserResponse()

    async def Feedback(self, request: pb.FeedbackRequest,  # the gRPC method name
                       grpc_context: RayServegRPCContext) -> pb.FeedbackResponse:
        try:
            admit(dict(grpc_context.invocation_metadata()).get("authorization"), self.s, self.limiter)
            decoded(request)
            events = self._identified(feedback_from_proto(request))
            return ack_proto(await call_stage("feedback", lambda: self.feedback.record.remote(events),
                                              self.s.feedback_timeout_ms, self.breakers["feedback"]))
        except StageFailed as e:  # UNAVAILABLE with the ids to retry with, as the HTTP 503 body has them
            body = unavailable_json(events, e.reason)
            grpc_status(grpc_context, e)
            grpc_context.set_details(f"{body['error']}; retry with event_ids {','.join(body['event_ids'])}")
        except Exception as e:
            grpc_status(grpc_context, e)
        return pb.FeedbackResponse()

    def _identified(self, batch: FeedbackBatch) -> list[FeedbackEvent]:
        self._background()
        if any(e.item_id not in self.known_items for e in batch.events):
            self.follow_catalogue()  # upserted since this replica's last poll (Recall may have shown it already)
        refuse_unknown_items(batch, self.known_items)
        return identified(batch, time.time())

    async def Recommend(self, request: pb.RecommendRequest,  # the gRPC method name
                        grpc_context: RayServegRPCContext) -> pb.RecommendResponse:
        """gRPC: same walk as HTTP; INVALID_ARGUMENT names the field, UNAVAILABLE names the lost stage."""
        metadata = dict(grpc_context.invocation_metadata())
        rid = metadata.get("x-request-id") or uuid.uuid4().hex
        try:
            admit_read(metadata.get("authorization"))
            decoded(request)
            async with replica_admission().slot():  # HTTP reads are admitted in the `Gate`
                return response_to_proto(await self._recommend(request_from_proto(request), rid))
        except Exception as e:
            grpc_status(grpc_context, e)
        return pb.RecommendResponse()

    async def _copies(self, user: UserContext, ranked: RankedItems,
                      degraded: list[Degradation]) -> tuple[list[Copy], str]:
        """One copy per ranked item and the copy version: from this replica's near cache when it holds them all
        (`serving.copy_near`), else from the Copy stage, flagging what it could not write."""
        near = self.near_copies.get(user, ranked.items)
        self.metrics.copy_answers.inc(tags={"source": "near" if near is not None else "stage"})
        if near is not None:
            return near
        asked = self.near_copies.clock()
        def keep(result: CopyResult) -> None:
            self.near_copies.put(user, ranked.items, result, asked)

        try:
            # The budget is what copy may add to the answer, the hops to the Copy replica included: it answers
            # `copy_hop_ms` before it; an answer later still is kept for the next request (the near cache).
            answered, res = await within_budget(call_stage("copy", lambda: self.copy.write.remote(user, ranked),
                                                           self.s.copy_timeout_ms, self.breakers["copy"]),
                                                self.s.copy_budget_ms / 1e3, keep)
        except StageFailed as e:
            degraded.append(Degradation(stage="copy", reason=e.reason, fallback="template copy"))
            return [template_copy(it) for it in ranked.items], "template"
        if not answered or res is None:
            degraded.append(Degradation(stage="copy", reason=f"no answer within the {self.s.copy_budget_ms:.0f} ms "
                                        "budget", fallback="template copy; the model copies are cached as they come"))
            return [template_copy(it) for it in ranked.items], "template"
        keep(res)
        n = len(res.copies)
        if res.late:
            degraded.append(Degradation(
                stage="copy", reason=f"{res.late} of {n} copies missed the {self.s.copy_budget_ms:.0f} ms budget",
                fallback="template copy for those; their model copy is being cached"))
        if res.busy:
            degraded.append(Degradation(
                stage="copy", reason=f"{res.busy} of {n} copies not generated: the copy model has its most copies "
                "in progress", fallback="template copy for those"))
        if res.error:
            degraded.append(Degradation(stage="copy", reason=res.error, fallback="template copy for those"))
        return res.copies, res.version

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
        self._background()
        t = time.perf_counter()
        n = self.ranker.pool(req.user_id, req.context) if self.ranker is not None else self.s.recall_candidates
        try:
            exclude = req.context.exclude_items if req.context else []
            got = Recalled.model_validate_json(await call_stage(
                "recall", lambda: self.recall.recall.remote(req.user_id, exclude or None, n),
                self.s.features_timeout_ms + self.s.recall_timeout_ms, self.breakers["recall"]))
            user, cands, features_ms = got.user, got.candidates, got.features_ms
            if got.degraded:
                degraded.append(got.degraded)
        except StageFailed as e:
            if not self.popular:
                raise
            user, lost, features_ms = await read_user(self.reader, req.user_id, self.s.features_timeout_ms)
            if lost:
                degraded.append(lost)
            cands = _popular_order(self.popular, user, n,
                                   req.context.exclude_items if req.context else [], self.retired)
            degraded.append(Degradation(stage="recall", reason=e.reason, fallback="popular items"))
        timings["features"] = round(features_ms, 3)
        self.metrics.observe("features", timings["features"])
        lap("recall", t + features_ms / 1e3)  # the hop's time less the features read

        # 3. Ranking (Triton), in this replica. Degraded inside the stage (Triton down or slow → recall order);
        # here: the stage itself failed or overran (e.g. its item read stuck) → recall order too.
        t = time.perf_counter()
        try:
            ranked: RankedItems = await call_stage("ranking", self._rank(user, cands, req.k, req.context),
                                              self.s.ranking_timeout_ms + self.s.features_timeout_ms)
        except StageFailed as e:
            ranked = _recall_order(cands, req.k, e.reason, req.context)
        if ranked.degraded:
            degraded.append(ranked.degraded)
        lap("ranking", t)

        # 4. Copy (fine-tuned LM, guarded). Degraded: the grounded template, for the late items or for all.
        copies: list[Copy] | list[None] = [None] * len(ranked.items)
        copy_version = "template"
        if req.include_copy and ranked.items:
            t = time.perf_counter()
            copies, copy_version = await self._copies(user, ranked, degraded)
            lap("copy", t)

        timings["total"] = round((time.perf_counter() - t0) * 1e3, 3)
        self.metrics.request(timings["total"], [d.stage for d in degraded])
        items = [RecommendedItem(item_id=it.item_id, title=it.title, score=it.score, rank=r + 1,
                                 copy=c.text if c else None, copy_source=c.source if c else "none",
                                 channel=it.channel, explore=it.explore, score_parts=it.score_parts)
                 for r, (it, c) in enumerate(zip(ranked.items, copies, strict=True))]
        versions = {"retrieval": cands.model_version, "ranker": ranked.model_version}
        if req.include_copy:
            versions["copy"] = copy_version
        resp = RecommendResponse(request_id=rid, user_id=req.user_id, items=items, model_versions=versions,
                                 timings_ms=timings, degraded=degraded)
        self.impressions.write(resp, req.context.model_dump(exclude_defaults=True) if req.context else None)
        return resp

    @api.get("/healthz")
    async def healthz(self) -> dict[str, bool]:
        return {"ok": True}

    @api.get("/readyz/copy")
    async def readyz_copy(self) -> JSONResponse:
        """200 once the copy stage has settled: its model loaded and its cache warmed (`copy` is the version), or
        no model to load (`copy: "template"`); 503 while a model is loading or the stage does not answer."""
        try:
            st = await call_stage("copy", self.copy.stats.remote(), 2000)
        except StageFailed as e:
            return JSONResponse({"ready": False, "error": f"copy unavailable: {e.reason}"}, status_code=503)
        body = {"ready": not st["loading"], "copy": st["version"], "warmed": st["warmed"], "ahead": st["ahead"],
                "ahead_mtime_ns": st["ahead_mtime_ns"]}  # which file of copy written ahead the cache holds
        return JSONResponse(body, status_code=503 if st["loading"] else 200)

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Ready only when Triton has the champion ranker loaded (the graph can answer un-degraded)."""
        try:
            ok = self.ranker is not None and await call_stage("ranking", self.ranker.client.ready(self.ranker.version),
                                                         2000)
        except StageFailed:
            ok = False
        return JSONResponse({"ready": bool(ok)}, status_code=200 if ok else 503)
