"""Extension processes, host side: spawn through the launcher, the agent's half of the handshake,
resource readings from /proc, and the sandbox hand-off.

Errors (the tree):
    ExtensionError              anything this package raises; the message names the extension
      LaunchError               the process could not be started (sandbox preparation, exec)
      HandshakeFailed           no usable HelloAck by the deadline: EOF, timeout, refusal, bad frame,
                                version mismatch (`.refused` is True when a retry cannot help)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from ringfence._linux import SO_RCVBUFFORCE, read_proc_stat
from ringfence.extensions._spec import ExtensionSpec, SupervisorConfig
from ringfence.sdk._manifest import Manifest
from ringfence.sdk._protocol import (
    ExtensionFrame,
    Hello,
    HelloAck,
    PeerClosed,
    ProtocolError,
    Refusal,
    SetupFailed,
    Wire,
    close_fds,
)

if TYPE_CHECKING:
    from ringfence.extensions._sandbox import PreparedSandbox, SandboxPolicy

log = logging.getLogger(__name__)

LAUNCH_ENV = "RINGFENCE_LAUNCH"
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # Linux values; not in every Python's socket
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


class ExtensionError(Exception):
    """Root of this package's errors."""

    def __init__(self, extension_id: str, message: str) -> None:
        super().__init__(f"extension {extension_id}: {message}")
        self.extension_id = extension_id


class LaunchError(ExtensionError):
    pass


class HandshakeFailed(ExtensionError):
    """`.refused`: a retry cannot help. `.exited`: the process went away first (its exit says why)."""

    def __init__(
        self,
        extension_id: str,
        message: str,
        *,
        refused: bool = False,
        exited: bool = False,
        own_error: str | None = None,
    ) -> None:
        super().__init__(extension_id, message)
        self.refused = refused
        self.exited = exited
        self.own_error = own_error  # the extension's own one-line account (its setup exception)


class LaunchSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What the launcher needs, passed in its environment. Policy and prepared sandbox are the sandbox
    module's own records, carried as JSON."""

    entry: str
    socket_fd: int
    sys_path: tuple[str, ...] = ()
    sandbox: bool = True
    policy: msgspec.Raw = msgspec.Raw(b"null")
    prepared: msgspec.Raw = msgspec.Raw(b"null")


# The sandbox module (Landlock, seccomp, cgroups) is imported only when a sandbox is wanted: inside the
# functions below, and for the types only while type-checking.


def readable_paths(spec: ExtensionSpec) -> tuple[str, ...]:
    """Beyond what the sandbox adds (Python, ringfence): import roots, content, granted directories."""
    paths = set(spec.sys_path) | set(spec.read_paths)
    if spec.content_dir:
        paths.add(spec.content_dir)
    return tuple(sorted(p for p in paths if p and Path(p).is_dir()))


def sandbox_policy(spec: ExtensionSpec) -> SandboxPolicy:
    from ringfence.extensions._sandbox import SandboxPolicy

    return SandboxPolicy(
        extension_id=spec.instance_id,  # the cgroup's name: a shadow instance has its own
        user=spec.user,
        readable_paths=readable_paths(spec),
        writable_paths=(spec.state_dir,) if spec.state_dir else (),
        allow_network=spec.allow_network,
        memory_mb=spec.memory_mb,
        cpu_percent=spec.cpu_percent,
        max_open_files=spec.max_open_files,
        max_processes=spec.max_processes,
    )


class StderrTail:
    """The read end of an extension's stderr, non-blocking: the last `limit` bytes are kept, the rest
    dropped, so a chatty extension can neither block on a full pipe nor fill the agent's memory."""

    def __init__(self, fd: int, limit: int = 16384) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.limit = limit
        self._tail = b""

    def fileno(self) -> int:
        return self.fd

    def read_available(self) -> bool:
        """Read what is there. False at EOF (or once closed)."""
        while self.fd >= 0:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            self._tail = (self._tail + chunk)[-self.limit :]
        return False

    def text(self) -> str:
        return self._tail.decode("utf-8", "replace")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Failed|Fault)\b.*")


def own_error(stderr: str) -> str | None:
    """The exception a Python traceback in `stderr` ended with (its last line), if there is one."""
    if "Traceback (most recent call last)" not in stderr:
        return None
    tail = stderr.rsplit("Traceback (most recent call last)", 1)[1]
    for line in reversed(tail.splitlines()):
        if _EXCEPTION_LINE.match(line.strip()):
            return line.strip()[:500]
    return None


@dataclasses.dataclass
class Spawned:
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    pidfd: int
    policy: SandboxPolicy | None = None
    prepared: PreparedSandbox | None = None
    stderr: StderrTail | None = None  # captured (the supervisor logs it once, when the process ends)


def _size_buffers(ours: socket.socket, theirs: socket.socket, max_frame_bytes: int) -> None:
    """A SEQPACKET message must fit the sender's buffer: room for a few full frames each way."""
    want = 4 * (max_frame_bytes + 4096)
    for s in (ours, theirs):
        for force, plain in (
            (_SO_SNDBUFFORCE, socket.SO_SNDBUF),
            (SO_RCVBUFFORCE, socket.SO_RCVBUF),
        ):
            try:
                s.setsockopt(socket.SOL_SOCKET, force, want)
            except PermissionError:
                s.setsockopt(socket.SOL_SOCKET, plain, want)


def spawn(spec: ExtensionSpec, config: SupervisorConfig, *, capture_stderr: bool = False) -> Spawned:
    """Start the launcher for `spec` (sandbox prepared first when wanted). Raises LaunchError.
    With `capture_stderr`, the process's stderr is a pipe (`Spawned.stderr`) that the caller drains."""
    policy: SandboxPolicy | None = None
    prepared: PreparedSandbox | None = None
    if spec.sandbox:
        from ringfence.extensions._sandbox import prepare_sandbox

        try:
            policy = sandbox_policy(spec)
            prepared = prepare_sandbox(policy)
        except Exception as e:  # translated at the boundary: any sandbox failure is a failed launch
            raise LaunchError(spec.id, f"preparing the sandbox failed: {e}") from e
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        _size_buffers(ours, theirs, config.max_frame_bytes)
        proc = _popen(spec, config, theirs.fileno(), policy, prepared, capture_stderr=capture_stderr)
    except (OSError, subprocess.SubprocessError) as e:
        ours.close()
        release(spec, policy, prepared)
        raise LaunchError(spec.id, f"starting the launcher failed: {e}") from e
    finally:
        theirs.close()
    stderr = None
    if proc.stderr is not None:
        stderr = StderrTail(os.dup(proc.stderr.fileno()))
        proc.stderr.close()
    return Spawned(proc, ours, os.pidfd_open(proc.pid), policy, prepared, stderr)


def _popen(
    spec: ExtensionSpec,
    config: SupervisorConfig,
    fd: int,
    policy: SandboxPolicy | None,
    prepared: PreparedSandbox | None,
    *,
    capture_stderr: bool,
) -> subprocess.Popen[bytes]:
    launch = LaunchSpec(
        entry=spec.entry,
        socket_fd=fd,
        sys_path=spec.sys_path,
        sandbox=spec.sandbox,
        policy=msgspec.Raw(msgspec.json.encode(policy)),
        prepared=msgspec.Raw(msgspec.json.encode(prepared)),
    )
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        LAUNCH_ENV: msgspec.json.encode(launch).decode(),
    }
    argv = [config.python or sys.executable, "-I", "-m", "ringfence.extensions._launch"]
    return subprocess.Popen(
        argv,
        pass_fds=(fd,),
        close_fds=True,
        start_new_session=True,
        env=env,
        cwd="/",
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE if capture_stderr else None,
    )


def release(spec: ExtensionSpec, policy: SandboxPolicy | None, prepared: PreparedSandbox | None) -> None:
    if policy is None or prepared is None:
        return
    from ringfence.extensions._sandbox import release_sandbox

    try:
        release_sandbox(policy, prepared)
    except Exception:  # supervision boundary: a leftover cgroup is logged, the agent goes on
        log.exception("releasing the sandbox of %s failed", spec.id)


def oom_killed(prepared: PreparedSandbox | None) -> bool:
    """Whether the sandbox's cgroup saw an OOM kill (False when the sandbox cannot tell)."""
    if prepared is None:
        return False
    from ringfence.extensions._sandbox import cgroup_oom_killed

    try:
        return cgroup_oom_killed(prepared)
    except Exception:  # supervision boundary: only the exit reason's wording depends on it
        log.exception("reading the OOM state failed")
        return False


def kill(spawned: Spawned) -> None:
    """SIGKILL the process and its process group. Only before it is reaped (so the pid is still ours)."""
    try:
        signal.pidfd_send_signal(spawned.pidfd, signal.SIGKILL)
        os.killpg(spawned.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError as e:
        log.warning("killing extension process %d: %s", spawned.proc.pid, e)


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds(pid: int) -> float | None:
    stat = read_proc_stat(pid)
    return None if stat is None else (stat.utime_ticks + stat.stime_ticks) / _TICKS


def host_handshake(wire: Wire[ExtensionFrame], hello: Hello, timeout_s: float) -> Manifest:
    """The agent's half: send Hello, expect HelloAck with a version we support. Raises HandshakeFailed."""
    ext = hello.extension_id
    wire.sock.settimeout(timeout_s)
    try:
        wire.send(hello)
        frame, fds = wire.recv()
    except TimeoutError as e:
        raise HandshakeFailed(ext, f"no handshake within {timeout_s:g} s") from e
    except PeerClosed as e:
        raise HandshakeFailed(ext, "exited before the handshake", exited=True) from e
    except (ProtocolError, OSError) as e:
        raise HandshakeFailed(ext, f"handshake: {e}") from e
    close_fds(fds)
    if fds:
        raise HandshakeFailed(ext, "sent descriptors at the handshake")
    if isinstance(frame, Refusal):
        raise HandshakeFailed(ext, f"refused the handshake: {frame.reason}", refused=True)
    if isinstance(frame, SetupFailed):
        raise HandshakeFailed(ext, f"setup failed: {frame.message}", exited=True, own_error=frame.message)
    if not isinstance(frame, HelloAck):
        raise HandshakeFailed(ext, f"expected HelloAck, got {type(frame).__name__}")
    if frame.protocol not in hello.protocols:
        agent = list(hello.protocols)
        reason = f"protocol version mismatch: the agent speaks {agent}, {ext} speaks {frame.protocol}"
        _try_send(wire, Refusal(reason))
        raise HandshakeFailed(ext, reason, refused=True)
    return frame.manifest


def _try_send(wire: Wire[ExtensionFrame], frame: msgspec.Struct) -> None:
    try:
        wire.send(frame)
    except (OSError, ProtocolError) as e:
        log.debug("sending %s failed: %s", type(frame).__name__, e)
