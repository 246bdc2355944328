"""One worker: a runtime process that imports a handler once and runs it once at a time.

The worker owns its process (forked by its sandbox slot's zygote, see ``invoker/zygote.py``),
the socket it speaks frames on (see ``runtimes/python/bootstrap.py``), the pipes its
stdout/stderr go to, and its sandbox slot.
:meth:`Worker.invoke` is the one place where whatever happened in the process becomes an
:class:`InvocationResult`: a reply, or — when none came — a classification of why.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from invoker.channel import FRAME, Channel, NoReply
from invoker.logship import LogCapture
from invoker.runtimes import is_exec_runtime, launch_argv, runtime_dir
from invoker.runtimes import node as node_runtime
from invoker.sandboxes import Sandbox, Slot
from invoker.sandboxes.sandbox import StemCell
from invoker.sandboxes.slots import MAX_PIDS, Launch
from invoker.zygote import decode_status
from lamina.core.functions import Function
from lamina.core.invocations import InvocationResult, Outcome
from lamina.core.logs import LogRecord
from lamina.core.records import billed_ms

LogSink = Callable[[LogRecord], None]

REGION = "us-east-1"
ACCOUNT = "000000000000"
#: A line longer than this is cut, so one newline-free stream cannot grow a buffer forever.
MAX_LINE_BYTES = 64 * 1024
#: How long a runtime that closed its socket may take to exit before it is killed.
EXIT_GRACE_S = 2.0


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to start: the function's configuration at one revision."""

    function: str
    revision: int
    handler: str
    memory_mb: int
    timeout_s: float
    code_dir: Path
    interpreter: str
    environment: dict[str, str] = field(default_factory=dict)
    #: The function's runtime name (``python3.11``, ``nodejs20``); empty means Python.
    runtime: str = ""
    #: ``internet`` or ``none`` (``lamina.core.functions.EGRESS``).
    egress: str = "internet"

    @classmethod
    def of(cls, fn: Function, code_dir: Path, interpreter: str) -> WorkerSpec:
        s = fn.spec
        return cls(s.name, fn.revision, s.handler, s.memory_mb, s.timeout_s, code_dir, interpreter,
                   dict(s.environment), s.runtime, s.egress)

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.function}"


def worker_environment(spec: WorkerSpec, worker_id: str, task_root: str = "", runtime_root: str = "") -> dict[str, str]:
    """The worker's whole environment: the function's variables plus Lambda's, never the
    invoker's own (the function's keys cannot shadow these: the spec validation reserves them).
    ``task_root``/``runtime_root``: where the worker sees its code and runtime."""
    env = dict(spec.environment)
    env.update({
        "AWS_LAMBDA_FUNCTION_NAME": spec.function,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.function}",
        "AWS_LAMBDA_LOG_STREAM_NAME": f"{time.strftime('%Y/%m/%d', time.gmtime())}/[$LATEST]{worker_id}",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "LAMBDA_TASK_ROOT": task_root or str(spec.code_dir),
        "LAMBDA_RUNTIME_DIR": runtime_root or str(runtime_dir(spec.runtime)),
        "_HANDLER": spec.handler,
        "TZ": ":UTC",
        "LANG": "C.UTF-8",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    })
    return env


def stem_cell_launch(sandbox: Sandbox, interpreter: str, runtime: str, memory_mb: int,
                     egress: str) -> tuple[tuple[str, int, str], Launch]:
    """The key of the stem cells an exec'd runtime's worker of this size can adopt (its heap
    flag and network are fixed when it starts), and how to start one: no code, no function
    environment (both come with its INIT)."""
    directory = runtime_dir(runtime)
    _, runtime_root = sandbox.visible_paths(None, directory)
    launch = Launch(None, directory, {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": ":UTC"},
                    memory_mb, egress, launch_argv(runtime, interpreter, memory_mb, runtime_root))
    return (interpreter, memory_mb, egress), launch


class Worker:
    """A runtime process in a sandbox slot. Not safe for two concurrent invocations: the
    pool hands a worker to one caller at a time."""

    def __init__(self, spec: WorkerSpec, sandbox: Sandbox, *, log_sink: LogSink, log_cap_bytes: int,
                 invoker_id: str = "", worker_id: str = "") -> None:
        self.spec = spec
        self.id = worker_id or uuid.uuid4().hex[:16]
        self.sandbox = sandbox
        #: The sandbox slot the process runs in; acquired at the cold start.
        self.slot: Slot | None = None
        self.invoker_id = invoker_id
        #: False once the worker must not serve again (it failed, timed out or was stopped).
        self.reusable = True
        self.last_used = time.monotonic()
        self.pid = 0
        self._sink = log_sink
        self._cap = log_cap_bytes
        self._exit: asyncio.Task[int | None] | None = None
        self._returncode: int | None = None
        self._channel: Channel | None = None
        self._pipes: dict[int, tuple[str, bytearray]] = {}
        self._capture: LogCapture | None = None
        self._request_id = ""
        self._oom_before = 0
        self._pids_before = 0
        #: The last bytes the runtime wrote to stderr (how V8 says it ran out of heap).
        self._stderr_tail = b""
        self._peak = 0
        self._killed = False

    @property
    def started(self) -> bool:
        return self.pid != 0

    # the invocation

    async def invoke(self, request_id: str, payload: bytes, attempt: int = 0, *,
                     answer: Callable[[InvocationResult], None] | None = None, logs: bool = True) -> InvocationResult:
        """Run one invocation, starting the process first if this is its cold start. Always
        returns a result; a failed worker is left with ``reusable`` False (and is dead).

        Without ``logs`` (the caller does not want them), ``answer`` gets the result as soon
        as its outcome is final — the reply read and the slot's OOM and process-limit
        counters checked — before the pipes are drained, the leftovers looked for and the
        peak memory read; the result returned has all of it (for the bill), but no logs."""
        self._capture, self._request_id = LogCapture(self._cap), request_id
        cold, init_ms = not self.started, 0.0
        try:
            if cold:
                began = time.monotonic()
                failure = await self._start()
                init_ms = (time.monotonic() - began) * 1000
                if failure is not None:
                    return self._finish(failure, cold, init_ms, 0.0, logs)
            if logs:
                self._report(f"START RequestId: {request_id} Version: $LATEST")
            header = {"type": "invoke", "request_id": request_id, "invoked_function_arn": self.spec.arn,
                      "deadline_ms": time.time() * 1000 + self.spec.timeout_s * 1000, "attempt": attempt or 1}
            began = time.monotonic()
            try:
                reply, body = await self._exchange(header, payload)
                result = self._from_reply(reply, body)
            except NoReply as no_reply:
                result = await self._failure(no_reply, "call")
            duration_ms = (time.monotonic() - began) * 1000
            result = self._verdict(result)
            if answer is not None and not logs:
                self._stamp(result, cold, init_ms, duration_ms)
                answer(result)
            self._look_for_leftovers(result)
            return self._finish(result, cold, init_ms, duration_ms, logs)
        except BaseException:
            # Cancelled mid-call (the caller went away): the process state is unknown.
            self.reusable = False
            await asyncio.shield(self.stop())
            raise
        finally:
            self._capture = None
            self.last_used = time.monotonic()

    async def start(self) -> InvocationResult | None:
        """Start the process and INIT its handler ahead of any invocation (a pre-warm, a
        min_scale worker): None when it is ready — its next ``invoke`` is warm — else the
        failure (the worker is dead, ``reusable`` False). Its init output is capped as an
        invocation's is and shipped with an empty request id."""
        assert not self.started
        self._capture, self._request_id = LogCapture(self._cap), ""
        try:
            return await self._start()
        except BaseException:
            self.reusable = False
            await asyncio.shield(self.stop())
            raise
        finally:
            self._capture = None
            self.last_used = time.monotonic()

    def _check_limits(self, result: InvocationResult) -> InvocationResult:
        """:meth:`_verdict`, then :meth:`_look_for_leftovers`."""
        result = self._verdict(result)
        self._look_for_leftovers(result)
        return result

    def _verdict(self, result: InvocationResult) -> InvocationResult:
        """What the slot saw during the call overrides what the handler said: an OOM kill of
        any process (a grandchild's too), a fork refused by the pids limit."""
        slot = self.slot
        if slot is None or not self.pid or result.outcome is Outcome.OUT_OF_MEMORY:
            return result
        if slot.oom_kills() > self._oom_before:
            slot.dirty = True
            self.reusable = False
            return self._oom()
        if slot.pids_limit_hits() > self._pids_before:
            self.reusable = False
            return InvocationResult(Outcome.CRASHED, error_type="Runtime.ProcessLimitExceeded",
                                    error_message=f"Runtime exited with error: the function exceeded its limit of "
                                                  f"{MAX_PIDS} processes and threads")
        return result

    def _look_for_leftovers(self, result: InvocationResult) -> None:
        """Processes left running (a double-forked daemon) end the worker: they are killed
        when it stops, right after this invocation, and the next one is a cold start."""
        slot = self.slot
        if slot is None or not self.pid or result.outcome is Outcome.OUT_OF_MEMORY:
            return
        if self.reusable and slot.leftovers(self.pid):
            self.reusable = False
            self._platform("processes started by this invocation were still running at its end: they were "
                           "stopped, and the next invocation starts a new worker")

    def _stamp(self, result: InvocationResult, cold: bool, init_ms: float, duration_ms: float) -> None:
        result.cold_start, result.init_duration_ms, result.duration_ms = cold, init_ms, duration_ms
        result.invoker_id = self.invoker_id

    def _finish(self, result: InvocationResult, cold: bool, init_ms: float, duration_ms: float,
                logs: bool = True) -> InvocationResult:
        self._drain()
        if self.slot is not None and self.pid:
            self._peak = max(self._peak, self.slot.max_memory_bytes(self.pid))
        self._stamp(result, cold, init_ms, duration_ms)
        result.max_memory_used_mb = math.ceil(self._peak / (1024 * 1024))
        if result.outcome not in (Outcome.SUCCESS, Outcome.FUNCTION_ERROR):
            self.reusable = False
        if not logs:
            return result
        rid = self._request_id
        self._report(f"END RequestId: {rid}")
        report = (f"REPORT RequestId: {rid}\tDuration: {duration_ms:.2f} ms\tBilled Duration: "
                  f"{billed_ms(duration_ms)} ms\tMemory Size: {self.spec.memory_mb} MB\t"
                  f"Max Memory Used: {result.max_memory_used_mb} MB")
        self._report(report + (f"\tInit Duration: {init_ms:.2f} ms" if cold else ""))
        assert self._capture is not None
        result.logs = self._capture.text()
        return result

    def _from_reply(self, reply: dict, body: bytes) -> InvocationResult:
        kind = reply.get("type")
        if kind == "result":
            return InvocationResult(Outcome.SUCCESS, payload=body)
        if kind in ("error", "init_error"):
            if reply.get("oom"):
                self.reusable = False
                return self._oom()
            return InvocationResult(Outcome.FUNCTION_ERROR, error_type=str(reply.get("errorType", "")),
                                    error_message=str(reply.get("errorMessage", "")),
                                    stack_trace=[str(s) for s in reply.get("stackTrace", [])])
        raise NoReply("invalid", f"unexpected {kind!r} frame")

    def _oom(self) -> InvocationResult:
        return InvocationResult(Outcome.OUT_OF_MEMORY, error_type="Runtime.OutOfMemory",
                                error_message=f"Runtime exited with error: out of memory "
                                              f"(memory limit {self.spec.memory_mb} MB exceeded)")

    # the process

    async def _start(self) -> InvocationResult | None:
        """Take a slot, have its zygote fork the confined worker, INIT. None when the handler
        is ready, else the failed result."""
        spec = self.spec
        if is_exec_runtime(spec.runtime):
            cell = self._stem_cell()
            if cell is not None:
                return await self._adopt(cell)
        try:
            self.slot = await self.sandbox.acquire(self.sandbox.zygote_interpreter(spec.interpreter, spec.runtime))
        except OSError as exc:
            self.reusable = False
            return InvocationResult(Outcome.CRASHED, error_type="Runtime.SandboxError",
                                    error_message=f"cannot make a sandbox slot: {exc}")
        slot = self.slot
        runtime = runtime_dir(spec.runtime)
        task_root, runtime_root = self.sandbox.visible_paths(spec.code_dir, runtime)
        env = worker_environment(spec, self.id, task_root, runtime_root)
        launch = Launch(spec.code_dir, runtime, env, spec.memory_mb, spec.egress,
                        launch_argv(spec.runtime, spec.interpreter, spec.memory_mb, runtime_root))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        # The zygote hears of the worker first: while it wakes up and it and the child
        # specialise (~1 ms over three processes), this side gets ready — the counters, the
        # pipe readers, the channel, INIT waiting in the socket — which the child needs only
        # once it reads INIT. Done the other way round, all of it came before the zygote's
        # wake-up (~0.1 ms more at the p50 of a cold start, measured here).
        try:
            spawned = slot.spawn(launch, (theirs.fileno(), out_w, err_w))
        except OSError as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            ours.close()
            self.reusable = False
            return InvocationResult(Outcome.CRASHED, error_type="Runtime.SandboxError",
                                    error_message=f"cannot start the worker: {exc}")
        finally:
            # The zygote has its own copies now (or never will): ours go, whatever happened.
            theirs.close()
            for fd in (out_w, err_w):
                os.close(fd)
        self._oom_before, self._pids_before = slot.oom_kills(), slot.pids_limit_hits()
        loop = asyncio.get_running_loop()
        for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            self._pipes[fd] = (stream, bytearray())  # from here on, stop() closes them
            loop.add_reader(fd, self._read_pipe, fd)
        try:
            _, self._channel = await loop.create_unix_connection(Channel, sock=ours)
        except BaseException:
            ours.close()
            raise
        init: dict[str, object] = {"type": "init", "handler": spec.handler}
        if launch.exec_argv is not None:  # a stem cell learns its function from INIT
            init.update(code_dir=task_root, environment=env)
        raw = json.dumps(init).encode()
        assert self._channel.transport is not None
        self._channel.transport.write(FRAME.pack(len(raw), 0) + raw)
        # The INIT reply and the zygote's "spawned" race: neither waits for the other.
        no_reply: NoReply | None = None
        try:
            reply, body = await self._exchange(None)
        except NoReply as exc:
            no_reply = exc
        try:
            async with asyncio.timeout(EXIT_GRACE_S):
                self.pid = await spawned
        except (OSError, TimeoutError) as exc:
            self.reusable = False
            return InvocationResult(Outcome.CRASHED, error_type="Runtime.SandboxError",
                                    error_message=f"cannot start the worker: {exc}")
        self._exit = loop.create_task(slot.wait_exit(self.pid))
        if no_reply is not None:
            return await self._failure(no_reply, "init")
        return await self._initialised(reply, body)

    def _stem_cell(self) -> StemCell | None:
        """A started stem cell for this function's runtime and size (and ask for the next)."""
        spec = self.spec
        key, launch = stem_cell_launch(self.sandbox, spec.interpreter, spec.runtime, spec.memory_mb, spec.egress)
        cell = self.sandbox.take_stem_cell(key)
        self.sandbox.keep_stem_cells(key, launch)
        return cell

    async def _adopt(self, cell: StemCell) -> InvocationResult | None:
        """Specialise a started stem cell: show it the code, INIT with code and environment."""
        spec, slot = self.spec, cell.slot
        self.slot, self.pid = slot, cell.pid
        loop = asyncio.get_running_loop()
        self._exit = loop.create_task(slot.wait_exit(self.pid))
        self._oom_before, self._pids_before = slot.oom_kills(), slot.pids_limit_hits()
        for fd, stream in ((cell.out_r, "stdout"), (cell.err_r, "stderr")):
            os.set_blocking(fd, False)
            self._pipes[fd] = (stream, bytearray())
            loop.add_reader(fd, self._read_pipe, fd)
        _, self._channel = await loop.create_unix_connection(Channel, sock=cell.channel)
        try:
            await slot.show_code(spec.code_dir)
        except OSError as exc:
            await self._kill_and_wait()
            return InvocationResult(Outcome.CRASHED, error_type="Runtime.SandboxError",
                                    error_message=f"cannot show the code to the worker: {exc}")
        task_root, runtime_root = self.sandbox.visible_paths(spec.code_dir, runtime_dir(spec.runtime))
        env = worker_environment(spec, self.id, task_root, runtime_root)
        try:
            reply, body = await self._exchange({"type": "init", "handler": spec.handler, "code_dir": task_root,
                                                "environment": env})
        except NoReply as no_reply:
            return await self._failure(no_reply, "init")
        return await self._initialised(reply, body)

    async def _initialised(self, reply: dict, body: bytes) -> InvocationResult | None:
        """None when INIT's reply says the handler is ready; else the failure (worker killed)."""
        if reply.get("type") == "init_ok":
            return None
        if reply.get("type") == "sandbox_error":
            result = InvocationResult(Outcome.CRASHED, error_type="Runtime.SandboxError",
                                      error_message=str(reply.get("errorMessage", "")))
        else:
            result = self._check_limits(self._from_reply(reply, body))
        await self._kill_and_wait()
        return result

    async def _exchange(self, header: dict | None, body: bytes = b"") -> tuple[dict, bytes]:
        """Send ``header`` + ``body`` (None: already sent), read the reply, within the timeout."""
        assert self._channel is not None
        frame = None
        if header is not None:
            raw = json.dumps(header).encode()
            frame = FRAME.pack(len(raw), len(body)) + raw + body
        return await self._channel.exchange(frame, self.spec.timeout_s)

    async def _failure(self, no_reply: NoReply, phase: str) -> InvocationResult:
        """Why no reply came, once the process is gone: OOM counter, our timeout, an exit."""
        slot = self.slot  # stop() (at shutdown) may release it while this runs
        assert slot is not None and self._exit is not None
        self.reusable = False
        self._peak = max(self._peak, slot.max_memory_bytes(self.pid))
        if no_reply.kind == "closed":
            try:  # it closed the channel: let it finish exiting so its status is its own
                await asyncio.wait_for(asyncio.shield(self._exit), EXIT_GRACE_S)
            except TimeoutError:
                pass
        await self._kill_and_wait()
        if slot.oom_kills() > self._oom_before or (is_exec_runtime(self.spec.runtime)
                                                   and node_runtime.is_out_of_memory(self._stderr_tail.decode(errors="replace"))):
            slot.dirty = True
            return self._oom()
        timeout = self.spec.timeout_s
        if no_reply.kind == "timeout":
            message = (f"Task timed out during init after {timeout:.2f} seconds" if phase == "init"
                       else f"Task timed out after {timeout:.2f} seconds")
            return InvocationResult(Outcome.TIMEOUT, error_type="Sandbox.Timedout", error_message=message)
        code = self._returncode
        if code is not None and code < 0:
            sig = -code
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            text = (signal.strsignal(sig) or name).lower()
            return InvocationResult(Outcome.CRASHED, error_type="Runtime.ExitError",
                                    error_message=f"Runtime exited with error: signal: {text} ({name})")
        if no_reply.kind == "invalid":
            return InvocationResult(Outcome.CRASHED, error_type="Runtime.InvalidReply",
                                    error_message=f"Runtime sent an invalid reply: {no_reply.detail}")
        return InvocationResult(Outcome.CRASHED, error_type="Runtime.ExitError",
                                error_message=f"Runtime exited with error: exit status {code}")

    async def _kill_and_wait(self) -> None:
        """SIGKILL the worker and everything it started, then learn its exit status."""
        self.reusable = False
        if not self.pid or self.slot is None or self._exit is None:
            return
        if not self._killed:
            self._killed = True
            self.slot.kill(self.pid)  # also when it ended by itself: what it started may not have
        try:
            status = await asyncio.wait_for(asyncio.shield(self._exit), EXIT_GRACE_S * 2)
        except TimeoutError:
            status = None
        self._returncode = decode_status(status) if status is not None else None

    async def stop(self) -> None:
        """Kill the process and everything it started, release the pipes and socket, give
        the slot back to the sandbox. Idempotent."""
        self.reusable = False
        if self.pid:
            await self._kill_and_wait()
            self._drain()
        for fd in list(self._pipes):
            self._close_pipe(fd)
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()
        if self.slot is not None:
            slot, self.slot = self.slot, None
            await self.sandbox.release(slot)

    # logs

    def _read_pipe(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._feed(fd, data)
        else:
            self._close_pipe(fd)

    def _drain(self) -> None:
        """Read everything already in the pipes. The runtime flushes before it replies, so
        after a reply this collects every line of the invocation, in order."""
        for fd in list(self._pipes):
            while fd in self._pipes:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    self._close_pipe(fd)
                else:
                    self._feed(fd, data)
            if fd in self._pipes:
                self._flush_partial(fd)

    def _feed(self, fd: int, data: bytes) -> None:
        stream, pending = self._pipes[fd]
        if stream == "stderr":
            self._stderr_tail = (self._stderr_tail + data)[-4096:]
        pending += data
        *lines, rest = pending.split(b"\n")
        for line in lines:
            self._line(stream, line)
        while len(rest) > MAX_LINE_BYTES:
            self._line(stream, rest[:MAX_LINE_BYTES])
            rest = rest[MAX_LINE_BYTES:]
        pending[:] = rest

    def _flush_partial(self, fd: int) -> None:
        stream, pending = self._pipes[fd]
        if pending:
            self._line(stream, bytes(pending))
            pending.clear()

    def _close_pipe(self, fd: int) -> None:
        self._flush_partial(fd)
        asyncio.get_running_loop().remove_reader(fd)
        del self._pipes[fd]
        os.close(fd)

    def _line(self, stream: str, raw: bytes) -> None:
        if self._capture is not None and self._capture.truncated:
            return  # over the cap: dropped unread, so a flood costs no decoding
        text = raw.decode("utf-8", "replace").rstrip("\r")
        shipped = text if self._capture is None else self._capture.add(text)
        if shipped is not None:
            self._ship(stream if shipped is text else "platform", shipped)

    def _platform(self, text: str) -> None:
        """A note from the invoker about this invocation: inline and shipped to the controller."""
        if self._capture is not None:
            self._capture.lines.append(text)
        self._ship("platform", text)

    def _report(self, text: str) -> None:
        """START/END/REPORT: in the invocation's inline logs (the log tail) only. Not shipped
        to the controller: its record carries the same figures, and shipping them tripled
        the log records per invocation (docs/performance.md)."""
        if self._capture is not None:
            self._capture.lines.append(text)

    def _ship(self, stream: str, text: str) -> None:
        self._sink(LogRecord(self.spec.function, self._request_id, time.time(), stream, text))
