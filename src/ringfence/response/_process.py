"""Killing one process, named by pid AND start time, through a pidfd so that a reused pid is never hit.

The start time is the wall clock at which the process started, derived exactly as the process table
derives it (`ringfence.events.start_time_from_ticks` on field 22 of /proc/<pid>/stat).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
from collections.abc import Callable, Collection

from ringfence._linux import PF_KTHREAD, ProcStat, read_proc_stat
from ringfence.events import clock_tick_ns, start_time_from_ticks
from ringfence.extensions._sandbox_cgroup import PARENT_DIR
from ringfence.response._errors import ActionRefused, KillError

logger = logging.getLogger(__name__)


def start_time_ns(pid: int, proc: str = "/proc") -> int:
    """The wall-clock start time of `pid`, in ns since the epoch. Raises KillError if it is gone."""
    return start_time_from_ticks(_stat(pid, proc).start_ticks)


EXTENSION_CGROUP = f"/{PARENT_DIR}/"  # every extension and all it forks run in a cgroup below this


def _stat(pid: int, proc: str = "/proc") -> ProcStat:
    stat = read_proc_stat(pid, proc)
    if stat is None:
        raise KillError(pid, "no such process")
    return stat


def protection_of(pid: int) -> str | None:
    """Why the process is never killed, whoever asks: a kernel thread, or one in an extension's cgroup
    (an extension, or anything it forked, of any vendor). None if neither."""
    if _stat(pid).flags & PF_KTHREAD:
        return "a kernel thread"
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError as e:
        raise KillError(pid, "no such process") from e
    if any(line.split(":", 2)[-1].startswith(EXTENSION_CGROUP) for line in lines):
        return "an extension's process (it runs in a Ringfence extension cgroup)"
    return None


class Killer:
    """Checks a process's identity, then SIGKILLs it through a pidfd and waits for it to be gone.

    `protected` is called on every kill: the live set of pids never killed (the extensions', which
    change as they restart), beside `static`, pid 1 and the agent itself."""

    def __init__(
        self,
        static: frozenset[int],
        tolerance_ticks: int,
        wait_ms: int,
        protected: Callable[[], Collection[int]] | None = None,
    ) -> None:
        self._static = static | {1, os.getpid()}
        self._live = protected or frozenset
        self._tolerance_ns = tolerance_ticks * clock_tick_ns()
        self._wait_ms = wait_ms

    def kill(self, pid: int, expected_start_ns: int) -> str:
        """Kills the process; returns what happened. Raises ActionRefused for a protected process,
        KillError if it is gone, reused or still there after the wait."""
        if pid <= 0:
            raise ActionRefused(f"kill pid {pid}: not a process id")
        if pid in self._static or pid in self._live():
            raise ActionRefused(f"kill pid {pid}: protected process (pid 1, the agent, or an extension)")
        pidfd = self._open(pid)
        try:
            self._check_identity(pid, pidfd, expected_start_ns)
            why = protection_of(pid)  # the pidfd pins the process: this is still the one we checked
            if why is not None:
                raise ActionRefused(f"kill pid {pid}: protected process ({why})")
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            logger.debug("sent SIGKILL to pid %d", pid)
            if not self._wait_gone(pidfd):
                raise KillError(pid, f"SIGKILL sent but the process was still there after {self._wait_ms} ms")
        except ProcessLookupError as e:
            raise KillError(pid, "the process exited before it could be killed") from e
        finally:
            os.close(pidfd)
        return f"killed pid {pid}"

    @staticmethod
    def _open(pid: int) -> int:
        try:
            return os.pidfd_open(pid)
        except ProcessLookupError as e:
            raise KillError(pid, "no such process") from e
        except OSError as e:
            raise KillError(pid, f"pidfd_open failed: {os.strerror(e.errno or errno.EIO)}") from e

    def _check_identity(self, pid: int, pidfd: int, expected_start_ns: int) -> None:
        actual = start_time_ns(pid)
        # /proc/<pid> was read after the pidfd pinned the process; if the process is still alive now,
        # the pid was still its own when we read it, so `actual` is its start time (signal 0 checks)
        signal.pidfd_send_signal(pidfd, 0)
        if abs(actual - expected_start_ns) > self._tolerance_ns:
            raise KillError(
                pid,
                f"start time mismatch (pid reused?): expected {expected_start_ns} ns, the process "
                f"holding this pid started at {actual} ns",
            )

    def _wait_gone(self, pidfd: int) -> bool:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(self._wait_ms))
