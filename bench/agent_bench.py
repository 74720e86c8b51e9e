"""Host-agent benchmarks (issue: host agent): exec overhead, capture under load, agent RSS and CPU.

Each measurement has its baseline measured in the same run, and the table reports ratios.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

from bench._common import cpu_seconds, running_agent, status, table

EXEC_LOOP = "i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"


def exec_loop_seconds(n: int) -> float:
    t0 = time.perf_counter()
    subprocess.run(["/bin/sh", "-c", EXEC_LOOP.format(n=n)], check=True)
    return time.perf_counter() - t0


def exec_overhead(n: int, rounds: int) -> list[tuple[object, ...]]:
    """n execs of /bin/true, without and with the agent (all sensors, every exec gated), interleaved."""
    base: list[float] = []
    with_agent: list[float] = []
    for _ in range(rounds):
        base.append(exec_loop_seconds(n))
        with running_agent() as (_p, _state):
            with_agent.append(exec_loop_seconds(n))
    b, a = min(base), min(with_agent)
    return [
        ("exec /bin/true, no agent", n, f"{b / n * 1e6:.0f} us", "1.00", ""),
        ("exec /bin/true, agent (all sensors, gated)", n, f"{a / n * 1e6:.0f} us", f"{a / b:.2f}", "<= 1.05"),
    ]


BURST = (
    "end=$(( $(date +%s) + {secs} )); n=0; while [ $(date +%s) -lt $end ]; do "
    "/bin/true {marker}; /bin/true {marker}; /bin/true {marker}; /bin/true {marker}; "
    "n=$((n+4)); done; echo $n"
)


def capture_under_load(
    seconds: int, workers: int
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    marker = f"rf-burst-{uuid.uuid4().hex[:12]}"
    with running_agent() as (agent, state):
        idle_rss = agent.memory_info().rss
        cpu0, t0 = cpu_seconds(agent), time.monotonic()
        time.sleep(3)
        idle_cpu = (cpu_seconds(agent) - cpu0) / (time.monotonic() - t0)
        cpu0, t0 = cpu_seconds(agent), time.monotonic()
        procs = [
            subprocess.Popen(
                ["/bin/sh", "-c", BURST.format(secs=seconds, marker=marker)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(workers)
        ]
        peak_rss = idle_rss
        while any(p.poll() is None for p in procs):
            peak_rss = max(peak_rss, agent.memory_info().rss)
            time.sleep(0.2)
        made = sum(int(p.communicate()[0].strip() or 0) for p in procs)
        busy_cpu = (cpu_seconds(agent) - cpu0) / (time.monotonic() - t0)
        captured = _wait_captured(state, marker, made)
        doc = status(state)
    where = {f"sensor {s['name']}": s["dropped"] for s in doc["sensors"]}
    where |= {f"to {k} subscribers": v["dropped"] for k, v in doc["broker"]["kinds"].items()}
    drops = ", ".join(f"{n} ({w})" for w, n in where.items() if n) or "0"
    ratio = captured / made if made else 0.0
    capture = [
        (
            f"short-lived execs in {seconds} s ({workers} workers)",
            made,
            captured,
            f"{ratio * 100:.3f} %",
            drops,
            ">= 99.99 %",
        )
    ]
    resources = [
        ("idle", f"{idle_rss / 2**20:.1f} MB", f"{idle_cpu * 100:.1f} %", "RSS <= 60 MB"),
        ("during burst (peak)", f"{peak_rss / 2**20:.1f} MB", f"{busy_cpu * 100:.1f} %", "RSS <= 60 MB"),
    ]
    return capture, resources


_EXEC = b'"launch_type_id":3'  # Launch (100701) by exec; a fork is a Launch too, with launch_type_id 2


def _wait_captured(state: Path, marker: str, made: int) -> int:
    """Count launch events of exactly `/bin/true <marker>`, waiting (bounded) for the agent to drain."""
    needle = f'"cmd_line":"/bin/true {marker}"'.encode()  # OCSF 1.8.0: argv is in cmd_line only
    count, last_change = -1, time.monotonic()
    while time.monotonic() - last_change < 5:
        n = 0
        for path in state.glob("events.jsonl*"):
            with path.open("rb") as f:
                n += sum(1 for line in f if needle in line and _EXEC in line)
        if n != count:
            count, last_change = n, time.monotonic()
        if count >= made:
            break
        time.sleep(0.5)
    return count


def run(quick: bool) -> str:
    n, rounds = (1000, 1) if quick else (5000, 2)
    secs, workers = (3, 2) if quick else (10, 2)
    out = [table("exec overhead", ("case", "execs", "per exec", "ratio", "goal"), exec_overhead(n, rounds))]
    capture, resources = capture_under_load(secs, workers)
    out.append(
        table(
            "capture under load",
            ("case", "execs made", "launch events", "captured", "drops counted", "goal"),
            capture,
        )
    )
    out.append(table("agent resources", ("phase", "RSS", "CPU (of one core)", "goal"), resources))
    return "\n\n".join(out)
