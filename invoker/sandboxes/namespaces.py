"""Namespaces, the private root file system, and the uid drop of a forked worker.

Standard library only (the zygote loads this file by path). The zygote builds a
template root once (:func:`prepare_root`: a read-only tmpfs holding only what a worker
needs); a freshly forked child, as root, then calls :func:`enter` (mount/ipc/uts,
optionally net), :func:`enter_root` (the function's code at ``/var/task``, a size-capped
``/tmp``, its own ``/proc``, ``pivot_root``) and :func:`drop_privileges`.
The new PID namespace is made by the zygote around ``fork()`` (see ``pid_namespace``).
"""

import ctypes
import os

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE, MS_SLAVE, MS_SHARED = 32, 4096, 16384, 1 << 18, 1 << 19, 1 << 20
MNT_DETACH = 2
_SYS_PIVOT_ROOT = 155
PR_SET_NO_NEW_PRIVS = 38
#: Where the worker sees its code and its runtime (Lambda's paths).
TASK_ROOT, RUNTIME_ROOT = "/var/task", "/var/runtime"
#: Device nodes a worker may use, bind-mounted from the host.
_DEVICES = ("null", "zero", "full", "random", "urandom")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long


def _check(rc, what):
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags):
    _check(_libc.unshare(ctypes.c_int(flags)), f"unshare({flags:#x})")


def setns(fd, nstype):
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def no_new_privs():
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def mount(source, target, fstype=None, flags=0, data=None):
    def enc(s):
        return (s.encode() if s is not None else None)
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {source} on {target}")


class pid_namespace:  # noqa: N801 - used as a context manager around fork()
    """``with pid_namespace(): pid = os.fork()`` makes the child PID 1 of a new PID
    namespace (killing it kills everything inside), then points this process's future
    children back at its own namespace so the next fork is ordinary again."""

    def __init__(self):
        self._own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    def __enter__(self):
        unshare(CLONE_NEWPID)
        return self

    def __exit__(self, *exc):
        setns(self._own, CLONE_NEWPID)
        os.close(self._own)


def _bind(source, target, writable=False):
    if os.path.isdir(source):
        if not os.path.isdir(target):
            os.makedirs(target)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "w").close()  # noqa: SIM115 - an empty file as mount point
    mount(source, target, None, MS_BIND | MS_REC)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (0 if writable else MS_RDONLY)
    if not source.startswith("/dev/"):
        flags |= MS_NODEV
    mount(None, target, None, flags)


def _staging(new_root):
    return os.path.join(os.path.dirname(new_root), "code")


def _bundles(new_root):
    return os.path.join(os.path.dirname(new_root), "bundles")


def expose_bundles(new_root, code_root):
    """In the zygote, once: bind ``code_root`` (the invoker's extracted code bundles)
    read-only beside the template — outside every worker's root — so that showing one of
    them is a single bind (:func:`show_code`)."""
    _bind(code_root, _bundles(new_root))


def show_code(new_root, code_dir, code_root=None):
    """In the zygote: show ``code_dir`` read-only at the template's shared ``/var/task``; it
    propagates to the workers forked from the template (their copies are its slaves). A new
    bind copies its source mount's flags (a remount would not propagate), so the source is
    read-only already: the bundle's directory in the view :func:`expose_bundles` made of
    ``code_root`` (one mount), or else a read-only bind staged beside the template (three).
    Returns whether it staged (see :func:`hide_code`)."""
    if code_root is not None and os.path.dirname(code_dir) == code_root:
        mount(os.path.join(_bundles(new_root), os.path.basename(code_dir)), new_root + TASK_ROOT, None, MS_BIND)
        return False
    staging = _staging(new_root)
    os.makedirs(staging, exist_ok=True)
    _bind(code_dir, staging)
    mount(staging, new_root + TASK_ROOT, None, MS_BIND)
    return True


def hide_code(new_root, staged=True):
    """In the zygote: take back what :func:`show_code` mounted, and its staging bind when it
    ``staged``. Only what is there: below the shown code is the template's own shared
    ``/var/task``, which every spare's root depends on (``enter_root`` fails on a template
    that lost it): a second call, or one after a show that failed half-way, leaves it."""
    task = new_root + TASK_ROOT
    if os.stat(task).st_dev != os.stat(new_root).st_dev:  # code on it, not the template's tmpfs
        _check(_libc.umount2(task.encode(), MNT_DETACH), "umount the shown code")
    if staged:
        _check(_libc.umount2(_staging(new_root).encode(), MNT_DETACH), "umount the staged code")


def prepare_root(new_root, runtime_dir, host_paths):
    """Once per zygote, in a mount namespace of its own: make ``new_root`` (an existing empty
    directory) the template of every worker's root — a tmpfs with ``host_paths`` (``/usr``,
    ``/etc``, the interpreter's prefix…) bound read-only at the same place, symlinks such
    as ``/bin -> usr/bin`` copied, the runtimes at ``/var/runtime``, a minimal ``/dev``,
    and empty mount points for the per-worker parts; then lock it read-only."""
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("lamina-root", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path in host_paths:
        if os.path.islink(path):
            os.symlink(os.readlink(path), new_root + path)
        elif os.path.exists(path):
            _bind(path, new_root + path)
    _bind(runtime_dir, new_root + RUNTIME_ROOT)
    for mount_point in (TASK_ROOT, "/tmp", "/proc", "/.old"):
        os.makedirs(new_root + mount_point)
    # Shared within this namespace: code the zygote mounts here later (a stem cell's, see
    # show_code) appears in the workers' copies, which are its slaves.
    mount(new_root + TASK_ROOT, new_root + TASK_ROOT, None, MS_BIND)
    mount(None, new_root + TASK_ROOT, None, MS_SHARED)
    os.makedirs(new_root + "/dev")
    mount("dev", new_root + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    for name in _DEVICES:
        _bind("/dev/" + name, f"{new_root}/dev/{name}", writable=True)
    os.symlink("/proc/self/fd", new_root + "/dev/fd")
    mount(None, new_root + "/dev", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC)
    mount(None, new_root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def enter_root(new_root, code_dir, tmp_mb):
    """In a forked child (after :func:`enter`, so on a copy of the zygote's mounts): the
    function's code read-only at ``/var/task``, a ``tmp_mb`` tmpfs at ``/tmp``, a fresh
    ``/proc`` (this PID namespace's only), then ``pivot_root`` into the template. Without
    ``code_dir`` (a stem cell) the code arrives later from the zygote (:func:`show_code`)."""
    mount(None, new_root + TASK_ROOT, None, MS_SLAVE)  # receive the zygote's, send nothing back
    if code_dir is not None:
        _bind(code_dir, new_root + TASK_ROOT)
    mount("tmp", new_root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_mb}m,mode=1777")
    mount("proc", new_root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _check(_libc.syscall(_SYS_PIVOT_ROOT, new_root.encode(), (new_root + "/.old").encode()), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(b"/.old", MNT_DETACH), "umount old root")


def drop_privileges(uid, gid):
    """No supplementary groups, then ``gid`` and ``uid`` (real, effective and saved)."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
