"""Fixtures for the process sensor tests: a running sensor on the real kernel, feeding a bounded queue."""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from ringfence.events import Event, ProcessActivity
from ringfence.sensors.process import ProcessSensor, ProcessTable

WAIT_S = 30.0  # an upper bound on waiting for one event, not a timing assertion


@dataclass
class Running:
    sensor: ProcessSensor
    table: ProcessTable
    events: queue.Queue[Event]

    def wait_for(self, predicate: Callable[[ProcessActivity], bool], what: str) -> ProcessActivity:
        """The first queued ProcessActivity matching predicate; fails after WAIT_S without one."""
        while True:
            try:
                event = self.events.get(timeout=WAIT_S)
            except queue.Empty:
                pytest.fail(f"no event within {WAIT_S} s: {what}")
            if isinstance(event, ProcessActivity) and predicate(event):
                return event


@pytest.fixture
def running_sensor() -> Iterator[Running]:
    if os.geteuid() != 0:
        pytest.skip("the process connector needs root (CAP_NET_ADMIN)")
    events: queue.Queue[Event] = queue.Queue(maxsize=200_000)
    table = ProcessTable()
    sensor = ProcessSensor(events.put_nowait, table, "test-host", audit_exec=False)
    sensor.start()
    try:
        yield Running(sensor, table, events)
    finally:
        sensor.stop()
