"""What makes the agent degraded, in one line per problem; and the console's summary line.

The records (`Health` and the statistics it holds) are in `ringfence.events`; this module decides.
The agent is degraded while any of these holds:
- a sensor is unavailable or stopped;
- an enabled extension is not running (starting past the ready timeout, restarting, backing off,
  quarantined, stopped): the line carries the extension's own error; or it runs but says something is
  wrong (a Problem frame: new content rejected, the last good content still in force);
- the syslog output cannot reach its receiver (connect or send failing), or
- the fleet uplink has no credential, or the server refuses it (a server that is away is not a problem:
  the uplink backs off and findings wait in findings.jsonl; `status` shows it failing), or
- a stage (a sensor, a broker kind, an output, an extension's queue) dropped events within the last
  `drop_window_s` seconds. A drop is seen when health is assessed (every status request, metrics
  scrape and console line), so "within the window" is up to one assessment late; the total since the
  start stays in `Health.drops` after the window has passed.
"""

from __future__ import annotations

import threading

from ringfence.events import (
    BrokerStatistics,
    Clock,
    ExtensionStatistics,
    FleetStatistics,
    Health,
    JsonlStatistics,
    SensorStatistics,
    StageDrops,
    SyslogStatistics,
)

DEFAULT_DROP_WINDOW_S = 300.0

USERNS_SYSCTLS = ("/proc/sys/kernel/unprivileged_userns_clone", "/proc/sys/user/max_user_namespaces")


def exposure_warnings(*, exec_gated: bool, sysctls: tuple[str, str] = USERNS_SYSCTLS) -> list[str]:
    """The ways around the exec gate that this kernel's settings leave open (README, Known limits).

    fanotify mount marks cover the agent's own mount namespace: where an unprivileged user may create a
    user namespace, they can mount a tmpfs inside it and exec from there unseen by the gate."""
    if not exec_gated:
        return []
    clone, max_userns = (_read_int(path) for path in sysctls)
    if clone == 0 or max_userns == 0:
        return []
    return [
        "exec gate: unprivileged user namespaces are allowed, so any user can exec from a mount made in "
        "a namespace of their own, which the gate does not see (sysctl user.max_user_namespaces=0 or "
        "kernel.unprivileged_userns_clone=0 closes it; such execs are still recorded)"
    ]


def _read_int(path: str) -> int | None:
    """The sysctl's value; None when this kernel has no such file (it then does not restrict)."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


class DropTracker:
    """Per stage: the drop total last seen and when it last grew, on the injected monotonic clock."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[int, int]] = {}  # stage -> (total, mono ns it last grew)

    def observe(self, totals: dict[str, int]) -> list[StageDrops]:
        """Every stage that has ever dropped, with how long ago it last dropped (as far as seen)."""
        now = self._clock.monotonic_ns()
        out = []
        with self._lock:
            for stage, total in totals.items():
                last_total, grew_ns = self._seen.get(stage, (0, now))
                if total != last_total:
                    grew_ns = now
                self._seen[stage] = (total, grew_ns)
                if total > 0:
                    out.append(StageDrops(stage=stage, total=total, last_s=(now - grew_ns) / 1e9))
        return out


def drop_totals(
    sensors: list[SensorStatistics],
    broker: BrokerStatistics,
    outputs: list[JsonlStatistics],
    extensions: list[ExtensionStatistics],
    syslog: SyslogStatistics | None = None,
    *,
    fleet: FleetStatistics | None = None,
) -> dict[str, int]:
    totals = {f"sensor {s.name}": s.dropped for s in sensors}
    totals |= {f"broker {kind}": k.dropped for kind, k in broker.kinds.items()}
    totals |= {f"output {o.path}": o.channel.dropped for o in outputs}
    if syslog is not None:
        totals[f"output syslog {syslog.address}"] = syslog.channel.dropped + syslog.unsendable
    if fleet is not None:  # findings that never reached the fleet server (findings.jsonl has them)
        totals["fleet findings"] = fleet.findings_dropped + fleet.spool_lost
    totals |= {f"extension {e.id}": e.events_dropped + e.files_dropped for e in extensions}
    # What the extension itself dropped (its inbox or outbox full), as its runtime reports it: the agent
    # cannot see those from outside, and they are losses all the same.
    totals |= {f"extension {e.id} (inside)": _self_reported_drops(e) for e in extensions}
    return totals


def _self_reported_drops(e: ExtensionStatistics) -> int:
    return sum(n for name, n in e.extension.items() if name.endswith("_dropped") and n > 0)


def extension_problem(e: ExtensionStatistics) -> str | None:
    """None for a running extension, else one line: what it is doing and its own error."""
    if e.state == "running":
        return f"extension {e.id} running with a problem: {e.last_error}" if e.last_error else None
    if e.state == "quarantined":
        why = e.quarantine_reason or e.last_error
    elif e.state == "starting" and not e.failures:
        why = "no handshake yet (past the ready timeout)"
    else:
        why = e.last_error or e.last_exit_reason or "not running"
    return f"extension {e.id} {e.state}: " + (why or "").removeprefix(f"extension {e.id}: ")


def auth_problems(broker: BrokerStatistics) -> list[str]:
    return [
        f"extension {name} left AUTH ({a.reason}): fail-closed, every exec is denied ({a.denied} so far)"
        for name, a in sorted(broker.auth.absent.items())
        if a.failure == "fail-closed"
    ]


def syslog_problem(s: SyslogStatistics | None, now_ns: int) -> str | None:
    """None while the receiver takes what is sent, else one line: since when, why, what waits."""
    if s is None or not s.failing_since_ns:
        return None
    return (
        f"output syslog {s.address} failing for {max(0, now_ns - s.failing_since_ns) / 1e9:.0f} s: "
        f"{s.last_error} ({s.channel.queued} queued, {s.channel.dropped + s.unsendable} dropped; "
        "findings.jsonl still has every finding)"
    )


def problems_of(
    *,
    sensors: list[SensorStatistics],
    unavailable: dict[str, str],
    broker: BrokerStatistics,
    extensions: list[ExtensionStatistics],
    drops: list[StageDrops],
    drop_window_s: float,
    syslog: SyslogStatistics | None = None,
    now_ns: int = 0,
    fleet: FleetStatistics | None = None,
) -> list[str]:
    problems = [f"sensor {n} unavailable: {why}" for n, why in unavailable.items()]
    problems += [f"sensor {s.name} stopped" for s in sensors if not s.running]
    problems += [f"sensor {s.name}: {s.problem}" for s in sensors if s.running and s.problem]
    problems += [p for p in map(extension_problem, extensions) if p is not None]
    problems += auth_problems(broker)
    problems += [p for p in (syslog_problem(syslog, now_ns),) if p is not None]
    problems += [fleet.problem] if fleet is not None and fleet.problem else []
    problems += [
        f"{d.stage} dropped events {d.last_s:.0f} s ago ({d.total} in all; degraded for {drop_window_s:g} s "
        "after a drop)"
        for d in drops
        if d.last_s <= drop_window_s
    ]
    return problems


def summary_line(h: Health) -> str:
    """One line for the console: events by kind, AUTH, drops, findings."""
    kinds = h.broker.kinds
    ev = " ".join(f"{k}={kinds[k].published}" for k in ("process", "file", "network") if k in kinds)
    auth = h.broker.auth
    misses = sum(s.deadline_misses for s in auth.subscribers.values())
    drops = sum(s.dropped for s in h.sensors) + sum(k.dropped for k in kinds.values())
    drops += sum(o.channel.dropped for o in h.outputs)
    drops += h.syslog.channel.dropped + h.syslog.unsendable if h.syslog is not None else 0
    findings = kinds["finding"].published if "finding" in kinds else 0
    state = "healthy" if h.healthy else "DEGRADED: " + "; ".join(h.problems)
    return (
        f"events {ev} | auth {auth.requests} allow={auth.allowed} deny={auth.denied} "
        f"misses={misses} | drops {drops} | findings {findings} | "
        f"rss {h.memory_rss_bytes >> 20} MiB | {state}"
    )
