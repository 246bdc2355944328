"""A seccomp deny-list, built with libseccomp through ctypes.

Standard library only (the zygote loads this file by path). The filter allows everything
but the system calls a function has no business making — namespaces, mounts, tracing,
kernel modules, BPF, io_uring, keyrings, perf, reboot… — which fail with ``EPERM`` so
the handler sees a clear ``PermissionError`` instead of dying. ``clone3`` fails with
``ENOSYS`` so libc falls back to ``clone``, whose namespace flags can be inspected
(clone3 passes them in memory, out of seccomp's reach). Without egress, ``socket(AF_INET*)``
is refused too (no AF_NETLINK rule: it reaches no network).
"""

import ctypes
import ctypes.util
import errno
import os
import socket

_ACT_ALLOW = 0x7FFF0000
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_libc = ctypes.CDLL(None, use_errno=True)
_CMP_EQ, _CMP_MASKED_EQ = 4, 7

#: Refused for every function.
DENIED = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
    "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr", "ptrace", "process_vm_readv",
    "process_vm_writev", "bpf", "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl",
    "add_key", "request_key", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "perf_event_open", "reboot", "swapon", "swapoff", "acct", "quotactl",
    "userfaultfd", "open_by_handle_at", "name_to_handle_at", "lookup_dcookie", "syslog",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
    "iopl", "ioperm", "personality", "vhangup", "pidfd_getfd", "kcmp", "fanotify_init",
)
#: clone() flags that create namespaces.
_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                    0x40000000, 0x00000080)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _library():
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


_lib = None


def available():
    """Whether libseccomp can be loaded (the kernel side is checked by applying a filter)."""
    global _lib
    try:
        _lib = _lib or _library()
        return True
    except OSError:
        return False


def _errno(code):
    return 0x00050000 | (code & 0xFFFF)


def compile_filter(allow_inet=True):
    """The deny-list as a classic BPF program (bytes of ``struct sock_filter``), built once
    by libseccomp so each worker only loads it (~20 µs instead of ~0.7 ms)."""
    global _lib
    _lib = _lib or _library()
    ctx = _lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    try:
        def rule(name, action, *cmps):
            nr = _lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:  # not a syscall on this architecture
                return
            array = (_ArgCmp * max(1, len(cmps)))(*cmps)
            rc = _lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
            if rc < 0:
                raise OSError(-rc, f"seccomp rule for {name} failed")

        for name in DENIED:
            rule(name, _errno(errno.EPERM))
        rule("clone3", _errno(errno.ENOSYS))
        for flag in _NAMESPACE_FLAGS:
            rule("clone", _errno(errno.EPERM), _ArgCmp(0, _CMP_MASKED_EQ, flag, flag))
        if not allow_inet:
            for family in (socket.AF_INET, socket.AF_INET6, socket.AF_PACKET):
                rule("socket", _errno(errno.EACCES), _ArgCmp(0, _CMP_EQ, family, 0))
        read_end, write_end = os.pipe()
        try:
            rc = _lib.seccomp_export_bpf(ctx, write_end)
            os.close(write_end)
            write_end = -1
            if rc < 0:
                raise OSError(-rc, "seccomp_export_bpf failed")
            chunks = []
            while True:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)
    finally:
        _lib.seccomp_release(ctx)


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def prepare(program):
    """A program from :func:`compile_filter` as the ``sock_fprog`` :func:`load` takes
    (prepared in the zygote, so a forked child does no ctypes work but the prctl)."""
    buffer = ctypes.create_string_buffer(program, len(program))
    return buffer, _Fprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))


def load(prepared):
    r"""Install a :func:`prepare`\ d program on this process (inherited by children and
    across exec). Needs ``PR_SET_NO_NEW_PRIVS`` first. Raises ``OSError``."""
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prepared[1]), 0, 0) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")


def apply(allow_inet=True):
    """Compile and load the deny-list. Raises ``OSError`` when it cannot."""
    load(prepare(compile_filter(allow_inet)))
