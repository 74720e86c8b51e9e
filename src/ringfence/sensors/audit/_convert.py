"""Decoded audit events to the records the rest of Ringfence speaks. Pure."""

from __future__ import annotations

from ringfence.events import Endpoint, NetworkActivityId, ProcessRef
from ringfence.sensors._base import AuditExec
from ringfence.sensors.audit._parse import AuditEvent, SyscallInfo

EXEC_NAMES = frozenset({"execve", "execveat"})
NETWORK_ACTIVITY: dict[str, NetworkActivityId] = {
    "connect": NetworkActivityId.OPEN,
    "accept": NetworkActivityId.OPEN,
    "accept4": NetworkActivityId.OPEN,
    "bind": NetworkActivityId.BIND,
    "listen": NetworkActivityId.LISTEN,
}


def to_exec(event: AuditEvent, syscall: SyscallInfo) -> AuditExec:
    """An execve event. argv comes from the EXECVE records (complete, unlike the 128-byte proctitle)."""
    argv = event.argv if event.argv is not None else ()
    return AuditExec(
        time_ns=event.time_ns,
        serial=event.serial,
        pid=syscall.pid,
        ppid=syscall.ppid,
        uid=syscall.uid,
        gid=syscall.gid,
        euid=syscall.euid,
        auid=syscall.auid,
        exe=syscall.exe,
        comm=syscall.comm,
        cwd=event.cwd,
        argv=argv,
        success=syscall.success,
    )


def errno_of(syscall: SyscallInfo) -> int | None:
    return -syscall.exit if not syscall.success and syscall.exit < 0 else None


def addresses(event: AuditEvent, name: str) -> tuple[Endpoint | None, Endpoint | None]:
    """(local, remote) as the records tell them: bind names the local end, connect/accept the remote."""
    if name == "bind":
        return event.sockaddr, None
    if name == "listen":
        return None, None
    return None, event.sockaddr


def peek_target(syscall: SyscallInfo, name: str) -> int | None:
    """The descriptor whose local address is worth reading: connect's socket (a0, still connecting
    counts) or the socket accept returned. None when there is none."""
    if name == "connect" and (syscall.success or errno_of(syscall) == 115):  # EINPROGRESS
        return syscall.args[0]
    if name in ("accept", "accept4") and syscall.success and syscall.exit >= 0:
        return syscall.exit
    return None


def same_endpoint(a: Endpoint | None, b: Endpoint | None) -> bool:
    """Whether the peer we read is the address the record names (so the descriptor was not reused)."""
    if a is None or b is None:
        return False
    return (a.ip, a.port, a.path) == (b.ip, b.port, b.path)


def fallback_process(event: AuditEvent, syscall: SyscallInfo) -> ProcessRef:
    """The process as the SYSCALL record saw it, for when the process table knows nothing."""
    return ProcessRef(
        pid=syscall.pid,
        ppid=syscall.ppid,
        exe=syscall.exe,
        cmdline=event.proctitle,
        cwd=event.cwd,
        uid=syscall.uid,
        gid=syscall.gid,
    )


def knows_nothing(ref: ProcessRef) -> bool:
    return ref.exe is None and ref.ppid is None and not ref.cmdline
