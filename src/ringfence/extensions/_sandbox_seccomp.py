"""The seccomp filter, built with pyseccomp (libseccomp): default allow, EPERM for what no extension needs.

Denied: socket() of any family but AF_UNIX (unless the policy allows network), debugging other
processes (ptrace, process_vm_*), mounts and namespaces (including clone with CLONE_NEW* flags; clone3
gets ENOSYS so libc falls back to clone, whose flags the filter can read), kernel modules, kexec, bpf,
perf, keyrings, reboot, swap, file handles, port I/O, io_uring (it would bypass the socket rule) and
userfaultfd. Syscalls of a foreign architecture (x32, i386 via int 0x80) kill the process: that is
libseccomp's default for an architecture the filter does not list.

Errors: SandboxUnavailable when libseccomp cannot be loaded; SandboxError when the kernel refuses.
"""

from __future__ import annotations

import errno
import logging
import socket
from types import ModuleType

from ringfence.extensions._sandbox_errors import SandboxError, SandboxUnavailable, os_error_text

log = logging.getLogger(__name__)

DENIED_SYSCALLS = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "setns",
    "unshare",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "reboot",
    "swapon",
    "swapoff",
    "open_by_handle_at",
    "name_to_handle_at",
    "iopl",
    "ioperm",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "userfaultfd",
)

CLONE_NAMESPACE_FLAGS = (
    0x00000080,  # CLONE_NEWTIME
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)


def load_module() -> ModuleType:
    """pyseccomp, imported on first use so that `sandbox_features` can report a missing libseccomp."""
    try:
        import pyseccomp
    except (ImportError, OSError) as e:
        raise SandboxUnavailable("seccomp", f"cannot load pyseccomp/libseccomp: {e}") from e
    module: ModuleType = pyseccomp
    return module


class Filter:
    """A filter built but not yet loaded: build it while files can still be opened (libseccomp
    lookup, ctypes.util), load it last."""

    def __init__(self, allow_network: bool) -> None:
        self._sc = load_module()
        try:
            self._filter = self._sc.SyscallFilter(self._sc.ALLOW)
            self.rule_count = _add_rules(self._sc, self._filter, allow_network)
        except OSError as e:
            raise SandboxError(f"cannot build seccomp filter: {os_error_text(e)}") from e

    def load(self) -> None:
        """Install into the calling thread and the children it will make."""
        try:
            self._filter.load()
        except OSError as e:
            raise SandboxError(f"seccomp filter refused by the kernel: {os_error_text(e)}") from e


def _add_rules(sc: ModuleType, filt: object, allow_network: bool) -> int:
    eperm = sc.ERRNO(errno.EPERM)
    rules: list[tuple[int, str, tuple[object, ...]]] = [(eperm, name, ()) for name in DENIED_SYSCALLS]
    rules += [(eperm, "clone", (sc.Arg(0, sc.MASKED_EQ, flag, flag),)) for flag in CLONE_NAMESPACE_FLAGS]
    rules.append((sc.ERRNO(errno.ENOSYS), "clone3", ()))
    if not allow_network:
        rules.append((eperm, "socket", (sc.Arg(0, sc.NE, socket.AF_UNIX),)))
    count = 0
    for action, name, args in rules:
        number = sc.resolve_syscall(sc.Arch.NATIVE, name)
        if number < 0:
            log.debug("seccomp: no syscall %s on this architecture", name)
            continue
        filt.add_rule(action, number, *args)  # type: ignore[attr-defined]
        count += 1
    return count


def describe() -> str:
    """'libseccomp API level N' or why it is unavailable."""
    try:
        sc = load_module()
        return f"available (libseccomp API level {sc.get_api()})"
    except SandboxUnavailable as e:
        return f"unavailable: {e}"
