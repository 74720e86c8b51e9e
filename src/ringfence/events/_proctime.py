"""Process start times: one derivation for the whole agent, so that a start time recorded by a sensor
and one read back by a response action (kill names a process by pid AND start time) always agree.

/proc/<pid>/stat gives `starttime` in clock ticks since boot; the wall-clock boot time comes from
CLOCK_REALTIME - CLOCK_BOOTTIME, read once per process (the `btime` line of /proc/stat is whole seconds,
and a base read twice drifts apart as NTP slews the wall clock).
"""

from __future__ import annotations

import functools
import os
import time

NS_PER_S = 1_000_000_000


@functools.cache
def boot_time_ns() -> int:
    """Wall-clock time of boot, ns since the epoch, fixed at first use."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


@functools.cache
def clock_tick_ns() -> int:
    return NS_PER_S // os.sysconf("SC_CLK_TCK")


def start_time_from_ticks(ticks: int) -> int:
    """Wall-clock ns since the epoch of a process whose /proc stat `starttime` is `ticks`."""
    return boot_time_ns() + ticks * clock_tick_ns()


def start_time_from_kernel_ns(kernel_ns: int) -> int:
    """Wall-clock ns since the epoch of a kernel timestamp such as the proc connector's (CLOCK_MONOTONIC,
    which equals the boot clock /proc starttime counts on, on a host that has not suspended)."""
    return boot_time_ns() + kernel_ns
