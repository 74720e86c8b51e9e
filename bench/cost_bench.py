"""Sensor cost against auditd (issue 10): the same loops with nothing, with Debian's auditd and an execve
rule, with Ringfence on its defaults, and with Ringfence's sensors turned on one after another; every
configuration in each round, alternating, best of the rounds; ratios against "nothing" of the same run.

Loops: 3,000 execs of /bin/true from a shell loop; the storm (4 such loops in parallel); and a
syscall-bound `dd bs=512 count=2M if=/dev/zero of=/dev/null`. For Ringfence also its CPU per exec of the
exec loop (the agent's /proc/<pid>/stat, all its threads; its extension processes apart) and what any
stage dropped during the storm.

sudo flock /run/ringfence-e2e.lock .venv/bin/python bench/run.py --only cost [--quick]
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench import auditd_peer
from bench._common import running_agent, status, table

EXEC_LOOP = "i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"
_HZ = os.sysconf("SC_CLK_TCK")

_OFF = (
    "process = true\naudit_exec = false\nnetwork = false\nfile = false\nexec_auth = false\n"
    "audit_events = false\naudit_identity = false\naudit_baseline = false\nlogs = false\n"
)


def _sensors(**on: bool) -> str:
    lines = dict(line.split(" = ") for line in _OFF.splitlines())
    lines |= {k: str(v).lower() for k, v in on.items()}
    return "[sensors]\n" + "".join(f"{k} = {v}\n" for k, v in lines.items())


_NO_EXT = "[extensions]\nenabled = []\n"
_GATE_EXT = '[extensions]\nenabled = ["ringfence.reputation"]\n'
_AUDIT = {"audit_exec": True, "network": True}
_FEED = {"audit_events": True, "audit_identity": True, "audit_baseline": True, "logs": True}

# (name, config): None is nothing, "auditd" the peer; the rest are Ringfence configurations.
CONFIGS: tuple[tuple[str, str | None], ...] = (
    ("nothing", None),
    ("auditd, execve rule (b64+b32)", "auditd"),
    ("ringfence: process connector only", _sensors() + _NO_EXT),
    ("  + audit exec (and network rules)", _sensors(**_AUDIT) + _NO_EXT),
    ("  + file sensor", _sensors(**_AUDIT, file=True) + _NO_EXT),
    ("  + exec gate (IOC engine)", _sensors(**_AUDIT, file=True, exec_auth=True) + _GATE_EXT),
    ("  + audit feed, baseline, logs", _sensors(**_AUDIT, file=True, exec_auth=True, **_FEED) + _GATE_EXT),
    ("  + Sigma engine = defaults", ""),
)


@dataclass
class Sample:
    seconds: dict[str, float] = field(default_factory=dict)
    agent_us_per_exec: float | None = None
    ext_us_per_exec: float | None = None
    drops: str = ""


def exec_loop(n: int) -> float:
    t0 = time.perf_counter()
    subprocess.run(["/bin/sh", "-c", EXEC_LOOP.format(n=n)], check=True)
    return time.perf_counter() - t0


def storm(n: int, loops: int = 4) -> float:
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["/bin/sh", "-c", EXEC_LOOP.format(n=n)]) for _ in range(loops)]
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError(f"storm loop exited with {p.returncode}")
    return time.perf_counter() - t0


def dd_loop(count: int) -> float:
    t0 = time.perf_counter()
    cmd = ["dd", "bs=512", f"count={count}", "if=/dev/zero", "of=/dev/null"]
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def _ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, all threads


def _children_ticks(agent: psutil.Process) -> int:
    total = 0
    for child in agent.children(recursive=True):
        try:
            total += _ticks(child.pid)
        except OSError:
            continue
    return total


def _drops(state: Path) -> dict[str, int]:
    doc = status(state)
    where = {f"sensor {s['name']}": s["dropped"] for s in doc["sensors"]}
    where |= {f"broker {k}": v["dropped"] for k, v in doc["broker"]["kinds"].items()}
    where |= {f"extension {e['id']}": e.get("events_dropped", 0) for e in doc["extensions"]}
    return where


def _measure(loops: dict[str, Callable[[], float]], execs: int, extra: str | None) -> Sample:
    if extra is None:
        return Sample({name: loop() for name, loop in loops.items()})
    if extra == "auditd":
        with auditd_peer.running_auditd():
            return Sample({name: loop() for name, loop in loops.items()})
    with running_agent(extra) as (agent, state):
        sample = Sample()
        t0, c0 = _ticks(agent.pid), _children_ticks(agent)
        sample.seconds["exec"] = loops["exec"]()
        time.sleep(0.5)  # the agent drains what the loop queued
        sample.agent_us_per_exec = (_ticks(agent.pid) - t0) / _HZ / execs * 1e6
        sample.ext_us_per_exec = (_children_ticks(agent) - c0) / _HZ / execs * 1e6
        before = _drops(state)
        for name in ("storm", "dd"):
            sample.seconds[name] = loops[name]()
        time.sleep(0.5)
        after = _drops(state)
        grew = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
        sample.drops = ", ".join(f"{n} ({w})" for w, n in grew.items()) or "0"
        return sample


def run(quick: bool) -> str:
    execs, storm_n, dd_count, rounds = (1000, 500, 200_000, 1) if quick else (3000, 2000, 2 << 20, 2)
    version = auditd_peer.install()
    loops: dict[str, Callable[[], float]] = {
        "exec": lambda: exec_loop(execs),
        "storm": lambda: storm(storm_n),
        "dd": lambda: dd_loop(dd_count),
    }
    best: dict[str, Sample] = {}
    for _ in range(rounds):
        for name, extra in CONFIGS:
            s = _measure(loops, execs, extra)
            old = best.setdefault(name, s)
            if old is not s:
                old.seconds = {k: min(v, s.seconds[k]) for k, v in old.seconds.items()}
                for attr in ("agent_us_per_exec", "ext_us_per_exec"):
                    a, b = getattr(old, attr), getattr(s, attr)
                    setattr(old, attr, None if a is None or b is None else min(a, b))
                old.drops = old.drops if old.drops == s.drops else f"{old.drops} / {s.drops}"
    return _render(best, execs, storm_n, dd_count, rounds, version)


def _render(
    best: dict[str, Sample], execs: int, storm_n: int, dd_count: int, rounds: int, version: str
) -> str:
    base = best["nothing"].seconds
    rows: list[tuple[object, ...]] = []
    for name, _ in CONFIGS:
        s = best[name]
        cells = [f"{s.seconds[k]:.2f} s ({s.seconds[k] / base[k]:.2f})" for k in ("exec", "storm", "dd")]
        cpu = "" if s.agent_us_per_exec is None else f"{s.agent_us_per_exec:.0f} us"
        ext = "" if s.ext_us_per_exec is None else f"{s.ext_us_per_exec:.0f} us"
        rows.append((name.replace("auditd", f"auditd {version}", 1), *cells, cpu, ext, s.drops))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return table(
        f"sensor cost vs auditd (best of {rounds}, alternating; ratio to nothing; load average {load})",
        (
            "configuration",
            f"exec x{execs}",
            f"storm 4 x {storm_n}",
            f"dd bs=512 x{dd_count}",
            "agent CPU/exec",
            "extensions CPU/exec",
            "storm drops",
        ),
        rows,
    )
