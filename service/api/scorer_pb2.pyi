from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreRequest(_message.Message):
    __slots__ = ("user_id", "item_ids", "request_time_ms")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    request_time_ms: int
    def __init__(self, user_id: _Optional[int] = ..., item_ids: _Optional[_Iterable[int]] = ..., request_time_ms: _Optional[int] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scores", "model_version", "degraded", "degraded_reasons")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    model_version: str
    degraded: bool
    degraded_reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., model_version: _Optional[str] = ..., degraded: _Optional[bool] = ..., degraded_reasons: _Optional[_Iterable[str]] = ...) -> None: ...

class RecordQueryRequest(_message.Message):
    __slots__ = ("user_id", "token_ids", "timestamp_ms")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    timestamp_ms: int
    def __init__(self, user_id: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class RecordQueryResponse(_message.Message):
    __slots__ = ("history_length",)
    HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    history_length: int
    def __init__(self, history_length: _Optional[int] = ...) -> None: ...

class RecordClicksRequest(_message.Message):
    __slots__ = ("user_id", "item_ids", "timestamp_ms")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    timestamp_ms: int
    def __init__(self, user_id: _Optional[int] = ..., item_ids: _Optional[_Iterable[int]] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class RecordClicksResponse(_message.Message):
    __slots__ = ("history_length",)
    HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    history_length: int
    def __init__(self, history_length: _Optional[int] = ...) -> None: ...

class RecordSearchClicksRequest(_message.Message):
    __slots__ = ("user_id", "search_timestamp_ms", "item_ids")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SEARCH_TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    search_timestamp_ms: int
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, user_id: _Optional[int] = ..., search_timestamp_ms: _Optional[int] = ..., item_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class RecordSearchClicksResponse(_message.Message):
    __slots__ = ("clicks_in_search",)
    CLICKS_IN_SEARCH_FIELD_NUMBER: _ClassVar[int]
    clicks_in_search: int
    def __init__(self, clicks_in_search: _Optional[int] = ...) -> None: ...
