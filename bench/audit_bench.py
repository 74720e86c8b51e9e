"""What the audit baseline costs (issue 7): an exec loop and a syscall loop with no agent, with the agent
as configured by default, and with the audit feed on (baseline rules, raw audit events, identity
events), interleaved in one run; the table gives each against the agent without the feed.

sudo .venv/bin/python bench/run.py --only audit [--quick]
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench._common import cpu_seconds, running_agent, status, table

EXEC_LOOP = "i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"
FEED = "[sensors]\naudit_baseline = true\naudit_events = true\naudit_identity = true\n"
CASES = (("no agent", None), ("agent, no audit feed", ""), ("agent + baseline and feed", FEED))


def exec_loop(n: int) -> float:
    t0 = time.perf_counter()
    subprocess.run(["/bin/sh", "-c", EXEC_LOOP.format(n=n)], check=True)
    return time.perf_counter() - t0


def syscall_loop(n: int) -> float:
    """n read/write pairs of 512 bytes: syscall-bound, the audit exit path taken on each."""
    t0 = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", "of=/dev/null", "bs=512", f"count={n}"], check=True, capture_output=True
    )
    return time.perf_counter() - t0


def run(quick: bool) -> str:
    execs, syscalls, rounds = (1000, 100_000, 1) if quick else (3000, 400_000, 3)
    loops: dict[str, Callable[[], float]] = {
        f"exec /bin/true x{execs}": lambda: exec_loop(execs),
        f"dd bs=512 x{syscalls} (read+write)": lambda: syscall_loop(syscalls),
    }
    best: dict[tuple[str, str], float] = {}
    rules, cpu = "", {}
    for _ in range(rounds):
        for case, extra in CASES:
            if extra is None:
                times = {name: loop() for name, loop in loops.items()}
            else:
                with running_agent(extra) as (agent, state):
                    cpu0 = cpu_seconds(agent)
                    times = {name: loop() for name, loop in loops.items()}
                    cpu[case] = cpu_seconds(agent) - cpu0
                    if extra:
                        rules = _baseline_rules(state)
            for name, seconds in times.items():
                best[case, name] = min(best.get((case, name), seconds), seconds)
    rows: list[tuple[object, ...]] = []
    for name in loops:
        base = best["agent, no audit feed", name]
        for case, _ in CASES:
            t = best[case, name]
            rows.append((name, case, f"{t:.2f} s", f"{t / base:.2f}"))
    out = table(
        f"audit baseline cost (best of {rounds}; ratio vs the agent without the feed)",
        ("loop", "case", "time", "ratio"),
        rows,
    )
    spent = ", ".join(f"{case}: {s:.1f} s" for case, s in cpu.items())
    return f"{out}\nbaseline rules loaded: {rules}\nagent CPU during the last round's loops: {spent}"


def _baseline_rules(state: Path) -> str:
    doc = status(state)
    audit = next((s for s in doc["sensors"] if s["name"] == "audit"), None)
    if audit is None:
        return "audit sensor not running"
    d = audit.get("detail", {})
    refused, skipped = d.get("baseline_refused"), d.get("baseline_skipped")
    return f"{d.get('baseline_rules')} (refused {refused}, no parent directory {skipped})"
