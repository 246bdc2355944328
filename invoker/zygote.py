"""The invoker's side of a zygote (``runtimes/python/zygote.py``): start it, ask it to fork
sandboxed workers, learn how they ended.

A :class:`Zygote` is owned by one sandbox slot; it serves one spawn at a time. The worker
processes it forks are its children, not the invoker's, so their wait status arrives as an
``exit`` message (:meth:`Zygote.wait_exit`). A slot's zygote is itself forked from the
interpreter's :class:`ZygoteMaster` (~1 ms, against ~60 ms of CPU to start one), so a burst
of cold starts that needs many new slots is not held up by interpreter start-ups.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

ZYGOTE_SCRIPT = Path(__file__).resolve().parent / "runtimes" / "python" / "zygote.py"
LAYERS_DIR = Path(__file__).resolve().parent / "sandboxes"
#: Seconds a zygote may take to import its modules and say it is ready.
READY_TIMEOUT_S = 10.0


class ZygoteError(OSError):
    """The zygote could not start, or could not fork a worker."""


#: The plan keys a spare is enclosed in ahead of need: the zygote script's tuple of that name.
ENCLOSURE_KEYS = ("namespaces", "network", "tmp_mb", "rlimits", "uid", "gid", "landlock", "seccomp", "allow_inet")
#: The zygote's largest control message (its MESSAGE_MAX).
MESSAGE_MAX = 64 * 1024


def spawn_message(plan: dict[str, Any]) -> bytes:
    """The spawn datagram: a JSON line with what the zygote itself needs (the plan's
    enclosure keys, to match its spare, and the code to show), then the plan, which it hands
    on to the child as it is — decoding and re-encoding it in the zygote cost ~0.1 ms of a
    cold start, most of it page faults (its heap is shared with the spare it just forked).
    Raises ``ZygoteError`` for a plan over the zygote's ``MESSAGE_MAX``."""
    head = {"type": "spawn", "enclosure": {key: plan.get(key) for key in ENCLOSURE_KEYS},
            "code_dir": plan.get("code_dir")}
    message = json.dumps(head).encode() + b"\n" + json.dumps(plan).encode()
    if len(message) > MESSAGE_MAX:
        raise ZygoteError(0, f"the worker's plan is {len(message)} bytes, over the zygote's {MESSAGE_MAX}")
    return message


class _Process:
    """A child process whose exit the event loop learns from a pidfd.

    Not ``asyncio.create_subprocess_exec``: its default child watcher on Python 3.11 starts a
    thread per child, and starting that thread stalled the event loop for ~12 ms per zygote
    on this 2-core machine (measured with cProfile), delaying every invocation in flight."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = loop.create_future()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # kernel < 5.3: one waiting thread after all
            self._pidfd = -1
            loop.run_in_executor(None, popen.wait).add_done_callback(lambda _: self._settle())
        else:
            loop.add_reader(self._pidfd, self._on_exit)

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        self._popen.wait()  # it has exited: this only reaps it
        self._settle()

    def _settle(self) -> None:
        if not self._exited.done():
            self._exited.set_result(self._popen.returncode)

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def kill(self) -> None:
        if self._popen.returncode is None:
            self._popen.kill()

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


class _Forked:
    """A zygote forked by the master: not our child, so its exit comes from a pidfd (the
    master reaps it) and its status is unknown (-1)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = loop.create_future()
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = -1
            self._settle()
        else:
            loop.add_reader(self._pidfd, self._on_exit)

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        self._settle()

    def _settle(self) -> None:
        self.returncode = -1
        if not self._exited.done():
            self._exited.set_result(-1)

    def kill(self) -> None:
        if self.returncode is None and self._pidfd >= 0:  # through the pidfd: never a reused pid
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


class ZygoteMaster:
    """The zygote of zygotes of one interpreter (``zygote.py --master``): it forks each new
    slot's zygote. ``await ZygoteMaster.start(interpreter)``; :meth:`fork`; :meth:`close`."""

    def __init__(self, process: _Process, control: socket.socket) -> None:
        self.process = process
        self._control = control
        self._lock = asyncio.Lock()
        self._seq = 0

    @classmethod
    async def start(cls, interpreter: str) -> ZygoteMaster:
        """Raises ``ZygoteError`` when the interpreter cannot start it."""
        process, ours = _popen(interpreter, ["--master"])
        return cls(process, ours)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def fork(self, config: dict[str, Any] | None) -> tuple[_Forked, socket.socket]:
        """A new zygote for ``config`` (see ``zygote.py``'s ``serve``) and our end of its
        control socket. It waits for ``start`` before it forks anything. Raises ``ZygoteError``."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        loop = asyncio.get_running_loop()
        try:
            async with self._lock:
                self._seq += 1
                seq = self._seq
                socket.send_fds(self._control, [json.dumps({"type": "zygote", "config": config, "seq": seq}).encode()],
                                [theirs.fileno()])
                async with asyncio.timeout(READY_TIMEOUT_S):
                    # A reply to an earlier request whose caller was cancelled is skipped.
                    while (reply := json.loads(await loop.sock_recv(self._control, 65536) or b"{}")).get("seq") != seq:
                        if not reply:
                            raise OSError(0, "the master closed its control socket")
        except (OSError, TimeoutError, ValueError) as exc:
            ours.close()
            raise ZygoteError(0, f"the zygote master {self.process.pid} did not fork: {exc}") from exc
        except BaseException:  # cancelled (the sandbox is closing): a zygote forked meanwhile exits
            ours.close()       # when its control socket closes
            raise
        finally:
            theirs.close()
        if reply.get("type") != "forked":
            ours.close()
            raise ZygoteError(0, f"the zygote master could not fork: {reply.get('message', reply)}")
        ours.setblocking(False)
        return _Forked(int(reply["pid"])), ours

    async def close(self) -> None:
        """Stop the master (the zygotes it forked die with it). Idempotent."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        try:
            await self.process.wait()
        finally:  # also when cancelled while it waits
            self._control.close()


def _popen(interpreter: str, args: list[str]) -> tuple[_Process, socket.socket]:
    """Start ``zygote.py`` with ``interpreter``; return it and our end of its control socket."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        process = _Process(subprocess.Popen(
            [interpreter, "-I", "-S", "-u", str(ZYGOTE_SCRIPT), str(theirs.fileno()), str(LAYERS_DIR), *args],
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), start_new_session=True))
    except OSError as exc:
        ours.close()
        raise ZygoteError(exc.errno or 0, f"cannot start a zygote with {interpreter}: {exc}") from exc
    finally:
        theirs.close()
    ours.setblocking(False)
    return process, ours


class Zygote:
    """One zygote process. ``await Zygote.start(...)``; then :meth:`spawn`; :meth:`close`."""

    def __init__(self, process: _Process | _Forked, control: socket.socket) -> None:
        self.process = process
        self.pid = process.pid
        #: The child the zygote forked ahead of need (it sits in the slot, waiting).
        self.spare_pid = 0
        self._control = control
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._spawned: asyncio.Future[int] | None = None
        self._ack: asyncio.Future[str] | None = None
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, interpreter: str, confine: Callable[[int], None] | None = None,
                    template: dict[str, Any] | None = None, master: ZygoteMaster | None = None) -> Zygote:
        """Start a zygote with ``interpreter`` — forked from ``master`` when given;
        ``confine(pid)`` (e.g. joining the slot's cgroups) runs before it may fork;
        ``template`` (tier A) is the root file system its workers start from (see
        ``namespaces.prepare_root``). Raises ``ZygoteError``."""
        if master is not None:
            process, ours = await master.fork(template)
        else:
            process, ours = _popen(interpreter, [json.dumps(template)] if template is not None else [])
        zygote = cls(process, ours)
        try:
            if confine is not None:
                # Moving a process into a cgroup can block for an RCU grace period (6-16 ms
                # measured here): never on the event loop, where every invocation waits on it.
                await asyncio.to_thread(confine, process.pid)
            await asyncio.get_running_loop().sock_sendall(ours, b'{"type": "start"}')
            async with asyncio.timeout(READY_TIMEOUT_S):
                await asyncio.shield(zygote._ready)
        except (OSError, TimeoutError) as exc:
            await zygote.close()
            raise ZygoteError(getattr(exc, "errno", 0) or 0, f"zygote {process.pid} did not start: {exc}") from exc
        except BaseException:  # cancelled (the invoker is stopping): leave no process behind
            await asyncio.shield(zygote.close())
            raise
        return zygote

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                raw = await loop.sock_recv(self._control, 65536)
                if not raw:
                    break
                message = json.loads(raw)
                kind = message.get("type")
                if "spare" in message:
                    self.spare_pid = int(message["spare"])
                if kind == "ready":
                    self._ready.set_result(None)
                elif kind in ("spawned", "spawn_error") and self._spawned is not None and not self._spawned.done():
                    if kind == "spawned":
                        self._spawned.set_result(int(message["pid"]))
                    else:
                        self._spawned.set_exception(ZygoteError(0, f"zygote could not fork: {message['message']}"))
                elif kind == "ack" and self._ack is not None and not self._ack.done():
                    self._ack.set_result(str(message.get("error", "")))
                elif kind == "exit":
                    future = self._exits.setdefault(int(message["pid"]), loop.create_future())
                    if not future.done():
                        future.set_result(int(message["status"]))
        except (OSError, ValueError):
            pass
        finally:
            gone = ZygoteError(0, f"zygote {self.pid} exited")
            for future in (self._ready, self._spawned, self._ack, *self._exits.values()):
                if future is not None and not future.done():
                    future.set_exception(gone)
                    future.exception()  # mark retrieved: nobody may be waiting any more

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and not self._reader.done()

    def spawn(self, plan: dict[str, Any], fds: tuple[int, int, int]) -> asyncio.Future[int]:
        """Send the zygote a worker to start, confined by ``plan``, with ``fds`` (channel,
        stdout, stderr) — they may be closed once this returns. The future gives the
        worker's pid (in the invoker's PID namespace) or raises ``ZygoteError``; the worker
        is already confining itself meanwhile. Raises ``ZygoteError`` when the zygote is gone
        or the plan is over its ``MESSAGE_MAX``."""
        message = spawn_message(plan)
        loop = asyncio.get_running_loop()
        self._spawned = loop.create_future()
        try:
            socket.send_fds(self._control, [message], list(fds))
        except OSError as exc:
            raise ZygoteError(exc.errno or 0, f"zygote {self.pid} is gone: {exc}") from exc
        self._spawned.add_done_callback(
            lambda f: None if f.cancelled() or f.exception() else self._exits.setdefault(f.result(), loop.create_future()))
        return self._spawned

    async def show_code(self, code_dir: str | None) -> None:
        """Tier A: bind ``code_dir`` at ``/var/task`` of the zygote's template (None: take
        it back); a stem cell forked from it sees it at once. Raises ``ZygoteError``."""
        self._ack = asyncio.get_running_loop().create_future()
        message = {"type": "show", "code_dir": code_dir} if code_dir else {"type": "hide"}
        try:
            await asyncio.get_running_loop().sock_sendall(self._control, json.dumps(message).encode())
            error = await asyncio.wait_for(asyncio.shield(self._ack), READY_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise ZygoteError(0, f"zygote {self.pid} did not answer: {exc}") from exc
        if error:
            raise ZygoteError(0, f"zygote {self.pid} cannot show the code: {error}")

    def exited(self, pid: int) -> bool:
        """Whether worker ``pid`` is known to have ended (or the zygote is gone)."""
        future = self._exits.get(pid)
        return not self.alive or (future is not None and future.done())

    async def wait_exit(self, pid: int) -> int:
        """The wait status of worker ``pid`` once it ended. Raises ``ZygoteError`` when the
        zygote died first (then the status is unknowable)."""
        future = self._exits.setdefault(pid, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.shield(future)
        finally:
            if future.done():
                self._exits.pop(pid, None)

    async def close(self) -> None:
        """Kill the zygote (its workers die with it: they have it as parent-death signal)
        and reap it. Idempotent."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        try:
            await self.process.wait()
        finally:
            # Also when cancelled while it waits (a sandbox closing while a slot is being
            # destroyed): the control socket closes as soon as its reader has stopped.
            self._reader.cancel()
            self._reader.add_done_callback(lambda _: self._control.close())
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def decode_status(status: int) -> int:
    """A wait status as ``Popen.returncode`` would say it (negative: killed by that signal)."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)
