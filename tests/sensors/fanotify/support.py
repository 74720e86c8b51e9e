"""Helpers for the fanotify sensor tests: a pid-only resolver, a policy AUTH sink, waiting, exec."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.kernel import fanotify_fds  # noqa: F401 - re-exported for the tests here

from ringfence.events import AuthAnswer, AuthRequest, ProcessRef, Verdict


class PidResolver:
    """Knows nothing but the pid."""

    def resolve(self, pid: int) -> ProcessRef:
        return ProcessRef(pid=pid)


class RaisingResolver:
    def resolve(self, pid: int) -> ProcessRef:
        raise RuntimeError(f"resolver broken for pid {pid}")


class PolicySink:
    """An AuthSink that records each request and answers at once: DENY for paths in `deny`, else ALLOW
    (cacheable if `cacheable`). With `answer=False` it records and never answers."""

    def __init__(self, *, deny: tuple[str, ...] = (), cacheable: bool = False, answer: bool = True) -> None:
        self.deny = deny
        self.cacheable = cacheable
        self.answer = answer
        self.requests: list[AuthRequest] = []
        self.responders: list[Callable[[AuthAnswer], None]] = []
        self._lock = threading.Lock()

    def __call__(self, request: AuthRequest, fd: int, respond: Callable[[AuthAnswer], None]) -> None:
        with self._lock:
            self.requests.append(request)
            self.responders.append(respond)
        if not self.answer:
            return
        if request.path in self.deny:
            respond(AuthAnswer(Verdict.DENY, reason="test policy"))
        else:
            respond(AuthAnswer(Verdict.ALLOW, cacheable=self.cacheable))

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Wait for something another thread does; fails the test (never hangs it) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def run(path: Path | str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Exec a program; the timeout only guards against a hung test, it asserts nothing."""
    return subprocess.run([str(path), *args], check=False, timeout=30, capture_output=True)
