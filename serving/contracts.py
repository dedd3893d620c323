"""Typed contracts between the graph's stages and of the public API; each stage takes one and returns one.

Validated at the boundary (pydantic), so a shape bug fails where it happens, not three hops later.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Stage = Literal["features", "recall", "ranking", "copy"]
CopySource = Literal["model", "template", "template_guard", "none"]  # template_guard: model copy failed the guard
# Which recall channel found an item: the model (ANN or exact search), popularity, or the catalogue's new items.
Channel = Literal["ann", "exact", "popular", "new"]


MAX_CONTEXT_BYTES = 8192  # what one request may write into the impression log
ItemId = Annotated[int, Field(ge=1, le=2**62, strict=True)]
Genre = Annotated[str, Field(min_length=1, max_length=64)]
Year = Annotated[int, Field(ge=0, le=3000, strict=True)]


class RequestContext(BaseModel):
    """What a client may say about one request: filters applied before the top k is cut (a filter that leaves
    fewer than k items answers fewer, never padding), and where the list is shown. Unknown keys are refused by
    name. gRPC carries it as `map<string, string>` (lists comma-separated, `serving.grpc_api`)."""

    model_config = ConfigDict(extra="forbid")

    exclude_items: list[ItemId] = Field(default_factory=list, max_length=1000,
                                        description="item ids not to recommend in this answer")
    include_genres: list[Genre] = Field(default_factory=list, max_length=50,
                                        description="only items with at least one of these genres")
    exclude_genres: list[Genre] = Field(default_factory=list, max_length=50,
                                        description="no item with any of these genres")
    min_year: Year | None = Field(default=None, description="only items released in or after this year")
    max_year: Year | None = Field(default=None, description="only items released in or before this year")
    page: str | None = Field(default=None, max_length=64, description="where the list is shown (logged only)")

    @model_validator(mode="after")
    def _years(self) -> RequestContext:
        if self.min_year is not None and self.max_year is not None and self.min_year > self.max_year:
            raise ValueError("min_year is after max_year")
        return self

    def filters_items(self) -> bool:
        """Whether an item's attributes decide (genres, year): only item rows can answer that."""
        return bool(self.include_genres or self.exclude_genres or self.min_year is not None
                    or self.max_year is not None)

    def admits(self, genres: list[str], year: int) -> bool:
        """Whether an item with these attributes passes the attribute filters (year -1 = unknown: excluded by
        a year filter, which cannot be shown to hold)."""
        if self.include_genres and not set(genres) & set(self.include_genres):
            return False
        if self.exclude_genres and set(genres) & set(self.exclude_genres):
            return False
        if self.min_year is not None and (year < 0 or year < self.min_year):
            return False
        return not (self.max_year is not None and (year < 0 or year > self.max_year))


class RecommendRequest(BaseModel):
    """POST /recommend body."""

    model_config = ConfigDict(extra="forbid")

    # strict, as /feedback: "7", true or 7.0 are a client's type error, not an id; ids are ≤ 2^62 everywhere
    user_id: int = Field(ge=0, le=2**62, strict=True,
                         description="the user to recommend for (unknown users get cold-start results)")
    k: int = Field(default=10, ge=1, le=100, strict=True, description="how many items to return")
    context: RequestContext | None = Field(default=None, description="filters and where the list is shown; "
                                           "logged with the answer")
    include_copy: bool = Field(default=True, strict=True, description="generate a short blurb for every item")

    @field_validator("context")
    @classmethod
    def _bounded(cls, v: RequestContext | None) -> RequestContext | None:
        if v is not None and len(v.model_dump_json(exclude_defaults=True)) > MAX_CONTEXT_BYTES:
            raise ValueError(f"at most {MAX_CONTEXT_BYTES} bytes as JSON (it is logged with every answer)")
        return v


class Degradation(BaseModel):
    """One stage that did not give its normal answer, and what was served instead."""

    stage: Stage
    reason: str  # e.g. "timeout after 200 ms", "triton unavailable: …"
    fallback: str  # what the response used instead, e.g. "recall order"


class UserContext(BaseModel):
    """The user's online features (empty history for an unknown user), read by Recall, used by every stage."""

    user_id: int
    known: bool  # False: no row in the online store (cold start)
    recent_items: list[int] = Field(default_factory=list)  # raw item ids, most recent last
    n_interactions: int = 0
    mean_rating: float = 0.0
    favourite_genres: list[str] = Field(default_factory=list)
    # Items never to recommend again (the user_history row, whole history); None: no row, recent_items stands
    # in. Read and used by Recall only, which drops it before the user travels on (it can be thousands of ids).
    seen_items: list[int] | None = None

    def excluded(self) -> list[int]:
        return self.recent_items if self.seen_items is None else self.seen_items


class Candidates(BaseModel):
    """Recall → ranking: candidate raw item ids in recall order with their scores (u·v or popularity)."""

    item_ids: list[int]
    scores: list[float]
    channels: list[Channel]  # which channel produced each candidate
    model_version: str  # retrieval (user encoder + index) version; "" when only popularity answered


class Recalled(BaseModel):
    """Recall → Ingress: the user's features as Recall read them (Ranking and Copy get the same), the candidates,
    and the features read's own time and degradation (one hop answers both stages). Travels as its JSON."""

    user: UserContext
    candidates: Candidates
    features_ms: float
    degraded: Degradation | None = None  # the features read failed or was late: cold start


class RankedItem(BaseModel):
    item_id: int
    score: float  # what the order is made of: the blend of the ranker and recall, or recall's when ranking degraded
    title: str
    year: int
    genres: list[str]
    channel: Channel = "ann"
    explore: bool = False  # placed by the exploration share (a new item shown to learn about it), not by score
    score_parts: dict[str, float] = Field(default_factory=dict)  # {"p_click": ranker, "recall": u·v or popularity}


class RankedItems(BaseModel):
    """Ranking → Copy/Ingress: the final top-k, business rules applied."""

    items: list[RankedItem]
    model_version: str  # ranker version that scored them; "" when ranking degraded
    degraded: Degradation | None = None


class Copy(BaseModel):
    text: str
    source: CopySource


class CopyResult(BaseModel):
    """Copy → Ingress: one copy per ranked item, and what the stage had to fall back on."""

    copies: list[Copy]
    version: str  # copy model version, or "template" (no model loaded)
    late: int = 0  # copies that missed the stage's budget: template now, model copy cached for next time
    rejected: int = 0  # generated copies the guard replaced with the template
    busy: int = 0  # misses not generated at all: the model had `copy_max_pending` copies in progress (template)
    error: str = ""  # generation failed for some items (they carry the template)
    budget_ms: float = 0.0


class RecommendedItem(BaseModel):
    item_id: int
    title: str
    score: float  # the items are in its order (the exploration slot, `explore`, comes last): see README
    rank: int
    copy_text: str | None = Field(default=None, alias="copy", serialization_alias="copy")
    copy_source: CopySource
    channel: Channel = "ann"  # the recall channel that found it ("new": upserted since the last retrain)
    explore: bool = False  # true: shown in the exploration slot (`explore_share`) rather than for its score
    score_parts: dict[str, float] = Field(default_factory=dict)  # what `score` blends: p_click (ranker), recall

    model_config = ConfigDict(populate_by_name=True)


class RecommendResponse(BaseModel):
    request_id: str
    user_id: int
    items: list[RecommendedItem]
    model_versions: dict[str, str]  # {"retrieval": "3", "ranker": "2", "copy": "template"}
    timings_ms: dict[str, float]  # per stage and "total"
    degraded: list[Degradation]


class ErrorBody(BaseModel):
    """Every error answer of the HTTP API: one readable line, the field when one is to blame, and for a feedback
    503 the event ids to retry with."""

    error: str
    field: str | None = None  # 422: the invalid field, dotted (e.g. "events.0.item_id")
    event_ids: list[str] | None = None  # feedback 503: the write may still land; retry with these ids
    retry: str | None = None  # feedback 503: how to retry


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these statuses, each with the error body (FastAPI documents only 200 and 422)."""
    what = {400: "malformed JSON body", 401: "missing or invalid API key (Authorization: Bearer KEY)",
            413: "request body over max_request_bytes (also without Content-Length)",
            422: "an invalid field (named in `field`) or an unknown item",
            429: "over the key's write rate; Retry-After says when to retry",
            500: "internal error (its type only; details in the replica log)",
            503: "a stage unavailable (Retry-After); for /feedback the write may still land: retry with event_ids"}
    return {c: {"model": ErrorBody, "description": what[c]} for c in codes}
