from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CatalogueItem(_message.Message):
    __slots__ = ("item_id", "title", "genres", "year", "text")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    GENRES_FIELD_NUMBER: _ClassVar[int]
    YEAR_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    title: str
    genres: _containers.RepeatedScalarFieldContainer[str]
    year: int
    text: str
    def __init__(self, item_id: _Optional[int] = ..., title: _Optional[str] = ..., genres: _Optional[_Iterable[str]] = ..., year: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[CatalogueItem]
    def __init__(self, items: _Optional[_Iterable[_Union[CatalogueItem, _Mapping]]] = ...) -> None: ...

class RetireItemsRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, item_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class CatalogueResponse(_message.Message):
    __slots__ = ("new", "updated", "retired")
    NEW_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    RETIRED_FIELD_NUMBER: _ClassVar[int]
    new: _containers.RepeatedScalarFieldContainer[int]
    updated: _containers.RepeatedScalarFieldContainer[int]
    retired: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, new: _Optional[_Iterable[int]] = ..., updated: _Optional[_Iterable[int]] = ..., retired: _Optional[_Iterable[int]] = ...) -> None: ...

class DeleteUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    def __init__(self, user_id: _Optional[int] = ...) -> None: ...

class DeleteUserResponse(_message.Message):
    __slots__ = ("user_id", "events_deleted", "online_rows", "impressions_redacted")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_DELETED_FIELD_NUMBER: _ClassVar[int]
    ONLINE_ROWS_FIELD_NUMBER: _ClassVar[int]
    IMPRESSIONS_REDACTED_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    events_deleted: int
    online_rows: str
    impressions_redacted: int
    def __init__(self, user_id: _Optional[int] = ..., events_deleted: _Optional[int] = ..., online_rows: _Optional[str] = ..., impressions_redacted: _Optional[int] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "include_copy", "context")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_COPY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    k: int
    include_copy: bool
    context: _containers.ScalarMap[str, str]
    def __init__(self, user_id: _Optional[int] = ..., k: _Optional[int] = ..., include_copy: bool = ..., context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("item_id", "title", "score", "rank", "copy", "copy_source", "channel", "explore", "score_parts")
    class ScorePartsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    COPY_FIELD_NUMBER: _ClassVar[int]
    COPY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    EXPLORE_FIELD_NUMBER: _ClassVar[int]
    SCORE_PARTS_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    title: str
    score: float
    rank: int
    copy: str
    copy_source: str
    channel: str
    explore: bool
    score_parts: _containers.ScalarMap[str, float]
    def __init__(self, item_id: _Optional[int] = ..., title: _Optional[str] = ..., score: _Optional[float] = ..., rank: _Optional[int] = ..., copy: _Optional[str] = ..., copy_source: _Optional[str] = ..., channel: _Optional[str] = ..., explore: bool = ..., score_parts: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Degradation(_message.Message):
    __slots__ = ("stage", "reason", "fallback")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    stage: str
    reason: str
    fallback: str
    def __init__(self, stage: _Optional[str] = ..., reason: _Optional[str] = ..., fallback: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("request_id", "user_id", "items", "model_versions", "timings_ms", "degraded")
    class ModelVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: int
    items: _containers.RepeatedCompositeFieldContainer[Item]
    model_versions: _containers.ScalarMap[str, str]
    timings_ms: _containers.ScalarMap[str, float]
    degraded: _containers.RepeatedCompositeFieldContainer[Degradation]
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[int] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., model_versions: _Optional[_Mapping[str, str]] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., degraded: _Optional[_Iterable[_Union[Degradation, _Mapping]]] = ...) -> None: ...

class FeedbackEvent(_message.Message):
    __slots__ = ("event_id", "user_id", "item_id", "event_type", "value", "timestamp_ms", "request_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: int
    item_id: int
    event_type: str
    value: float
    timestamp_ms: int
    request_id: str
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[int] = ..., item_id: _Optional[int] = ..., event_type: _Optional[str] = ..., value: _Optional[float] = ..., timestamp_ms: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[FeedbackEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[FeedbackEvent, _Mapping]]] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("accepted", "duplicates", "event_ids", "pushed", "push_error")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    PUSHED_FIELD_NUMBER: _ClassVar[int]
    PUSH_ERROR_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    event_ids: _containers.RepeatedScalarFieldContainer[str]
    pushed: bool
    push_error: str
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., event_ids: _Optional[_Iterable[str]] = ..., pushed: bool = ..., push_error: _Optional[str] = ...) -> None: ...
