"""Fixtures for the audit sensor on the real kernel: a running sensor with its own key, feeding bounded
queues, and a check at teardown that no rule with that key is left and the audit settings are back."""

from __future__ import annotations

import os
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

from ringfence.events import Event, NetworkActivity, ProcessRef
from ringfence.sensors import AuditExec
from ringfence.sensors.audit import AuditSensor
from ringfence.sensors.audit._client import AuditClient, open_audit_socket
from ringfence.sensors.audit._netlink import AuditStatus
from ringfence.sensors.audit._rules import keyed_rules

WAIT_S = 15.0  # an upper bound on waiting for one event, not a timing assertion
T = TypeVar("T")


class UnknownProcesses:
    """A process table that knows nothing, so the sensor falls back to the SYSCALL record."""

    def resolve(self, pid: int) -> ProcessRef:
        return ProcessRef(pid=pid)


def settings(status: AuditStatus) -> tuple[int, int, int, int]:
    return (status.enabled, status.pid, status.backlog_limit, status.backlog_wait_time)


def wait_for(items: queue.Queue[T], predicate: Callable[[T], bool], what: str) -> T:
    """The first queued item matching predicate; fails once WAIT_S has passed without one."""
    deadline = time.monotonic() + WAIT_S
    while (left := deadline - time.monotonic()) > 0:
        try:
            item = items.get(timeout=left)
        except queue.Empty:
            break
        if predicate(item):
            return item
    pytest.fail(f"nothing within {WAIT_S} s: {what}")


@dataclass
class Running:
    sensor: AuditSensor
    execs: queue.Queue[AuditExec]
    network: queue.Queue[NetworkActivity]
    events: queue.Queue[Event]  # the feed's: AuditEvent, Authentication, AccountChange

    def wait_exec(self, predicate: Callable[[AuditExec], bool], what: str) -> AuditExec:
        return wait_for(self.execs, predicate, what)

    def wait_network(self, predicate: Callable[[NetworkActivity], bool], what: str) -> NetworkActivity:
        return wait_for(self.network, predicate, what)

    def wait_event(self, predicate: Callable[[Event], bool], what: str) -> Event:
        return wait_for(self.events, predicate, what)


@pytest.fixture
def control() -> Iterator[AuditClient]:
    if os.geteuid() != 0:
        pytest.skip("audit netlink needs root (CAP_AUDIT_CONTROL)")
    client = AuditClient(open_audit_socket())
    try:
        yield client
    finally:
        client.sock.close()


@pytest.fixture
def key() -> str:
    return f"rf-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_sensor(control: AuditClient, key: str) -> Iterator[Callable[..., Running]]:
    """Builds sensors with the test's key; each is stopped at teardown, then the kernel is checked."""
    before = settings(control.status())
    made: list[AuditSensor] = []

    def make(**kwargs: object) -> Running:
        execs: queue.Queue[AuditExec] = queue.Queue(maxsize=100_000)
        network: queue.Queue[NetworkActivity] = queue.Queue(maxsize=100_000)
        events: queue.Queue[Event] = queue.Queue(maxsize=100_000)

        def to_network(event: Event) -> None:
            assert isinstance(event, NetworkActivity)
            network.put_nowait(event)

        kwargs.setdefault("resolver", UnknownProcesses())
        kwargs.setdefault("event_sink", events.put_nowait)
        sensor = AuditSensor(to_network, execs.put_nowait, host="test", key=key, **kwargs)  # type: ignore[arg-type]
        made.append(sensor)
        return Running(sensor, execs, network, events)

    try:
        yield make
    finally:
        for sensor in made:
            sensor.stop()
        assert keyed_rules(control, key) == [], f"audit rules with key {key} left behind"
        now = control.status()
        assert now.pid != os.getpid(), "still registered as the audit daemon"
        # a concurrent agent that became (or stopped being) the daemon meanwhile set its own settings
        changed_hands = now.pid != before[1]
        assert changed_hands or settings(now) == before, "audit settings not restored"


@pytest.fixture
def running(make_sensor: Callable[..., Running]) -> Running:
    run = make_sensor()
    run.sensor.start()
    return run
