from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    SUCCESS: _ClassVar[Outcome]
    FUNCTION_ERROR: _ClassVar[Outcome]
    CRASHED: _ClassVar[Outcome]
    OUT_OF_MEMORY: _ClassVar[Outcome]
    TIMEOUT: _ClassVar[Outcome]
OUTCOME_UNSPECIFIED: Outcome
SUCCESS: Outcome
FUNCTION_ERROR: Outcome
CRASHED: Outcome
OUT_OF_MEMORY: Outcome
TIMEOUT: Outcome

class InvokeRequest(_message.Message):
    __slots__ = ("function", "revision", "request_id", "payload", "attempt", "omit_logs")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    OMIT_LOGS_FIELD_NUMBER: _ClassVar[int]
    function: str
    revision: int
    request_id: str
    payload: bytes
    attempt: int
    omit_logs: bool
    def __init__(self, function: _Optional[str] = ..., revision: _Optional[int] = ..., request_id: _Optional[str] = ..., payload: _Optional[bytes] = ..., attempt: _Optional[int] = ..., omit_logs: _Optional[bool] = ...) -> None: ...

class InvokeResponse(_message.Message):
    __slots__ = ("outcome", "payload", "error_type", "error_message", "stack_trace", "logs", "duration_ms", "init_duration_ms", "cold_start", "max_memory_used_mb", "invoker_id")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STACK_TRACE_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    INIT_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_USED_MB_FIELD_NUMBER: _ClassVar[int]
    INVOKER_ID_FIELD_NUMBER: _ClassVar[int]
    outcome: Outcome
    payload: bytes
    error_type: str
    error_message: str
    stack_trace: _containers.RepeatedScalarFieldContainer[str]
    logs: str
    duration_ms: float
    init_duration_ms: float
    cold_start: bool
    max_memory_used_mb: int
    invoker_id: str
    def __init__(self, outcome: _Optional[_Union[Outcome, str]] = ..., payload: _Optional[bytes] = ..., error_type: _Optional[str] = ..., error_message: _Optional[str] = ..., stack_trace: _Optional[_Iterable[str]] = ..., logs: _Optional[str] = ..., duration_ms: _Optional[float] = ..., init_duration_ms: _Optional[float] = ..., cold_start: _Optional[bool] = ..., max_memory_used_mb: _Optional[int] = ..., invoker_id: _Optional[str] = ...) -> None: ...

class InvokerHealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InvokerHealthResponse(_message.Message):
    __slots__ = ("invoker_id", "isolation", "in_flight", "warm_workers", "stream_address", "stream_socket")
    INVOKER_ID_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    WARM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    STREAM_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STREAM_SOCKET_FIELD_NUMBER: _ClassVar[int]
    invoker_id: str
    isolation: str
    in_flight: int
    warm_workers: int
    stream_address: str
    stream_socket: str
    def __init__(self, invoker_id: _Optional[str] = ..., isolation: _Optional[str] = ..., in_flight: _Optional[int] = ..., warm_workers: _Optional[int] = ..., stream_address: _Optional[str] = ..., stream_socket: _Optional[str] = ...) -> None: ...

class InvokerMetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InvokerMetricsResponse(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class InvokeStreamFrame(_message.Message):
    __slots__ = ("tag", "request", "response", "error", "hello")
    TAG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    tag: int
    request: InvokeRequest
    response: InvokeResponse
    error: StreamError
    hello: StreamHello
    def __init__(self, tag: _Optional[int] = ..., request: _Optional[_Union[InvokeRequest, _Mapping]] = ..., response: _Optional[_Union[InvokeResponse, _Mapping]] = ..., error: _Optional[_Union[StreamError, _Mapping]] = ..., hello: _Optional[_Union[StreamHello, _Mapping]] = ...) -> None: ...

class StreamHello(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class StreamError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
