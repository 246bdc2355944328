"""The zygote: a pre-initialised ``python -I -S`` that forks sandboxed workers.

Standard library only. The invoker starts one per sandbox slot (already inside the slot's
cgroups, so forked workers inherit them without a slow cgroup attach) as
``<python> -I -S -u zygote.py <control fd> <sandboxes dir> [<root template JSON>]``. It loads the runtime
bootstrap and the confinement layers (``invoker/sandboxes/{namespaces,landlock,seccomp}.py``)
by path under private names, so nothing of the platform is importable by user code.

Control messages are JSON datagrams on a SOCK_SEQPACKET socket:

    invoker → zygote  {"type": "spawn", "enclosure": {...}, "code_dir"} \n {plan}
                          + SCM_RIGHTS [channel, stdout, stderr]
                      {"type": "show", "code_dir"} | {"type": "hide"}   (tier A stem cells)
    zygote → invoker  {"type": "ready", "pid", "spare"} once
                      {"type": "spawned", "pid", "spare"} | {"type": "spawn_error", "message"}
                      {"type": "spare", "spare"} when it forked a new spare child
                      {"type": "exit", "pid", "status"} when a worker it forked ends (a wait status)
                      {"type": "ack", "error"} after show/hide

The zygote keeps one child forked ahead of need (``spare``: on tier A already PID 1 of its
own PID namespace, in its own mount/IPC/UTS namespaces), so a spawn only hands that child
its plan and descriptors. On tier A the spare also encloses itself ahead of need in what
every worker of the slot shares (the template ``enclosure``: private root, rlimits, uid,
no_new_privs, Landlock, seccomp; see :func:`_enclose`), and a spawn whose plan matches it
only shows the code on the template's shared ``/var/task`` (propagated into the spare's
root) and hands over the environment: no mount, uid change or filter on the cold path. A
plan that differs (``egress: none`` needs a network namespace made before the uid drop)
gets a freshly forked child that encloses itself after the plan arrives. The worker then
serves the bootstrap's frames on the channel, or ``execve``s ``plan["exec"]`` (the Node
runtime, which cannot be forked after V8 starts). The zygote is a child subreaper, so a worker's orphans come back to it
and are reaped; it exits (killing its workers) when the invoker closes the control socket.
"""

import ctypes
import gc
import importlib.util
import io
import json
import os
import resource
import select
import signal
import socket
import sys
import time
import traceback

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
#: Seconds after a spawn before the next child is forked ahead of need (tier A).
PREFORK_DELAY_S = 0.02
_RLIMITS = {"NOFILE": resource.RLIMIT_NOFILE, "FSIZE": resource.RLIMIT_FSIZE, "CORE": resource.RLIMIT_CORE,
            "AS": resource.RLIMIT_AS, "DATA": resource.RLIMIT_DATA, "NPROC": resource.RLIMIT_NPROC}
_libc = ctypes.CDLL(None, use_errno=True)


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_here = os.path.dirname(os.path.abspath(__file__))
bootstrap = _load("_lamina_bootstrap", os.path.join(_here, "bootstrap.py"))
_layers = sys.argv[2] if len(sys.argv) > 2 else os.path.join(_here, "..", "..", "sandboxes")
namespaces = _load("_lamina_namespaces", os.path.join(_layers, "namespaces.py"))
landlock = _load("_lamina_landlock", os.path.join(_layers, "landlock.py"))
seccomp = _load("_lamina_seccomp", os.path.join(_layers, "seccomp.py"))
#: The seccomp programs, compiled once: {allow_inet: program}.
_filters = {}
if seccomp.available():
    _filters = {inet: seccomp.prepare(seccomp.compile_filter(inet)) for inet in (True, False)}
#: The template root this zygote prepared (tier A), None otherwise.
_template = None
#: The directory of the invoker's code bundles, when this zygote has a read-only view of it
#: (tier A; ``namespaces.expose_bundles``), None otherwise.
_code_root = None
#: The plan keys a spare encloses itself in ahead of need (tier A), and their values; None:
#: spares wait unenclosed.
_enclosure = None
ENCLOSURE_KEYS = ("namespaces", "network", "tmp_mb", "rlimits", "uid", "gid", "landlock", "seccomp", "allow_inet")
#: Exit status of a spare that could not enclose itself: the zygote stops enclosing ahead.
_ENCLOSE_FAILED = 72
#: Largest control message (a plan: the function's environment is at most 4 KB). A buffer of
#: 1 MB was an mmap, a page fault and an mremap on every receive.
MESSAGE_MAX = 64 * 1024


def _enclose(plan):
    """In the pre-forked child, as root: every confinement the plan asks for, strongest
    last — all but the code, which is shown on ``/var/task`` (its own bind, or the
    template's shared one)."""
    try:  # the zygote's -1000 (where it got one) must not be inherited; after the uid drop it cannot be reset
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("0")
    except OSError:
        pass
    if plan.get("namespaces"):
        if _template is None:
            raise OSError("this zygote has no template root (it was started without one)")
        if not plan.get("network", True):
            namespaces.unshare(namespaces.CLONE_NEWNET)
        namespaces.enter_root(_template, plan.get("code_dir"), plan["tmp_mb"])
    for name, value in plan.get("rlimits", {}).items():
        resource.setrlimit(_RLIMITS[name], (value, value))
    if plan.get("uid") is not None:
        namespaces.drop_privileges(plan["uid"], plan["gid"])
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after the uid change, which clears it
    namespaces.no_new_privs()
    if plan.get("landlock"):
        landlock.restrict(plan["landlock"]["read"], plan["landlock"]["write"])
    if plan.get("seccomp"):
        seccomp.load(_filters[bool(plan.get("allow_inet", True))])


def _rehearse():
    """Go through the motions of a cold start once, ahead of need — a plan decoded, an
    environment set, a stdio stream made, a module imported from a file (on the private
    ``/tmp``, then removed) — so the pages of the zygote's heap these write to are copied
    now (copy-on-write after ``fork``: ~300 page faults, ~1 ms measured here) and the
    compiler is warm, not during the cold start."""
    plan = json.loads(json.dumps({"environment": {f"LAMINA_REHEARSAL_{i}": "x" * 48 for i in range(24)}}))
    os.environ.update(plan["environment"])
    for key in plan["environment"]:
        del os.environ[key]
    null = os.open("/dev/null", os.O_WRONLY)
    try:
        stream = io.TextIOWrapper(io.FileIO(null, "w", closefd=False), line_buffering=True,
                                  errors="backslashreplace")
        print("rehearsal", file=stream)
        stream.reconfigure(line_buffering=True, errors="backslashreplace")
    finally:
        os.close(null)
    name = "_lamina_rehearsal"
    path = os.path.join("/tmp", name + ".py")
    try:
        with open(path, "w") as module:
            module.write("import json\n\n\ndef handler(event, context):\n    return json.dumps(event)\n")
        sys.path.insert(0, "/tmp")
        sys.dont_write_bytecode = True  # the worker's /tmp starts empty
        try:
            importlib.import_module(name).handler({"rehearsal": True}, None)
        finally:
            sys.dont_write_bytecode = False
            sys.path.remove("/tmp")
            sys.path_importer_cache.pop("/tmp", None)
            sys.modules.pop(name, None)
            os.unlink(path)
    except OSError:
        pass
    try:  # and one exchange on a channel: its receive buffer is 64 KB
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        channel = bootstrap.Channel(theirs.detach())
        try:
            raw = json.dumps({"type": "init", "handler": "_lamina_rehearsal.handler"}).encode()
            ours.sendall(bootstrap.HEADER.pack(len(raw), 0) + raw)
            channel.recv()
            channel.send({"type": "init_ok"})
            ours.recv(MESSAGE_MAX)
        finally:
            ours.close()
            channel.sock.close()
    except OSError:
        pass


def _text_streams():
    """New ``sys.stdout`` and ``sys.stderr`` on fds 1 and 2, which are pipes: made on the
    zygote's /dev/null (seekable), they would think they can seek."""
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True,
                                  errors="backslashreplace")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True,
                                  errors="backslashreplace")


def _stdio_on_a_pipe():
    """The spare's, ahead of need: fds 1 and 2 made a pipe's write end and the text streams
    made on them; the plan's pipes are later ``dup2``'ed over those numbers, which the
    streams never notice. (The read end is closed: a write before the plan would end the
    spare, and the zygote would fork another.)"""
    read, write = os.pipe()
    os.dup2(write, 1)
    os.dup2(write, 2)
    os.close(read)
    os.close(write)
    _text_streams()


def _specialise(plan, channel_fd):
    """In the enclosed child: only the channel and stdio stay open, the function's environment."""
    os.closerange(3, channel_fd)
    os.closerange(channel_fd + 1, 65536)
    os.environ.clear()
    os.environ.update(plan["environment"])
    os.chdir(plan["cwd"])


def _waiting(sock, enclosure):
    """The pre-forked child: made ready before it is needed (its own session and, on tier A,
    PID, mount, IPC and UTS namespaces, and enclosed in ``enclosure`` when given), it waits
    for its plan and descriptors, then becomes the worker. Never returns."""
    try:
        os.setsid()
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if _template is not None:
            namespaces.unshare(namespaces.CLONE_NEWNS | namespaces.CLONE_NEWIPC | namespaces.CLONE_NEWUTS)
            socket.sethostname("lamina")
    except BaseException:  # noqa: BLE001 - the zygote sees it exit and forks another
        os._exit(71)
    if enclosure is not None:
        try:
            os.closerange(3, sock.fileno())
            os.closerange(sock.fileno() + 1, 65536)
            _enclose(enclosure)
            _rehearse()
            _stdio_on_a_pipe()
            os.environ.clear()  # the zygote's: the plan brings the function's
        except BaseException:  # noqa: BLE001 - said once on the zygote's stderr, then never tried again
            traceback.print_exc()
            os._exit(_ENCLOSE_FAILED)
    try:
        raw, fds, flags, _ = socket.recv_fds(sock, MESSAGE_MAX, 8)
    except BaseException:  # noqa: BLE001
        os._exit(71)
    if flags & socket.MSG_TRUNC:
        os._exit(71)  # the zygote checked the plan's size: a cut one is nothing to run
    if not raw:
        os._exit(0)
    sock.close()
    _child(json.loads(raw), fds, enclosed=enclosure is not None)


def _child(plan, fds, enclosed):
    channel, out, err = fds
    try:
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        if not enclosed:  # an enclosed spare made its streams ahead of need
            _text_streams()
            _enclose(plan)
        _specialise(plan, channel)
    except BaseException as exc:  # noqa: BLE001 - reported to the invoker, then the child exits
        traceback.print_exc()
        try:
            bootstrap.Channel(channel).send({"type": "sandbox_error", "errorType": "Runtime.SandboxError",
                                             "errorMessage": f"cannot confine the worker: {exc}",
                                             "stackTrace": []})
        finally:
            os._exit(70)
    if plan.get("exec"):
        os.set_inheritable(channel, True)
        argv = [arg.replace("{fd}", str(channel)) for arg in plan["exec"]]
        os.execve(argv[0], argv, plan["environment"])
    code = 1
    try:
        code = bootstrap.serve(channel, plan["cwd"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _prefork(ctl, enclosure=None):
    """Fork the next worker ahead of need (PID 1 of a new PID namespace on tier A), enclosed
    in ``enclosure`` when given; return (pid, our end of its socket)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    gc.freeze()  # the child's collections leave the zygote's objects (and their pages) alone
    pid_ns = namespaces.pid_namespace() if _template is not None else None
    if pid_ns is not None:
        pid_ns.__enter__()
    try:
        pid = os.fork()
        if pid == 0:
            ctl.close()
            ours.close()
            _waiting(theirs, enclosure)
    finally:
        if pid_ns is not None:
            pid_ns.__exit__()
        theirs.close()
    return pid, ours


#: What shows code on the template's /var/task: False (nothing), _BOUND (a bind from the
#: view of the code bundles) or _STAGED (a bind from a read-only bind staged beside it).
_shown = False
_BOUND, _STAGED = "bound", "staged"
#: The last spawn datagram's two parts, zygote's and child's (what :func:`_rehearse_spawn`
#: goes through).
_last_spawn = (b'{"type": "spawn", "enclosure": {}, "code_dir": null}', b'{"environment": {}}')


def _spare(ctl):
    """Fork the spare child ahead of need, then rehearse the spawn that will take it."""
    spare = _prefork(ctl, _enclosure)
    _rehearse_spawn()
    return spare


def _rehearse_spawn():
    """Go through the zygote's side of a spawn once, on a socket pair of its own, right
    after forking a spare: the fork made every page of this process copy-on-write, and the
    spawn that takes the spare copied each page it wrote on the cold start's path —
    buffers, the decoded message, the objects whose reference counts it touches (measured:
    ~130 page faults per spawn, ~70 with this; the pages are copied while the zygote is
    idle instead)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fds = []
    try:
        fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(3)]
        socket.send_fds(ours, [b"\n".join(_last_spawn)], fds)
        raw, received, _, _ = socket.recv_fds(theirs, MESSAGE_MAX, 8)
        fds += received
        head, _, raw = raw.partition(b"\n")
        message = json.loads(head)
        _fits(message["enclosure"])
        _send(ours, {"type": "spawned", "pid": os.getpid(), "spare": 0})
        theirs.recv(MESSAGE_MAX)
        socket.send_fds(ours, [raw], received)
        theirs.recv(MESSAGE_MAX)
    except Exception:  # noqa: BLE001 - a rehearsal that fails costs the next spawn its faults, nothing more
        pass
    finally:
        for fd in fds:
            os.close(fd)
        ours.close()
        theirs.close()


def _show_or_hide(message):
    """Show a stem cell its function's code (bind it on the template's shared /var/task),
    or take it back."""
    global _shown
    try:
        if _template is None:
            raise OSError("this zygote has no template root")
        if _shown:
            shown, _shown = _shown, False  # even if taking it back fails half-way
            namespaces.hide_code(_template, staged=shown == _STAGED)
        if message["type"] == "show":
            _shown = _STAGED if namespaces.show_code(_template, message["code_dir"], _code_root) else _BOUND
    except OSError as exc:
        return {"type": "ack", "error": str(exc)}
    return {"type": "ack", "error": ""}


def _kill_all(pids):
    """SIGKILL each of ``pids`` (the invoker is gone: nothing may outlive it)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _send(ctl, message):
    ctl.send(json.dumps(message).encode())


def _fits(plan):
    """Whether a spare enclosed ahead of need can become the worker of ``plan``."""
    return _enclosure is not None and all(plan.get(key) == _enclosure.get(key) for key in ENCLOSURE_KEYS)


def _spawn(ctl, head, raw, fds, spare, spare_sock, announce=None):
    """Hand the plan ``raw`` (its ``head``: enclosure keys and code) and ``fds`` to the
    spare when it fits, else to a freshly forked child; return (worker pid or 0, whether the
    spare was used, whether ``announce`` was called).

    ``announce(pid)``, when given, is called right after the spare got its plan: the woken
    child runs ``SCHED_BATCH``, so it does not take this CPU before the pid is told, and
    telling it first woke the invoker ahead of the child, on the cold start's path (~0.1 ms
    at the p50, measured here). A spare found dead when handed its plan is replaced by a
    freshly forked child, whose pid is told instead."""
    enclosed = _fits(head["enclosure"])
    used = bool(spare) and (enclosed or _enclosure is None)
    announced = False
    if used:
        pid, sock = spare, spare_sock
    else:  # not enclosed ahead of need in what this plan asks (egress none, say)
        pid, sock = _prefork(ctl, _enclosure if enclosed else None)
    try:
        if enclosed and head.get("code_dir"):
            failure = _show_or_hide({"type": "show", "code_dir": head["code_dir"]})["error"]
            if failure:
                raise OSError(0, f"cannot show the code: {failure}")
        try:
            socket.send_fds(sock, [raw], fds)
        except OSError:
            # The child died before we reaped it (killed with a worker's leftovers, say):
            # one fresh child, not a failed invocation.
            sock.close()
            pid, sock = _prefork(ctl, _enclosure if enclosed else None)
            socket.send_fds(sock, [raw], fds)
        if used and announce is not None:
            announce(pid)
            announced = True
    except OSError as exc:
        if not announced:
            _send(ctl, {"type": "spawn_error", "message": f"cannot start the worker: {exc}"})
            pid = 0
    finally:
        sock.close()
        for fd in fds:
            os.close(fd)
    return pid, used, announced


def _gone(pid):
    """Whether child ``pid`` has ended (reaping it; the exit status, or None)."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 0
    return status if done == pid else None


def _wait_for_start(ctl):
    """Block until the invoker says ``start`` (it has moved this zygote into the slot's
    cgroups: nothing may be forked before, or it would stay outside them)."""
    while True:
        raw = ctl.recv(1 << 16)
        if not raw:
            sys.exit(0)
        if json.loads(raw).get("type") == "start":
            return


def serve(ctl, config):
    """Be one slot's zygote: ``config`` (tier A: {"new_root", "runtime_dir", "host_paths",
    "code_root", "enclosure"}; None otherwise), forking workers on ``ctl``'s requests until it closes."""
    global _template, _enclosure, _last_spawn, _code_root
    if config is not None:
        namespaces.prepare_root(config["new_root"], config["runtime_dir"], config["host_paths"])
        _template = config["new_root"]
        _enclosure = config.get("enclosure")
        if config.get("code_root"):
            try:
                namespaces.expose_bundles(_template, config["code_root"])
                _code_root = config["code_root"]
            except OSError:
                traceback.print_exc()  # shown code is staged then: two more mounts per cold start
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _wait_for_start(ctl)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    workers = set()
    spare, spare_sock = _spare(ctl)
    _send(ctl, {"type": "ready", "pid": os.getpid(), "spare": spare})
    due = None
    while True:
        readable, _, _ = select.select([ctl, wake_r], [], [], None if due is None else max(0, due - time.monotonic()))
        if due is not None and time.monotonic() >= due:
            due = None
            if not spare:
                spare, spare_sock = _spare(ctl)
                _send(ctl, {"type": "spare", "spare": spare})
        if wake_r in readable:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if pid in workers:
                    workers.discard(pid)
                    _send(ctl, {"type": "exit", "pid": pid, "status": status})
                elif pid == spare:  # killed with a worker's leftovers: have another one ready
                    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == _ENCLOSE_FAILED:
                        _enclosure = None  # its reason is on stderr; children enclose themselves
                    spare_sock.close()
                    spare, spare_sock = _spare(ctl)
                    _send(ctl, {"type": "spare", "spare": spare})
        if ctl in readable:
            try:
                raw, fds, flags, _ = socket.recv_fds(ctl, MESSAGE_MAX, 8)
            except OSError:  # the invoker is gone
                raw, fds, flags = b"", [], 0
            if not raw:
                _kill_all((*workers, *([spare] if spare else [])))
                return 0
            if flags & socket.MSG_TRUNC:
                for fd in fds:
                    os.close(fd)
                _send(ctl, {"type": "spawn_error", "message": f"plan over {MESSAGE_MAX} bytes"})
                continue
            # A spawn is a JSON line for the zygote and the plan for the child (kept as bytes).
            head, _, raw = raw.partition(b"\n")
            message = json.loads(head)
            if message.get("type") in ("show", "hide"):
                _send(ctl, _show_or_hide(message))
                continue
            if message.get("type") == "spawn":
                _last_spawn = (head, raw)
                if spare:
                    status = _gone(spare)
                    if status is not None:  # killed with a worker's leftovers since: fork afresh
                        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == _ENCLOSE_FAILED:
                            _enclosure = None
                        spare_sock.close()
                        spare, spare_sock = 0, None
                # Tier A forks the next spare later (below), so the pid is all there is to
                # tell, and it is told as soon as the child has its plan; tier C says it
                # with the new spare's pid, which it forks at once.
                announce = None
                if _template is not None:
                    def announce(pid):
                        _send(ctl, {"type": "spawned", "pid": pid, "spare": 0})
                pid, used, announced = _spawn(ctl, message, raw, fds, spare, spare_sock, announce)
                if used or not spare:
                    # The next child is forked when this one had time to confine itself
                    # and answer (on a 2-CPU host the fork would compete with it); at once
                    # where forking is cheap (no namespaces), so the invoker knows its pid.
                    spare, spare_sock = 0, None
                    if _template is not None:
                        due = time.monotonic() + PREFORK_DELAY_S
                    else:  # at once, on the cold start's path: no rehearsal
                        spare, spare_sock = _prefork(ctl, _enclosure)
                if announced:
                    workers.add(pid)
                elif pid:
                    workers.add(pid)
                    _send(ctl, {"type": "spawned", "pid": pid, "spare": spare})
                else:
                    _send(ctl, {"type": "spare", "spare": spare})


def master(ctl):
    """The zygote of zygotes (one per interpreter): a new slot's zygote is forked from it
    (~1 ms) instead of started (~60 ms of CPU for the interpreter, these modules and the
    seccomp programs), which is what a burst of cold starts waits on.

    invoker → master  {"type": "zygote", "config": {...} | null, "seq"} + SCM_RIGHTS [control socket]
    master → invoker  {"type": "forked", "pid", "seq"} | {"type": "fork_error", "message", "seq"}
    """
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    children = set()

    def reap(*_):
        """Reap the zygotes that ended (the invoker watches them through pidfds)."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)

    signal.signal(signal.SIGCHLD, reap)
    while True:
        try:
            raw, fds, _, _ = socket.recv_fds(ctl, MESSAGE_MAX, 4)
        except OSError:
            raw, fds = b"", []
        if not raw:
            _kill_all(children)
            return 0
        message = json.loads(raw)
        try:
            gc.freeze()
            pid = os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            _send(ctl, {"type": "fork_error", "message": str(exc), "seq": message.get("seq")})
            continue
        if pid == 0:
            code = 70
            try:
                ctl.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                code = serve(socket.socket(fileno=fds[0]), message.get("config"))
            except BaseException:  # noqa: BLE001 - the invoker sees the zygote gone
                traceback.print_exc()
            finally:
                os._exit(code or 0)
        for fd in fds:
            os.close(fd)
        children.add(pid)
        _send(ctl, {"type": "forked", "pid": pid, "seq": message.get("seq")})


def _batch_scheduling():
    """Run this process, and so every zygote, spare, worker and Node stem cell forked from
    it, under ``SCHED_BATCH``: the same share of the CPU as any other process, but a worker
    woken by its invocation does not preempt the process that woke it.

    Under ``SCHED_OTHER`` the invoker's write to a worker handed the CPU to the worker at
    once (38 % of the invoker's samples at concurrency 32 were that write), so the hub every
    invocation crosses waited behind the functions it had just dispatched. Any process may
    choose this policy (no privilege needed); a function that sets another policy only
    costs itself its own latency."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or refused: the default policy is correct too
        pass


def main():
    _batch_scheduling()
    ctl = socket.socket(fileno=int(sys.argv[1]))
    if len(sys.argv) > 3 and sys.argv[3] == "--master":
        return master(ctl)
    return serve(ctl, json.loads(sys.argv[3]) if len(sys.argv) > 3 else None)


if __name__ == "__main__":
    sys.exit(main())
