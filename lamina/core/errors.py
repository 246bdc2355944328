"""The one error tree of Lamina.

Every platform error is a :class:`LaminaError`. Adapters translate library errors into
these (``raise NotFound(...) from exc``); the HTTP status and the gRPC status of each are
given in exactly one table each (``HTTP_STATUS`` here and ``lamina.wire.GRPC_STATUS``).
A user function's failure is never one of these: it is an invocation *result*.
"""

from __future__ import annotations


class LaminaError(Exception):
    """Base of every error the platform raises on purpose."""

    #: A stable, machine-readable code, sent on the wire and in HTTP bodies.
    code = "Internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidSpec(LaminaError):
    """The request is malformed: a bad name, field, zip or payload."""

    code = "InvalidSpec"


class NotFound(LaminaError):
    """The named thing does not exist."""

    code = "NotFound"

    @classmethod
    def function(cls, name: str) -> NotFound:
        return cls(f"function {name!r} not found")


class Conflict(LaminaError):
    """The write lost a race (revision mismatch) or the thing already exists."""

    code = "Conflict"


class Unauthenticated(LaminaError):
    """No API key, or one that is unknown or revoked."""

    code = "Unauthenticated"


class LimitExceeded(LaminaError):
    """A size or count limit was exceeded (payload, zip, environment)."""

    code = "LimitExceeded"


class TooManyRequests(LimitExceeded):
    """Too many invocations at once: a function's reserved concurrency and its queue are
    full, or no invoker has room. The caller should retry after ``retry_after_s``."""

    code = "TooManyRequests"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        #: Whole seconds, at least 1, for the ``Retry-After`` header.
        self.retry_after_s = max(1, int(retry_after_s))


class CallerGone(LaminaError):
    """The caller disconnected before its request was served; nobody reads the answer."""

    code = "CallerGone"


class Unavailable(LaminaError):
    """A component the request needs is unreachable or not ready; retrying may succeed."""

    code = "Unavailable"


#: HTTP status of each error class, the gateway's only mapping table.
HTTP_STATUS: dict[type[LaminaError], int] = {
    InvalidSpec: 400,
    Unauthenticated: 401,
    NotFound: 404,
    Conflict: 409,
    LimitExceeded: 413,
    TooManyRequests: 429,
    CallerGone: 499,  # nginx's "client closed request": in the request metrics, sent to nobody
    Unavailable: 503,
    LaminaError: 500,
}

BY_CODE: dict[str, type[LaminaError]] = {cls.code: cls for cls in HTTP_STATUS}


def http_status(error: LaminaError) -> int:
    """The HTTP status of ``error``: the entry of its nearest class in ``HTTP_STATUS``."""
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500
