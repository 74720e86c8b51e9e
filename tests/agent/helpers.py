"""Helpers for agent tests: a config scoped to the test's tmpfs, and an in-process event collector."""

from __future__ import annotations

import queue
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ringfence.agent import Config
from ringfence.agent._config import (
    AgentSection,
    BrokerSection,
    ExtensionsSection,
    OutputSection,
    SensorsSection,
)
from ringfence.broker import AuthTicket
from ringfence.events import AuthAnswer, Event


def scoped_config(
    tmpfs: Path,
    state_dir: Path,
    *,
    deadline_ms: int = 250,
    extensions: tuple[str, ...] = (),
    settings: dict[str, dict[str, object]] | None = None,
    import_paths: tuple[str, ...] = (),
) -> Config:
    """All sensors on; fanotify marks only on the test's tmpfs (none for close-write); a unique audit key."""
    return Config(
        agent=AgentSection(state_dir=str(state_dir)),
        sensors=SensorsSection(
            file_paths=(str(tmpfs),),
            exec_mounts=(str(tmpfs),),
            close_write_paths=(),  # a test that wants close-write scans names its tmpfs
            audit_key=f"rf-t-{uuid.uuid4().hex[:8]}",
        ),
        broker=BrokerSection(auth_deadline_ms=deadline_ms),
        output=OutputSection(console_interval_s=0),
        extensions=ExtensionsSection(enabled=extensions, config=settings or {}, import_paths=import_paths),
    )


class Collector:
    """An in-process subscriber handler: keeps events, answers AUTH with `decide` (None: no answer)."""

    def __init__(self, decide: Callable[[AuthTicket], AuthAnswer | None] | None = None) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.seen: list[Event] = []
        self.decide = decide
        self.asked: list[str] = []

    def on_event(self, event: Event) -> None:
        self.events.put(event)

    def on_auth(self, ticket: AuthTicket) -> AuthAnswer | None:
        self.asked.append(ticket.request.path)
        return self.decide(ticket) if self.decide else None

    def wait_for(self, match: Callable[[Event], bool], timeout_s: float = 5.0) -> Event:
        """The first event (seen before or arriving within `timeout_s`) that `match` accepts."""
        for e in self.seen:
            if match(e):
                return e
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                e = self.events.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(e)
            if match(e):
                return e
        raise AssertionError(f"no matching event within {timeout_s} s; saw {len(self.seen)} events")


def runs(path: Path) -> bool:
    """Whether a real exec of `path` ran (true or false both count): False when it was denied."""
    try:
        return subprocess.run([str(path)], check=False, timeout=30).returncode in (0, 1)
    except PermissionError:
        return False


def eventually(check: Callable[[], bool], timeout_s: float = 15) -> bool:
    """Poll `check` until it holds (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def end_agent(
    proc: subprocess.Popen[Any], sig: int = signal.SIGINT, timeout_s: float = 60, *, drain: bool = False
) -> None:
    """Stop an agent this test started, by its own handle: `sig` (its clean shutdown), then SIGKILL if it
    has not exited within `timeout_s`. `drain`: read its output pipes meanwhile (when no thread of the
    test reads them, a chatty agent would block on a full pipe and never exit)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    wait = proc.communicate if drain else proc.wait
    try:
        wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        wait()
