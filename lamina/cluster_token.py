"""The shared secret between Lamina's own processes (controller, gateways, invokers).

The controller's gRPC API is the platform's control plane: it mints API keys, serves every
function's code and environment; an invoker runs any function it is asked to, past the
gateway's keys and concurrency limits. Only Lamina's own processes may call them, yet user
code runs close to them — in the unprivileged `pod` tier a worker shares its invoker's
network, and in a cluster the controller's address is reachable from every invoker pod. So
every gRPC call carries ``authorization: Bearer <LAMINA_CLUSTER_TOKEN>`` (added by
:func:`client_interceptors`), the controller and the invokers refuse any call without it
(:class:`TokenCheck`) with UNAUTHENTICATED, and the invocation stream starts with a hello
frame carrying it (``invoker/stream.py``). The token lives in the processes' environment,
which workers never inherit nor can read (docs/sandbox.md).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

_KEY = "authorization"
#: Shortest token accepted: 128 bits as URL-safe base64 (``secrets.token_urlsafe(16)``).
MIN_TOKEN_CHARS = 22


def check_token(token: str) -> None:
    """Raise ``ValueError`` for a token too short to be a secret."""
    if token and len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"LAMINA_CLUSTER_TOKEN must be at least {MIN_TOKEN_CHARS} characters (a random secret, "
                         "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")


class _WithToken:
    def __init__(self, token: str) -> None:
        self._pair = (_KEY, f"Bearer {token}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(*self._pair)
        return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                          details.wait_for_ready)


# One class per kind of call: grpc.aio files each interceptor under the first kind it is an
# instance of, so a single class for all four would only ever see unary calls.
class _UnaryUnary(_WithToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request)


class _UnaryStream(_WithToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request)


class _StreamUnary(_WithToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request_iterator)


class _StreamStream(_WithToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request_iterator)


def client_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """The interceptors that add ``token`` to every call of a channel (none without one)."""
    if not token:
        return []
    return [kind(token) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


class TokenCheck(grpc.aio.ServerInterceptor):
    """Refuses every call whose metadata lacks ``authorization: Bearer <token>``."""

    def __init__(self, token: str, who: str = "controller") -> None:
        self._expected = f"Bearer {token}".encode()
        self._who = who

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        for key, value in handler_call_details.invocation_metadata or ():
            if key == _KEY:
                given = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(given, self._expected):
                    return await continuation(handler_call_details)
                break
        handler = await continuation(handler_call_details)
        return _refusal(handler, f"this {self._who} requires the cluster token (LAMINA_CLUSTER_TOKEN) from its callers")


def _refusal(handler: grpc.RpcMethodHandler | None, why: str) -> grpc.RpcMethodHandler | None:
    """A handler of the same kind as ``handler`` that aborts with UNAUTHENTICATED."""
    if handler is None:
        return None  # unknown method: gRPC answers UNIMPLEMENTED

    async def _refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)

    async def _refuse_stream(request: Any, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        await _refuse(request, context)
        yield  # pragma: no cover - never reached: abort raises

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_refuse_stream, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_refuse, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_refuse_stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(_refuse, **kwargs)
