"""Fakes for engine tests: a `Context` that records what an extension emits, and a settable clock."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from ringfence.events import AuthKind, Header
from ringfence.sdk import (
    ActionRequest,
    AuthFile,
    AuthRequest,
    Context,
    ProcessRef,
    Severity,
)


@dataclass
class EmittedFinding:
    title: str
    severity: Severity
    fields: dict[str, Any]


@dataclass
class FakeContext:
    """Implements `ringfence.sdk.Context` by recording findings and action requests in lists."""

    settings_table: dict[str, Any] = field(default_factory=dict)
    content_directory: str | None = None
    findings: list[EmittedFinding] = field(default_factory=list)
    actions: list[ActionRequest] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    problems: list[str | None] = field(default_factory=list)

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger("tests.engines.extension")

    @property
    def settings(self) -> Mapping[str, Any]:
        return self.settings_table

    @property
    def content_dir(self) -> str | None:
        return self.content_directory

    def emit_finding(self, title: str, severity: Severity, **fields: Any) -> None:
        self.findings.append(EmittedFinding(title, severity, fields))

    def request_action(self, request: ActionRequest) -> None:
        self.actions.append(request)

    def invalidate_verdicts(self, reason: str) -> None:
        self.stale.append(reason)

    def report_problem(self, message: str | None) -> None:
        self.problems.append(message)


def _conforms(ctx: FakeContext) -> Context:
    return ctx  # mypy checks that FakeContext satisfies the protocol


@dataclass
class FakeClock:
    """A monotonic clock in ns that moves only when a test advances it."""

    now_ns: int = 1_000_000_000

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * 1_000_000_000)


def header(sensor: str = "test") -> Header:
    return Header(id=str(uuid.uuid4()), time_ns=0, mono_ns=0, host="testhost", sensor=sensor, seq=1)


def exec_request(path: str, pid: int = 4242) -> AuthRequest:
    return AuthRequest(
        header=header("fanotify"),
        kind=AuthKind.EXEC,
        path=path,
        process=ProcessRef(pid=pid, exe="/usr/bin/bash", cmdline=("bash",)),
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def open_ro() -> Iterator[Callable[[str], AuthFile]]:
    """Open files O_RDONLY as the agent would pass them; every descriptor is closed at teardown."""
    fds: list[int] = []

    def _open(path: str) -> AuthFile:
        fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        return AuthFile(fds[-1])

    yield _open
    for fd in fds:
        os.close(fd)


@pytest.fixture
def make_ctx() -> Callable[..., FakeContext]:
    """`make_ctx(settings={...}, content_dir=...)` builds a fresh FakeContext."""

    def _make(settings: dict[str, Any] | None = None, content_dir: str | None = None) -> FakeContext:
        return FakeContext(settings_table=dict(settings or {}), content_directory=content_dir)

    return _make


@pytest.fixture
def make_exec_request() -> Callable[..., AuthRequest]:
    return exec_request
