"""The agent's health document: what `ringfence status` prints and what decides its exit status."""

from __future__ import annotations

from typing import Any

import msgspec

from ringfence.broker import BrokerStatistics
from ringfence.outputs import JsonlStatistics
from ringfence.sensors import SensorStatistics


class Health(msgspec.Struct, kw_only=True):
    version: str
    pid: int
    host: str
    state_dir: str
    started_at_ns: int
    uptime_s: float
    healthy: bool
    problems: list[str]
    sensors: list[SensorStatistics]
    unavailable: dict[str, str]  # sensor -> why it is not running
    broker: BrokerStatistics
    outputs: list[JsonlStatistics]
    extensions: list[dict[str, Any]]
    memory_rss_bytes: int
    cpu_user_s: float
    cpu_system_s: float
    threads: int


def summary_line(h: Health) -> str:
    """One line for the console: events by kind, AUTH, drops, findings."""
    kinds = h.broker.kinds
    ev = " ".join(f"{k}={kinds[k].published}" for k in ("process", "file", "network") if k in kinds)
    auth = h.broker.auth
    misses = sum(s.deadline_misses for s in auth.subscribers.values())
    drops = sum(s.dropped for s in h.sensors) + sum(k.dropped for k in kinds.values())
    drops += sum(o.channel.dropped for o in h.outputs)
    findings = kinds["finding"].published if "finding" in kinds else 0
    state = "healthy" if h.healthy else "DEGRADED: " + "; ".join(h.problems)
    return (
        f"events {ev} | auth {auth.requests} allow={auth.allowed} deny={auth.denied} "
        f"misses={misses} | drops {drops} | findings {findings} | "
        f"rss {h.memory_rss_bytes >> 20} MiB | {state}"
    )
