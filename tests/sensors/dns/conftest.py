"""Fixtures for the DNS sensor on the real kernel: two namespaces joined by a veth pair (the sensor and
the client in `host`, the DNS server in `peer`), and sensors that are stopped and checked at teardown."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from tests.response._netns import veth_pair
from tests.sensors.dns.support import Events, UnknownProcesses

from ringfence.sensors.dns import DnsSensor


@dataclass
class Netns:
    host: str
    peer: str

    @property
    def host_path(self) -> str:
        return f"/run/netns/{self.host}"


@dataclass
class Running:
    sensor: DnsSensor
    events: Events


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def dns_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("ringfence-dns")]


@pytest.fixture
def netns() -> Iterator[Netns]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces and packet sockets need root")
    with veth_pair() as (host, peer):
        yield Netns(host, peer)


@pytest.fixture
def make_sensor(netns: Netns) -> Iterator[Callable[..., Running]]:
    """Sensors in the test's `host` namespace; at teardown each is stopped, and no thread or fd is left."""
    fds = open_fds()
    made: list[DnsSensor] = []

    def make(**kwargs: object) -> Running:
        events = Events()
        kwargs.setdefault("netns", netns.host_path)
        kwargs.setdefault("resolver", UnknownProcesses())
        sensor = DnsSensor(events, host="test", **kwargs)  # type: ignore[arg-type]
        made.append(sensor)
        return Running(sensor, events)

    yield make
    for sensor in made:
        sensor.stop()
    assert dns_threads() == [], "DNS sensor threads left running"
    assert open_fds() <= fds, "DNS sensor left file descriptors open"


@pytest.fixture
def running(make_sensor: Callable[..., Running]) -> Running:
    run = make_sensor()
    run.sensor.start()
    return run
