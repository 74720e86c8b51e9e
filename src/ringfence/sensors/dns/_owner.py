"""Which process sent a DNS query: best effort, from the query's local port. A packet names no process.

The local port of an outgoing query is looked up in the socket tables of the namespace the calling
thread is in (/proc/thread-self/net/udp, udp6, tcp, tcp6): that gives the socket's inode and owner uid
at once, cheaply. The pid takes a walk over /proc/*/fd for `socket:[inode]`, which cost 3.5 ms with 85
processes here, and grows with their number; so walks are rate-limited (a token bucket on the injected
clock, 5 a second by default) and a query beyond the rate carries no process. A short-lived client may
have closed its socket before the walk: then nothing is known. Every outcome is counted (`owner_*`;
`owner_uid_only`: the socket was found but no process held it any more).

Queries sent by a local resolver (systemd-resolved, dnsmasq) on behalf of others name the resolver:
the original asker is one hop further and not knowable from packets.
"""

from __future__ import annotations

import dataclasses
import os

from ringfence._counters import Counters
from ringfence.events import Clock
from ringfence.sensors.dns._rate import TokenBucket

_TABLES = {"udp": ("udp", "udp6"), "tcp": ("tcp", "tcp6")}
OUTCOMES = ("owner_pid", "owner_uid_only", "owner_rate_limited", "owner_unknown")


@dataclasses.dataclass(frozen=True)
class Owner:
    uid: int
    pid: int | None


class OwnerFinder:
    def __init__(
        self, clock: Clock, counters: Counters, *, walks_per_s: float = 5.0, proc: str = "/proc"
    ) -> None:
        self._counters = counters
        self._walks = TokenBucket(clock, walks_per_s)
        self._proc = proc

    def find(self, transport: str, port: int) -> Owner | None:
        """The owner of the local socket on `port`; call from a thread in the packet's namespace."""
        found = socket_of(f"{self._proc}/thread-self/net", _TABLES[transport], port)
        if found is None:
            self._counters.add("owner_unknown")
            return None
        uid, inode = found
        if not self._walks.take():
            self._counters.add("owner_rate_limited")
            return Owner(uid=uid, pid=None)
        pid = pid_of_inode(self._proc, inode)
        self._counters.add("owner_pid" if pid is not None else "owner_uid_only")
        return Owner(uid=uid, pid=pid)


def socket_of(net: str, tables: tuple[str, ...], port: int) -> tuple[int, int] | None:
    """(uid, inode) of the socket bound to local `port` in the given /proc/net tables."""
    want = f":{port:04X}"
    for table in tables:
        try:
            with open(f"{net}/{table}") as f:
                next(f, None)  # the header
                for line in f:
                    fields = line.split()
                    if len(fields) > 9 and fields[1].endswith(want) and fields[9] != "0":
                        return int(fields[7]), int(fields[9])
        except (OSError, ValueError):
            continue  # a table this kernel lacks (no IPv6), or a line we do not understand
    return None


def pid_of_inode(proc: str, inode: int) -> int | None:
    """The first process holding `socket:[inode]` open, or None."""
    target = f"socket:[{inode}]"
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        fd_dir = f"{proc}/{entry.name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") == target:
                    return int(entry.name)
            except OSError:
                continue  # closed while we walked
    return None
