"""A real Broker + DeadlineRunner + Supervisor running fault extensions as real processes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ringfence.broker import Broker, DeadlineRunner
from ringfence.events import (
    AuthAnswer,
    AuthKind,
    AuthRequest,
    DetectionFinding,
    Event,
    FileActivity,
    FileActivityId,
    HeaderStamper,
    ProcessRef,
)
from ringfence.extensions import (
    ExtensionSpec,
    ExtensionStatistics,
    RestartPolicy,
    Supervisor,
    SupervisorConfig,
)

HERE = Path(__file__).resolve().parent
FAST_RESTART = RestartPolicy(
    backoff_initial_s=0.05, backoff_max_s=0.2, crash_loop_failures=5, crash_loop_window_s=60
)


def fault_spec(ext_id: str, cls: str, **kw: Any) -> ExtensionSpec:
    kw.setdefault("sandbox", False)
    kw.setdefault("handshake_timeout_s", 20.0)
    return ExtensionSpec(id=ext_id, entry=f"fault_extensions:{cls}", sys_path=(str(HERE),), **kw)


def wait_until(what: str, pred: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Wait for a condition with a generous deadline (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.02)


class Rig:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.findings: list[DetectionFinding] = []
        self.auth_ready: list[str] = []
        self._lock = threading.Lock()
        self.stamper = HeaderStamper("test", "host")
        self.supervisor: Supervisor | None = None

    def sink(self, finding: DetectionFinding) -> None:
        with self._lock:
            self.findings.append(finding)
        self.broker.publish(finding)

    def start(self, specs: list[ExtensionSpec], **kw: Any) -> Supervisor:
        kw.setdefault("config", SupervisorConfig(restart=FAST_RESTART))
        self.supervisor = Supervisor(
            specs,
            findings_sink=self.sink,
            on_first_ready=self.broker.subscribe,
            on_gone=self.broker.withdraw,
            on_auth_ready=self.auth_ready.append,
            **kw,
        )
        self.supervisor.start()
        return self.supervisor

    def stats(self, ext_id: str) -> ExtensionStatistics:
        assert self.supervisor is not None
        return next(s for s in self.supervisor.statistics() if s.id == ext_id)

    def wait_running(self, ext_id: str, timeout_s: float = 30.0) -> None:
        wait_until(f"{ext_id} running", lambda: self.stats(ext_id).state == "running", timeout_s)

    def found(self, title: str, source: str | None = None) -> list[DetectionFinding]:
        with self._lock:
            return [f for f in self.findings if f.title == title and (source is None or f.source == source)]

    def file_event(self, path: str) -> Event:
        return FileActivity(header=self.stamper.stamp(), activity=FileActivityId.CREATE, path=path)

    def publish(self, path: str) -> None:
        self.broker.publish(self.file_event(path))

    def authorize(self, path: str, fd: int = -1) -> AuthAnswer:
        """A fake AUTH source: what the exec sensor does, minus fanotify. Waits for the broker's answer."""
        answers: list[AuthAnswer] = []
        done = threading.Event()

        def respond(answer: AuthAnswer) -> None:
            answers.append(answer)
            done.set()

        request = AuthRequest(
            header=self.stamper.stamp(), kind=AuthKind.EXEC, path=path, process=ProcessRef(pid=os.getpid())
        )
        self.broker.authorize(request, fd, respond)
        assert done.wait(30), f"the broker did not answer AUTH for {path}"
        assert len(answers) == 1
        return answers[0]


@pytest.fixture
def rig() -> Iterator[Rig]:
    broker = Broker(auth_deadline_ms=2000)
    runner = DeadlineRunner(broker.arbiter)
    runner.start()
    r = Rig(broker)
    try:
        yield r
    finally:
        if r.supervisor is not None:
            r.supervisor.stop()
        runner.stop()
