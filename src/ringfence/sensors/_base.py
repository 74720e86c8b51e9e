"""What every sensor is: started and stopped by the agent, feeding typed events into sinks, counting.

Errors (the tree):
    SensorError                 anything a sensor raises
      SensorUnavailable         the kernel interface is missing or refused; `.interface` names it
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgspec

from ringfence.events import AuthAnswer, AuthRequest, Event, ProcessRef
from ringfence.events import SensorStatistics as SensorStatistics  # noqa: PLC0414 - re-exported to the sensors

READ_LINGER_S = 0.005
"""How long a sensor thread that reads a kernel socket (audit, the process connector) waits, once woken,
before it drains the socket: what arrives meanwhile costs no wake-up of its own. One exec brings eight
audit records and three connector messages, each a datagram, and the wake-ups (two threads, a queue, the
interpreter lock) cost more than the decoding (bench/RESULTS.md). It delays these events by as much; no
AUTH answer waits on them, and the sockets' buffers hold many times what 5 ms brings."""

EventSink = Callable[[Event], None]
"""Takes one event. Never blocks (the broker's `publish`)."""

AuthSink = Callable[[AuthRequest, int, Callable[[AuthAnswer], None]], None]
"""Takes an AUTH request, the file's read-only fd (valid until answered) and the answer callback.
Never blocks; the callback is called exactly once, from any thread (the broker's `authorize`)."""


class SensorError(Exception):
    """Root of every error a sensor raises."""


class SensorUnavailable(SensorError):
    """A kernel interface is missing or refused. The message says which, and what the kernel said."""

    def __init__(self, interface: str, message: str) -> None:
        super().__init__(f"{interface}: {message}")
        self.interface = interface


class Sensor(Protocol):
    @property
    def name(self) -> str: ...

    def start(self) -> None:
        """Open the kernel interface and start reading. Raises SensorUnavailable."""
        ...

    def stop(self) -> None:
        """Stop reading and remove everything this sensor put into the kernel (marks, rules). Idempotent."""
        ...

    def statistics(self) -> SensorStatistics: ...


class ProcessResolver(Protocol):
    """Resolves a pid to what the process table cache knows of it (parent, exe, argv, user, ...)."""

    def resolve(self, pid: int) -> ProcessRef: ...


class AuditExec(msgspec.Struct, frozen=True, kw_only=True):
    """One execve as audit saw it: the SYSCALL, EXECVE, CWD, PATH and PROCTITLE records of one event id,
    decoded. Produced by the audit sensor, consumed by the process sensor."""

    time_ns: int
    serial: int
    pid: int
    ppid: int
    uid: int
    gid: int
    euid: int
    auid: int | None
    exe: str | None
    comm: str | None
    cwd: str | None
    argv: tuple[str, ...]
    success: bool


AuditExecSink = Callable[[AuditExec], None]
