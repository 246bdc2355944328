"""The Python worker runtime: imports a Lambda handler once, then serves invocations.

Standard library only. A worker is forked from a zygote (``zygote.py``) that imported this
module, which then calls :func:`serve`; it can also run on its own as
``<python> -I -S -u bootstrap.py <fd>`` with the function's code directory as the working
directory. Either way the environment is an allow-list;
``-I`` keeps this file's directory off ``sys.path``, ``-S`` keeps site-packages (and so
Lamina and grpc) away from user code. ``<fd>`` is one end of a unix socketpair.

Frames, both ways: ``>II`` (header length, body length), a JSON header, raw body bytes.

    invoker → worker   {"type": "init", "handler": "app.handler"}
                       {"type": "invoke", "request_id", "deadline_ms", "invoked_function_arn", "attempt"} + event JSON
    worker → invoker   {"type": "init_ok"} | {"type": "init_error", errorType, errorMessage, stackTrace}
                       {"type": "result"} + result JSON
                       {"type": "error", errorType, errorMessage, stackTrace, "oom": bool}

stdout and stderr are pipes the invoker reads; both are flushed before every reply, so
every line written during an invocation reaches the pipe before the invoker learns that the
invocation ended, and is attributed to that request.
"""

import importlib
import json
import os
import socket
import struct
import sys
import time
import traceback

HEADER = struct.Struct(">II")
#: Lambda's limit on a synchronous response.
MAX_RESPONSE_BYTES = 6 * 1024 * 1024
_THIS_FILE = os.path.abspath(__file__)
#: The reply header of a successful invocation, encoded once.
_RESULT = {"type": "result"}
_RESULT_HEADER = json.dumps(_RESULT).encode()


class Channel:
    """Blocking frame I/O on the socket shared with the invoker."""

    def __init__(self, fd):
        self.sock = socket.socket(fileno=fd)
        # What arrived beyond the frame being read: a frame usually comes in one recv.
        self._buf = bytearray()

    def _fill(self, size):
        """Read until the buffer holds at least ``size`` bytes."""
        buf = self._buf
        while len(buf) < size:
            chunk = self.sock.recv(max(65536, size - len(buf)))
            if not chunk:
                raise EOFError("invoker closed the channel")
            buf += chunk

    def recv(self):
        self._fill(HEADER.size)
        header_len, body_len = HEADER.unpack_from(self._buf)
        end = HEADER.size + header_len + body_len
        self._fill(end)
        buf = self._buf
        header = json.loads(buf[HEADER.size:HEADER.size + header_len])
        body = bytes(buf[HEADER.size + header_len:end]) if body_len else b""
        del buf[:end]
        return header, body

    def send(self, header, body=b""):
        # Logs first: the invoker attributes everything read before a reply to its request.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a user may have replaced or closed the stream
                pass
        raw = _RESULT_HEADER if header is _RESULT else json.dumps(header).encode()
        self.sock.sendall(HEADER.pack(len(raw), len(body)) + raw + body)


#: The function's fields of every context, read from the environment once by :func:`serve`
#: (the environment is the function's from the start; five lookups per call cost as much
#: as decoding the event).
_FUNCTION = ()


def _function_environment():
    env = os.environ
    return (env.get("AWS_LAMBDA_FUNCTION_NAME", ""), env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
            int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")), env.get("AWS_LAMBDA_LOG_GROUP_NAME", ""),
            env.get("AWS_LAMBDA_LOG_STREAM_NAME", ""))


class LambdaContext:
    """The context object of AWS Lambda's Python runtime."""

    def __init__(self, request_id, deadline_ms, invoked_function_arn, attempt=1):
        self.aws_request_id = request_id
        #: Lamina's additions, so a handler can be idempotent: an async invocation keeps its
        #: id (= aws_request_id) on every delivery; ``attempt`` counts deliveries from 1.
        self.invocation_id = request_id
        self.attempt = attempt
        self.invoked_function_arn = invoked_function_arn
        (self.function_name, self.function_version, self.memory_limit_in_mb, self.log_group_name,
         self.log_stream_name) = _FUNCTION or _function_environment()
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self):
        return max(0, int(self._deadline_ms - time.time() * 1000))

    def __repr__(self):
        return (f"LambdaContext(aws_request_id={self.aws_request_id!r}, "
                f"function_name={self.function_name!r}, function_version={self.function_version!r})")


def _user_frames(tb):
    """The traceback as Lambda's ``stackTrace`` list, without this runtime's frames."""
    frames = [f for f in traceback.extract_tb(tb) if os.path.abspath(f.filename) != _THIS_FILE]
    return traceback.format_list(frames)


def _error(error_type, message, stack=None, kind="error"):
    return {"type": kind, "errorType": error_type, "errorMessage": message, "stackTrace": stack or []}


def load_handler(handler):
    """Import the handler's module and find the function; return (function, None) or (None, error)."""
    try:
        modname, fname = handler.rsplit(".", 1)
    except ValueError:
        return None, _error("Runtime.MalformedHandlerName", f"Bad handler '{handler}': expected module.function",
                            kind="init_error")
    try:
        module = importlib.import_module(modname.replace("/", "."))
    except ImportError as exc:
        return None, _error("Runtime.ImportModuleError", f"Unable to import module '{modname}': {exc}",
                            _user_frames(exc.__traceback__), kind="init_error")
    except SyntaxError as exc:
        stack = [f'  File "{exc.filename}" Line {exc.lineno}\n    {(exc.text or "").rstrip()}\n']
        return None, _error("Runtime.UserCodeSyntaxError", f"Syntax error in module '{modname}': {exc}",
                            stack, kind="init_error")
    except MemoryError:
        return None, _error("Runtime.OutOfMemory", "MemoryError during init", kind="init_error") | {"oom": True}
    except Exception as exc:  # noqa: BLE001 - any failure at import is the function's init error
        return None, _error(type(exc).__name__, str(exc), _user_frames(exc.__traceback__), kind="init_error")
    function = getattr(module, fname, None)
    if not callable(function):
        return None, _error("Runtime.HandlerNotFound", f"Handler '{fname}' missing on module '{modname}'",
                            kind="init_error")
    return function, None


def invoke(function, header, body):
    """Run one invocation; return (reply header, reply body)."""
    try:
        event = json.loads(body) if body else {}
    except ValueError as exc:
        return _error("Runtime.UnmarshalError", f"Unable to unmarshal input: {exc}"), b""
    context = LambdaContext(header["request_id"], header["deadline_ms"], header["invoked_function_arn"],
                            header.get("attempt", 1))
    try:
        value = function(event, context)
    except MemoryError:
        return _error("Runtime.OutOfMemory", "MemoryError") | {"oom": True}, b""
    except Exception as exc:  # noqa: BLE001 - the handler's failure is the invocation's result
        try:
            message = str(exc)
        except Exception:  # noqa: BLE001
            message = f"<unprintable {type(exc).__name__}>"
        return _error(type(exc).__name__, message, _user_frames(exc.__traceback__)), b""
    try:
        out = json.dumps(value).encode()
    except MemoryError:
        return _error("Runtime.OutOfMemory", "MemoryError") | {"oom": True}, b""
    except (TypeError, ValueError, RecursionError) as exc:
        return _error("Runtime.MarshalError", f"Unable to marshal response: {exc}"), b""
    if len(out) > MAX_RESPONSE_BYTES:
        return _error("Function.ResponseSizeTooLarge",
                      f"Response payload size ({len(out)} bytes) exceeded maximum allowed payload size "
                      f"({MAX_RESPONSE_BYTES} bytes)."), b""
    return _RESULT, out


def serve(fd, code_dir):
    """Answer INIT, then INVOKE frames on ``fd`` until the invoker closes it; the handler is
    imported from ``code_dir``. Returns the process's exit status."""
    global _FUNCTION
    _FUNCTION = _function_environment()
    channel = Channel(fd)
    sys.path.insert(0, code_dir)
    sys.argv = [os.path.join(code_dir, "__lambda__")]
    for stream in (sys.stdout, sys.stderr):
        if not stream.line_buffering or stream.errors != "backslashreplace":  # the zygote's are
            stream.reconfigure(line_buffering=True, errors="backslashreplace")
    try:
        header, _ = channel.recv()
    except EOFError:
        return 0
    function, failure = load_handler(header["handler"])
    channel.send(failure or {"type": "init_ok"})
    if failure is not None:
        return 0
    while True:
        try:
            header, body = channel.recv()
        except EOFError:
            return 0
        reply, out = invoke(function, header, body)
        del body
        channel.send(reply, out)


def main():
    return serve(int(sys.argv[1]), os.getcwd())


if __name__ == "__main__":
    sys.exit(main())
