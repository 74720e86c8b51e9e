"""Fault-injection extensions for the supervisor's tests, written on the public SDK only.

Each is run by the supervisor through a `module:attr` spec (`fault_extensions:Aborter`) with this
directory's parent on `sys_path`. Markers are file paths in FileActivity events the test publishes.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
import threading

from ringfence.sdk import (
    ActionKind,
    ActionRequest,
    AuthAnswer,
    AuthFile,
    AuthParticipation,
    AuthRequest,
    Context,
    Event,
    EventKind,
    Extension,
    FailurePolicy,
    FileActivity,
    Manifest,
    Permission,
    Severity,
    allow,
    deny,
)


def _manifest(ident: str, **kw: object) -> Manifest:
    return Manifest(id=ident, vendor="ringfence-tests", version="0", **kw)  # type: ignore[arg-type]


def _marker(event: Event, suffix: str) -> bool:
    return isinstance(event, FileActivity) and event.path.endswith(suffix)


class WellBehaved(Extension):
    """Reports each `.marker` event as a finding; AUTH: denies paths containing `deny-me` with the file's
    sha256 (read through the passed descriptor) as the reason, allows the rest."""

    manifest = _manifest(
        "fault.good",
        subscribes=frozenset({EventKind.FILE}),
        auth=AuthParticipation(deadline_ms=2000, failure=FailurePolicy.FAIL_OPEN),
        permissions=frozenset({Permission.FILE_CONTENTS}),
    )

    def on_event(self, event: Event) -> None:
        if _marker(event, ".marker"):
            assert isinstance(event, FileActivity)
            self.ctx.emit_finding("marker seen", Severity.INFORMATIONAL, file_path=event.path)

    def on_auth(self, request: AuthRequest, file: AuthFile | None) -> AuthAnswer:
        if "deny-me" in request.path:
            return deny(file.sha256() if file is not None else "no file")
        return allow(cacheable=False)


class Aborter(Extension):
    manifest = _manifest("fault.aborter", subscribes=frozenset({EventKind.FILE}))

    def on_event(self, event: Event) -> None:
        if _marker(event, ".boom"):
            os.abort()


class NeverAnswers(Extension):
    """Blocks forever in on_auth."""

    manifest = _manifest(
        "fault.silent",
        auth=AuthParticipation(deadline_ms=200, failure=FailurePolicy.FAIL_OPEN),
    )

    def on_auth(self, request: AuthRequest, file: AuthFile | None) -> AuthAnswer:
        threading.Event().wait()
        return allow()


class MemoryHog(Extension):
    """Allocates (and touches) memory without end once it sees `.grow`; stops at 2 GiB to spare the VM."""

    manifest = _manifest("fault.hog", subscribes=frozenset({EventKind.FILE}))

    def on_event(self, event: Event) -> None:
        if _marker(event, ".grow"):
            hoard = []
            for _ in range(256):
                hoard.append(b"\x01" * (8 << 20))
                threading.Event().wait(0.01)
            threading.Event().wait()


class Flooder(Extension):
    """Emits findings as fast as it can, from a thread started in setup (100,000 a second and more)."""

    manifest = _manifest("fault.flood", subscribes=frozenset({EventKind.FILE}))

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        threading.Thread(target=self._flood, daemon=True).start()

    def _flood(self) -> None:
        while True:
            self.ctx.emit_finding("flood", Severity.LOW)


def _agent_socket() -> int:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                s = socket.socket(fileno=os.dup(fd))
                kind = s.type
                s.close()
                if kind == socket.SOCK_SEQPACKET:
                    return fd
        except OSError:
            continue
    raise RuntimeError("no SEQPACKET socket found")


class GarbageWriter(Extension):
    """Writes raw bytes that are not a frame straight onto the agent's socket when it sees `.garbage`."""

    manifest = _manifest("fault.garbage", subscribes=frozenset({EventKind.FILE}))

    def on_event(self, event: Event) -> None:
        if _marker(event, ".garbage"):
            os.write(_agent_socket(), b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1 not msgpack")


class Responder(Extension):
    """Asks for a KILL of pid 0 on `.act`; reports the result it gets back as a finding."""

    manifest = _manifest(
        "fault.responder",
        subscribes=frozenset({EventKind.FILE}),
        permissions=frozenset({Permission.RESPONSE}),
    )

    def on_event(self, event: Event) -> None:
        if _marker(event, ".act"):
            self.ctx.request_action(ActionRequest(kind=ActionKind.KILL, pid=0, requested_by="someone-else"))

    def on_action_result(self, result: object) -> None:
        self.ctx.emit_finding("action result", Severity.INFORMATIONAL, description=repr(result))


class Unprivileged(Responder):
    """The same requests, without the response permission."""

    manifest = _manifest("fault.unprivileged", subscribes=frozenset({EventKind.FILE}))


def _outcome(attempt: object) -> str:
    try:
        attempt()  # type: ignore[operator]
    except OSError as e:
        return f"denied: {errno.errorcode.get(e.errno or 0, e.errno)}"
    return "allowed"


def _connect() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        s.connect(("127.0.0.1", 9))


def _read_shadow() -> None:
    with open("/etc/shadow", "rb") as f:
        f.read(1)


def _ptrace(pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    ptrace_attach, ptrace_detach = 16, 17
    if libc.ptrace(ptrace_attach, pid, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    libc.ptrace(ptrace_detach, pid, 0, 0)


class Escaper(Extension):
    """On `.escape`, tries what the sandbox must deny, and reports each outcome as a finding whose title
    names the attempt and whose description is `allowed` or `denied: <errno>`. The path to write outside
    its state dir comes from settings["outside"]; the pid to ptrace is its parent (the agent)."""

    manifest = _manifest("fault.escape", subscribes=frozenset({EventKind.FILE}))

    def on_event(self, event: Event) -> None:
        if not _marker(event, ".escape"):
            return
        outside = str(self.ctx.settings["outside"])
        inside = str(self.ctx.settings.get("inside", ""))
        attempts = {
            "network": _connect,
            "read-shadow": _read_shadow,
            "write-outside": lambda: os.close(os.open(outside, os.O_WRONLY | os.O_CREAT, 0o600)),
            "ptrace-agent": lambda: _ptrace(os.getppid()),
        }
        if inside:
            attempts["write-inside"] = lambda: os.close(os.open(inside, os.O_WRONLY | os.O_CREAT, 0o600))
        for name, attempt in attempts.items():
            self.ctx.emit_finding(f"escape:{name}", Severity.INFORMATIONAL, description=_outcome(attempt))


class SetupFails(Extension):
    """Its setup raises, as an engine whose content cannot be read does: it never completes a handshake."""

    manifest = _manifest(
        "fault.setup",
        auth=AuthParticipation(deadline_ms=200, failure=FailurePolicy.FAIL_OPEN),
    )

    def setup(self, ctx: Context) -> None:
        raise PermissionError("cannot open the blocklist /root/x/bl.txt: Permission denied")


class StrictAborter(Extension):
    """A fail-closed AUTH extension that aborts on `.boom` (and on every AUTH request, once told to)."""

    manifest = _manifest(
        "fault.strict",
        subscribes=frozenset({EventKind.FILE}),
        auth=AuthParticipation(deadline_ms=2000, failure=FailurePolicy.FAIL_CLOSED),
    )

    def on_event(self, event: Event) -> None:
        if _marker(event, ".boom"):
            os.abort()

    def on_auth(self, request: AuthRequest, file: AuthFile | None) -> AuthAnswer:
        return allow(cacheable=True)


class LenientAborter(StrictAborter):
    """The same, fail-open."""

    manifest = _manifest(
        "fault.lenient",
        subscribes=frozenset({EventKind.FILE}),
        auth=AuthParticipation(deadline_ms=2000, failure=FailurePolicy.FAIL_OPEN),
    )


class Allower(Extension):
    """AUTH, fail-open: allows everything, cacheable (as a reputation engine does for clean files)."""

    manifest = _manifest(
        "fault.allower",
        auth=AuthParticipation(deadline_ms=2000, failure=FailurePolicy.FAIL_OPEN),
    )

    def on_auth(self, request: AuthRequest, file: AuthFile | None) -> AuthAnswer:
        return allow(cacheable=True)


class Stuck(Extension):
    """Takes file events and never returns from the first: its queues fill and the agent drops, counted."""

    manifest = _manifest("fault.stuck", subscribes=frozenset({EventKind.FILE}))

    def on_event(self, event: Event) -> None:
        threading.Event().wait()


class SetupHangs(Extension):
    """Its setup never returns (a content load that hangs): it never completes the handshake."""

    manifest = _manifest("fault.hangs", subscribes=frozenset({EventKind.FILE}))

    def setup(self, ctx: Context) -> None:
        threading.Event().wait()
