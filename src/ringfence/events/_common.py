"""The parts every event record shares: its header, the process it is about, socket addresses."""

from __future__ import annotations

import msgspec


class Header(msgspec.Struct, frozen=True, kw_only=True):
    """Every event's header. `seq` is per sensor and has no gaps unless the sensor counted a drop."""

    id: str
    time_ns: int  # wall clock, ns since the epoch
    mono_ns: int  # CLOCK_MONOTONIC, ns
    host: str
    sensor: str
    seq: int


class ProcessRef(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A resolved process, as the process table cache knew it when the event was made."""

    pid: int
    ppid: int | None = None
    exe: str | None = None
    cmdline: tuple[str, ...] = ()
    cwd: str | None = None
    uid: int | None = None
    user: str | None = None
    gid: int | None = None
    start_time_ns: int | None = None  # wall clock, ns since the epoch
    container_id: str | None = None
    cgroup: str | None = None
    parent: ProcessRef | None = None


class Endpoint(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A socket address: `ip` and `port` for inet families, `path` for unix sockets. `hostname`: the name
    the address is known by (a DNS answer that resolved to it, a login's remote host)."""

    family: str  # "inet", "inet6", "unix", "netlink", ...
    ip: str | None = None
    port: int | None = None
    path: str | None = None
    hostname: str | None = None
