from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FunctionSpec(_message.Message):
    __slots__ = ("name", "runtime", "handler", "memory_mb", "timeout_s", "environment", "code_sha256", "description", "egress", "min_scale", "max_scale", "concurrency", "keep_alive_s", "max_retries", "retry_delay_s")
    class EnvironmentEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    CODE_SHA256_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    MIN_SCALE_FIELD_NUMBER: _ClassVar[int]
    MAX_SCALE_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_S_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAY_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    runtime: str
    handler: str
    memory_mb: int
    timeout_s: int
    environment: _containers.ScalarMap[str, str]
    code_sha256: str
    description: str
    egress: str
    min_scale: int
    max_scale: int
    concurrency: int
    keep_alive_s: int
    max_retries: int
    retry_delay_s: float
    def __init__(self, name: _Optional[str] = ..., runtime: _Optional[str] = ..., handler: _Optional[str] = ..., memory_mb: _Optional[int] = ..., timeout_s: _Optional[int] = ..., environment: _Optional[_Mapping[str, str]] = ..., code_sha256: _Optional[str] = ..., description: _Optional[str] = ..., egress: _Optional[str] = ..., min_scale: _Optional[int] = ..., max_scale: _Optional[int] = ..., concurrency: _Optional[int] = ..., keep_alive_s: _Optional[int] = ..., max_retries: _Optional[int] = ..., retry_delay_s: _Optional[float] = ...) -> None: ...

class Function(_message.Message):
    __slots__ = ("spec", "revision", "code_size", "created_at", "updated_at")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CODE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    spec: FunctionSpec
    revision: int
    code_size: int
    created_at: float
    updated_at: float
    def __init__(self, spec: _Optional[_Union[FunctionSpec, _Mapping]] = ..., revision: _Optional[int] = ..., code_size: _Optional[int] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ...) -> None: ...

class CreateFunctionRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: FunctionSpec
    def __init__(self, spec: _Optional[_Union[FunctionSpec, _Mapping]] = ...) -> None: ...

class UpdateFunctionRequest(_message.Message):
    __slots__ = ("spec", "expected_revision")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    spec: FunctionSpec
    expected_revision: int
    def __init__(self, spec: _Optional[_Union[FunctionSpec, _Mapping]] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class GetFunctionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListFunctionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListFunctionsResponse(_message.Message):
    __slots__ = ("functions", "next_page_token")
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    functions: _containers.RepeatedCompositeFieldContainer[Function]
    next_page_token: str
    def __init__(self, functions: _Optional[_Iterable[_Union[Function, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteFunctionRequest(_message.Message):
    __slots__ = ("name", "expected_revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    expected_revision: int
    def __init__(self, name: _Optional[str] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class DeleteFunctionResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class WatchFunctionsRequest(_message.Message):
    __slots__ = ("after_revision",)
    AFTER_REVISION_FIELD_NUMBER: _ClassVar[int]
    after_revision: int
    def __init__(self, after_revision: _Optional[int] = ...) -> None: ...

class FunctionEvent(_message.Message):
    __slots__ = ("type", "function", "revision")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[FunctionEvent.Type]
        PUT: _ClassVar[FunctionEvent.Type]
        DELETE: _ClassVar[FunctionEvent.Type]
        RESET: _ClassVar[FunctionEvent.Type]
        SYNCED: _ClassVar[FunctionEvent.Type]
    TYPE_UNSPECIFIED: FunctionEvent.Type
    PUT: FunctionEvent.Type
    DELETE: FunctionEvent.Type
    RESET: FunctionEvent.Type
    SYNCED: FunctionEvent.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    type: FunctionEvent.Type
    function: Function
    revision: int
    def __init__(self, type: _Optional[_Union[FunctionEvent.Type, str]] = ..., function: _Optional[_Union[Function, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class CodeChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class CodeRef(_message.Message):
    __slots__ = ("sha256", "size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class DownloadCodeRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class AuthenticateRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class Principal(_message.Message):
    __slots__ = ("key_id", "name", "admin")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    name: str
    admin: bool
    def __init__(self, key_id: _Optional[str] = ..., name: _Optional[str] = ..., admin: _Optional[bool] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("name", "admin")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    admin: bool
    def __init__(self, name: _Optional[str] = ..., admin: _Optional[bool] = ...) -> None: ...

class CreateApiKeyResponse(_message.Message):
    __slots__ = ("principal", "key")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    principal: Principal
    key: str
    def __init__(self, principal: _Optional[_Union[Principal, _Mapping]] = ..., key: _Optional[str] = ...) -> None: ...

class RegisterInvokerRequest(_message.Message):
    __slots__ = ("invoker_id", "address", "memory_capacity_mb")
    INVOKER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_CAPACITY_MB_FIELD_NUMBER: _ClassVar[int]
    invoker_id: str
    address: str
    memory_capacity_mb: int
    def __init__(self, invoker_id: _Optional[str] = ..., address: _Optional[str] = ..., memory_capacity_mb: _Optional[int] = ...) -> None: ...

class RegisterInvokerResponse(_message.Message):
    __slots__ = ("heartbeat_interval_s",)
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_s: float
    def __init__(self, heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("invoker_id", "load")
    INVOKER_ID_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    invoker_id: str
    load: InvokerLoad
    def __init__(self, invoker_id: _Optional[str] = ..., load: _Optional[_Union[InvokerLoad, _Mapping]] = ...) -> None: ...

class InvokerLoad(_message.Message):
    __slots__ = ("in_flight", "warm_workers", "busy_workers", "reserved_memory_mb", "queued")
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    WARM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    BUSY_WORKERS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    in_flight: int
    warm_workers: int
    busy_workers: int
    reserved_memory_mb: int
    queued: int
    def __init__(self, in_flight: _Optional[int] = ..., warm_workers: _Optional[int] = ..., busy_workers: _Optional[int] = ..., reserved_memory_mb: _Optional[int] = ..., queued: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...

class ListInvokersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InvokerInfo(_message.Message):
    __slots__ = ("invoker_id", "address", "memory_capacity_mb", "last_heartbeat_at", "load")
    INVOKER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_CAPACITY_MB_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_AT_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    invoker_id: str
    address: str
    memory_capacity_mb: int
    last_heartbeat_at: float
    load: InvokerLoad
    def __init__(self, invoker_id: _Optional[str] = ..., address: _Optional[str] = ..., memory_capacity_mb: _Optional[int] = ..., last_heartbeat_at: _Optional[float] = ..., load: _Optional[_Union[InvokerLoad, _Mapping]] = ...) -> None: ...

class ListInvokersResponse(_message.Message):
    __slots__ = ("invokers",)
    INVOKERS_FIELD_NUMBER: _ClassVar[int]
    invokers: _containers.RepeatedCompositeFieldContainer[InvokerInfo]
    def __init__(self, invokers: _Optional[_Iterable[_Union[InvokerInfo, _Mapping]]] = ...) -> None: ...

class LogRecord(_message.Message):
    __slots__ = ("function", "request_id", "timestamp", "stream", "message", "id")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    function: str
    request_id: str
    timestamp: float
    stream: str
    message: str
    id: int
    def __init__(self, function: _Optional[str] = ..., request_id: _Optional[str] = ..., timestamp: _Optional[float] = ..., stream: _Optional[str] = ..., message: _Optional[str] = ..., id: _Optional[int] = ...) -> None: ...

class PutLogsRequest(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[LogRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[LogRecord, _Mapping]]] = ...) -> None: ...

class PutLogsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QueryLogsRequest(_message.Message):
    __slots__ = ("function", "request_id", "after_id", "limit")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    function: str
    request_id: str
    after_id: int
    limit: int
    def __init__(self, function: _Optional[str] = ..., request_id: _Optional[str] = ..., after_id: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class QueryLogsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[LogRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[LogRecord, _Mapping]]] = ...) -> None: ...

class InvocationRecord(_message.Message):
    __slots__ = ("request_id", "function", "revision", "version", "invoker_id", "start", "duration_ms", "billed_ms", "memory_mb", "max_memory_used_mb", "init_duration_ms", "cold_start", "outcome", "error_type")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INVOKER_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    BILLED_MS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_USED_MB_FIELD_NUMBER: _ClassVar[int]
    INIT_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    function: str
    revision: int
    version: str
    invoker_id: str
    start: float
    duration_ms: float
    billed_ms: int
    memory_mb: int
    max_memory_used_mb: int
    init_duration_ms: float
    cold_start: bool
    outcome: str
    error_type: str
    def __init__(self, request_id: _Optional[str] = ..., function: _Optional[str] = ..., revision: _Optional[int] = ..., version: _Optional[str] = ..., invoker_id: _Optional[str] = ..., start: _Optional[float] = ..., duration_ms: _Optional[float] = ..., billed_ms: _Optional[int] = ..., memory_mb: _Optional[int] = ..., max_memory_used_mb: _Optional[int] = ..., init_duration_ms: _Optional[float] = ..., cold_start: _Optional[bool] = ..., outcome: _Optional[str] = ..., error_type: _Optional[str] = ...) -> None: ...

class PutRecordsRequest(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[InvocationRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[InvocationRecord, _Mapping]]] = ...) -> None: ...

class PutRecordsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QueryUsageRequest(_message.Message):
    __slots__ = ("since", "until", "function")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    since: float
    until: float
    function: str
    def __init__(self, since: _Optional[float] = ..., until: _Optional[float] = ..., function: _Optional[str] = ...) -> None: ...

class FunctionUsage(_message.Message):
    __slots__ = ("function", "invocations", "errors", "cold_starts", "billed_ms", "gb_seconds")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    COLD_STARTS_FIELD_NUMBER: _ClassVar[int]
    BILLED_MS_FIELD_NUMBER: _ClassVar[int]
    GB_SECONDS_FIELD_NUMBER: _ClassVar[int]
    function: str
    invocations: int
    errors: int
    cold_starts: int
    billed_ms: int
    gb_seconds: float
    def __init__(self, function: _Optional[str] = ..., invocations: _Optional[int] = ..., errors: _Optional[int] = ..., cold_starts: _Optional[int] = ..., billed_ms: _Optional[int] = ..., gb_seconds: _Optional[float] = ...) -> None: ...

class QueryUsageResponse(_message.Message):
    __slots__ = ("usage",)
    USAGE_FIELD_NUMBER: _ClassVar[int]
    usage: _containers.RepeatedCompositeFieldContainer[FunctionUsage]
    def __init__(self, usage: _Optional[_Iterable[_Union[FunctionUsage, _Mapping]]] = ...) -> None: ...

class QueryRecordsRequest(_message.Message):
    __slots__ = ("function", "limit")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    function: str
    limit: int
    def __init__(self, function: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class QueryRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[InvocationRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[InvocationRecord, _Mapping]]] = ...) -> None: ...

class AsyncInvocation(_message.Message):
    __slots__ = ("id", "function", "payload", "state", "attempts", "created_at", "enqueued_at", "due_at", "started_at", "finished_at", "updated_at", "lease_token", "idempotency_key", "callback_url", "result", "error_type", "error_message", "logs")
    ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ENQUEUED_AT_FIELD_NUMBER: _ClassVar[int]
    DUE_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_URL_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    id: str
    function: str
    payload: bytes
    state: str
    attempts: int
    created_at: float
    enqueued_at: float
    due_at: float
    started_at: float
    finished_at: float
    updated_at: float
    lease_token: str
    idempotency_key: str
    callback_url: str
    result: bytes
    error_type: str
    error_message: str
    logs: str
    def __init__(self, id: _Optional[str] = ..., function: _Optional[str] = ..., payload: _Optional[bytes] = ..., state: _Optional[str] = ..., attempts: _Optional[int] = ..., created_at: _Optional[float] = ..., enqueued_at: _Optional[float] = ..., due_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., lease_token: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., callback_url: _Optional[str] = ..., result: _Optional[bytes] = ..., error_type: _Optional[str] = ..., error_message: _Optional[str] = ..., logs: _Optional[str] = ...) -> None: ...

class EnqueueInvocationRequest(_message.Message):
    __slots__ = ("function", "payload", "idempotency_key", "idempotency_window_s", "callback_url")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_URL_FIELD_NUMBER: _ClassVar[int]
    function: str
    payload: bytes
    idempotency_key: str
    idempotency_window_s: float
    callback_url: str
    def __init__(self, function: _Optional[str] = ..., payload: _Optional[bytes] = ..., idempotency_key: _Optional[str] = ..., idempotency_window_s: _Optional[float] = ..., callback_url: _Optional[str] = ...) -> None: ...

class EnqueueInvocationResponse(_message.Message):
    __slots__ = ("invocation", "created")
    INVOCATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    invocation: AsyncInvocation
    created: bool
    def __init__(self, invocation: _Optional[_Union[AsyncInvocation, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class EnqueueInvocationsRequest(_message.Message):
    __slots__ = ("invocations",)
    INVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    invocations: _containers.RepeatedCompositeFieldContainer[EnqueueInvocationRequest]
    def __init__(self, invocations: _Optional[_Iterable[_Union[EnqueueInvocationRequest, _Mapping]]] = ...) -> None: ...

class EnqueueInvocationsResponse(_message.Message):
    __slots__ = ("invocations",)
    INVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    invocations: _containers.RepeatedCompositeFieldContainer[EnqueueInvocationResponse]
    def __init__(self, invocations: _Optional[_Iterable[_Union[EnqueueInvocationResponse, _Mapping]]] = ...) -> None: ...

class LeaseInvocationsRequest(_message.Message):
    __slots__ = ("limit", "lease_s", "concurrency")
    class ConcurrencyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    limit: int
    lease_s: float
    concurrency: _containers.ScalarMap[str, int]
    def __init__(self, limit: _Optional[int] = ..., lease_s: _Optional[float] = ..., concurrency: _Optional[_Mapping[str, int]] = ...) -> None: ...

class LeaseInvocationsResponse(_message.Message):
    __slots__ = ("invocations",)
    INVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    invocations: _containers.RepeatedCompositeFieldContainer[AsyncInvocation]
    def __init__(self, invocations: _Optional[_Iterable[_Union[AsyncInvocation, _Mapping]]] = ...) -> None: ...

class ExtendLeaseRequest(_message.Message):
    __slots__ = ("id", "lease_token", "lease_s")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    id: str
    lease_token: str
    lease_s: float
    def __init__(self, id: _Optional[str] = ..., lease_token: _Optional[str] = ..., lease_s: _Optional[float] = ...) -> None: ...

class ExtendLeaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReleaseInvocationRequest(_message.Message):
    __slots__ = ("id", "lease_token", "action", "delay_s", "count_attempt", "result", "error_type", "error_message", "logs")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[ReleaseInvocationRequest.Action]
        COMPLETE: _ClassVar[ReleaseInvocationRequest.Action]
        RETRY: _ClassVar[ReleaseInvocationRequest.Action]
        DEAD_LETTER: _ClassVar[ReleaseInvocationRequest.Action]
    ACTION_UNSPECIFIED: ReleaseInvocationRequest.Action
    COMPLETE: ReleaseInvocationRequest.Action
    RETRY: ReleaseInvocationRequest.Action
    DEAD_LETTER: ReleaseInvocationRequest.Action
    ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DELAY_S_FIELD_NUMBER: _ClassVar[int]
    COUNT_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    id: str
    lease_token: str
    action: ReleaseInvocationRequest.Action
    delay_s: float
    count_attempt: bool
    result: bytes
    error_type: str
    error_message: str
    logs: str
    def __init__(self, id: _Optional[str] = ..., lease_token: _Optional[str] = ..., action: _Optional[_Union[ReleaseInvocationRequest.Action, str]] = ..., delay_s: _Optional[float] = ..., count_attempt: _Optional[bool] = ..., result: _Optional[bytes] = ..., error_type: _Optional[str] = ..., error_message: _Optional[str] = ..., logs: _Optional[str] = ...) -> None: ...

class ReleaseInvocationsRequest(_message.Message):
    __slots__ = ("releases",)
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    releases: _containers.RepeatedCompositeFieldContainer[ReleaseInvocationRequest]
    def __init__(self, releases: _Optional[_Iterable[_Union[ReleaseInvocationRequest, _Mapping]]] = ...) -> None: ...

class ReleaseInvocationsResponse(_message.Message):
    __slots__ = ("released",)
    class Released(_message.Message):
        __slots__ = ("invocation", "error_code", "error_message")
        INVOCATION_FIELD_NUMBER: _ClassVar[int]
        ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
        ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
        invocation: AsyncInvocation
        error_code: str
        error_message: str
        def __init__(self, invocation: _Optional[_Union[AsyncInvocation, _Mapping]] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: _containers.RepeatedCompositeFieldContainer[ReleaseInvocationsResponse.Released]
    def __init__(self, released: _Optional[_Iterable[_Union[ReleaseInvocationsResponse.Released, _Mapping]]] = ...) -> None: ...

class GetInvocationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelInvocationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("function", "limit")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    function: str
    limit: int
    def __init__(self, function: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("invocations",)
    INVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    invocations: _containers.RepeatedCompositeFieldContainer[AsyncInvocation]
    def __init__(self, invocations: _Optional[_Iterable[_Union[AsyncInvocation, _Mapping]]] = ...) -> None: ...

class RedriveDeadLettersRequest(_message.Message):
    __slots__ = ("function", "ids")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    function: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, function: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PurgeDeadLettersRequest(_message.Message):
    __slots__ = ("function",)
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    function: str
    def __init__(self, function: _Optional[str] = ...) -> None: ...

class DeadLettersCount(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class GetQueueStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FunctionQueueStats(_message.Message):
    __slots__ = ("function", "waiting", "oldest_enqueued_at", "dead_letters")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    OLDEST_ENQUEUED_AT_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    function: str
    waiting: int
    oldest_enqueued_at: float
    dead_letters: int
    def __init__(self, function: _Optional[str] = ..., waiting: _Optional[int] = ..., oldest_enqueued_at: _Optional[float] = ..., dead_letters: _Optional[int] = ...) -> None: ...

class GetQueueStatsResponse(_message.Message):
    __slots__ = ("functions",)
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    functions: _containers.RepeatedCompositeFieldContainer[FunctionQueueStats]
    def __init__(self, functions: _Optional[_Iterable[_Union[FunctionQueueStats, _Mapping]]] = ...) -> None: ...

class PruneInvocationsRequest(_message.Message):
    __slots__ = ("retention_s", "limit")
    RETENTION_S_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    retention_s: float
    limit: int
    def __init__(self, retention_s: _Optional[float] = ..., limit: _Optional[int] = ...) -> None: ...

class PruneInvocationsResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class CronTrigger(_message.Message):
    __slots__ = ("id", "function", "schedule", "timezone", "payload", "overlap", "missed", "created_at", "last_tick")
    ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    MISSED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_TICK_FIELD_NUMBER: _ClassVar[int]
    id: str
    function: str
    schedule: str
    timezone: str
    payload: bytes
    overlap: str
    missed: str
    created_at: float
    last_tick: float
    def __init__(self, id: _Optional[str] = ..., function: _Optional[str] = ..., schedule: _Optional[str] = ..., timezone: _Optional[str] = ..., payload: _Optional[bytes] = ..., overlap: _Optional[str] = ..., missed: _Optional[str] = ..., created_at: _Optional[float] = ..., last_tick: _Optional[float] = ...) -> None: ...

class AddTriggerRequest(_message.Message):
    __slots__ = ("trigger", "min_interval_s")
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    MIN_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    trigger: CronTrigger
    min_interval_s: float
    def __init__(self, trigger: _Optional[_Union[CronTrigger, _Mapping]] = ..., min_interval_s: _Optional[float] = ...) -> None: ...

class ListTriggersRequest(_message.Message):
    __slots__ = ("function",)
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    function: str
    def __init__(self, function: _Optional[str] = ...) -> None: ...

class ListTriggersResponse(_message.Message):
    __slots__ = ("triggers",)
    TRIGGERS_FIELD_NUMBER: _ClassVar[int]
    triggers: _containers.RepeatedCompositeFieldContainer[CronTrigger]
    def __init__(self, triggers: _Optional[_Iterable[_Union[CronTrigger, _Mapping]]] = ...) -> None: ...

class RemoveTriggerRequest(_message.Message):
    __slots__ = ("function", "id")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    function: str
    id: str
    def __init__(self, function: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class RemoveTriggerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AcquireLeaseRequest(_message.Message):
    __slots__ = ("name", "holder", "ttl_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    holder: str
    ttl_s: float
    def __init__(self, name: _Optional[str] = ..., holder: _Optional[str] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class LeaseState(_message.Message):
    __slots__ = ("name", "holder", "expires_at", "held")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    name: str
    holder: str
    expires_at: float
    held: bool
    def __init__(self, name: _Optional[str] = ..., holder: _Optional[str] = ..., expires_at: _Optional[float] = ..., held: _Optional[bool] = ...) -> None: ...

class ReleaseLeaseRequest(_message.Message):
    __slots__ = ("name", "holder")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    name: str
    holder: str
    def __init__(self, name: _Optional[str] = ..., holder: _Optional[str] = ...) -> None: ...

class ReleaseLeaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class CronFire(_message.Message):
    __slots__ = ("id", "trigger_id", "function", "scheduled_at", "fired_at", "outcome", "invocation_id", "detail")
    ID_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_AT_FIELD_NUMBER: _ClassVar[int]
    FIRED_AT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    id: int
    trigger_id: str
    function: str
    scheduled_at: float
    fired_at: float
    outcome: str
    invocation_id: str
    detail: str
    def __init__(self, id: _Optional[int] = ..., trigger_id: _Optional[str] = ..., function: _Optional[str] = ..., scheduled_at: _Optional[float] = ..., fired_at: _Optional[float] = ..., outcome: _Optional[str] = ..., invocation_id: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ClaimFiresRequest(_message.Message):
    __slots__ = ("lease", "holder", "ticks")
    class Tick(_message.Message):
        __slots__ = ("trigger_id", "scheduled_at", "detail")
        TRIGGER_ID_FIELD_NUMBER: _ClassVar[int]
        SCHEDULED_AT_FIELD_NUMBER: _ClassVar[int]
        DETAIL_FIELD_NUMBER: _ClassVar[int]
        trigger_id: str
        scheduled_at: float
        detail: str
        def __init__(self, trigger_id: _Optional[str] = ..., scheduled_at: _Optional[float] = ..., detail: _Optional[str] = ...) -> None: ...
    LEASE_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    TICKS_FIELD_NUMBER: _ClassVar[int]
    lease: str
    holder: str
    ticks: _containers.RepeatedCompositeFieldContainer[ClaimFiresRequest.Tick]
    def __init__(self, lease: _Optional[str] = ..., holder: _Optional[str] = ..., ticks: _Optional[_Iterable[_Union[ClaimFiresRequest.Tick, _Mapping]]] = ...) -> None: ...

class ClaimFiresResponse(_message.Message):
    __slots__ = ("claims",)
    class Claim(_message.Message):
        __slots__ = ("fire", "claimed", "previous")
        FIRE_FIELD_NUMBER: _ClassVar[int]
        CLAIMED_FIELD_NUMBER: _ClassVar[int]
        PREVIOUS_FIELD_NUMBER: _ClassVar[int]
        fire: CronFire
        claimed: bool
        previous: CronFire
        def __init__(self, fire: _Optional[_Union[CronFire, _Mapping]] = ..., claimed: _Optional[bool] = ..., previous: _Optional[_Union[CronFire, _Mapping]] = ...) -> None: ...
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    claims: _containers.RepeatedCompositeFieldContainer[ClaimFiresResponse.Claim]
    def __init__(self, claims: _Optional[_Iterable[_Union[ClaimFiresResponse.Claim, _Mapping]]] = ...) -> None: ...

class FinishFiresRequest(_message.Message):
    __slots__ = ("fires",)
    class Finish(_message.Message):
        __slots__ = ("id", "outcome", "invocation_id", "detail")
        ID_FIELD_NUMBER: _ClassVar[int]
        OUTCOME_FIELD_NUMBER: _ClassVar[int]
        INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
        DETAIL_FIELD_NUMBER: _ClassVar[int]
        id: int
        outcome: str
        invocation_id: str
        detail: str
        def __init__(self, id: _Optional[int] = ..., outcome: _Optional[str] = ..., invocation_id: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...
    FIRES_FIELD_NUMBER: _ClassVar[int]
    fires: _containers.RepeatedCompositeFieldContainer[FinishFiresRequest.Finish]
    def __init__(self, fires: _Optional[_Iterable[_Union[FinishFiresRequest.Finish, _Mapping]]] = ...) -> None: ...

class FinishFiresResponse(_message.Message):
    __slots__ = ("finished",)
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    finished: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, finished: _Optional[_Iterable[bool]] = ...) -> None: ...

class ListFiresRequest(_message.Message):
    __slots__ = ("function", "trigger_id", "limit", "outcome")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    function: str
    trigger_id: str
    limit: int
    outcome: str
    def __init__(self, function: _Optional[str] = ..., trigger_id: _Optional[str] = ..., limit: _Optional[int] = ..., outcome: _Optional[str] = ...) -> None: ...

class ListFiresResponse(_message.Message):
    __slots__ = ("fires",)
    FIRES_FIELD_NUMBER: _ClassVar[int]
    fires: _containers.RepeatedCompositeFieldContainer[CronFire]
    def __init__(self, fires: _Optional[_Iterable[_Union[CronFire, _Mapping]]] = ...) -> None: ...

class GetMetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetMetricsResponse(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...
