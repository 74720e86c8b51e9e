"""The Sigma engine's event lane under a burst (issue 10): does the engine keep up, and where is an event
lost when it does not?

The agent on its defaults; the exec storm of the cost bench (4 shell loops of /bin/true in parallel)
and, at the same time, one process writing `--files` small files under /var/tmp (the file sensor
watches /: the bursts of file events that other programs' writes make, such as a test run's caches).
Per run, from `status --json`, for the Sigma engine: the events the agent handed it and those its lane
dropped (agent side), the events its reader received, handled and dropped at its inbox (extension
side, its own stats report), the frames they came in, its CPU during the burst, and its cgroup's CPU
throttling (cgroup v1 `cpu.stat`); all read once the engine has caught up (or after 30 s).

sudo flock /run/ringfence-e2e.lock .venv/bin/python -m bench.lane_bench [--src BEFORE/src] [--rounds 2]
    (--src: the same from another checkout, alternating, for a before/after in one run)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench._common import require_root, running_agent, status, table
from bench.cost_bench import storm

SIGMA = "ringfence.sigma"


@dataclass
class Run:
    burst_s: float
    delivered: int  # handed to the engine's lane by the broker
    lane_dropped: int  # agent side: lane full, or not sent in time
    received: int  # extension side
    inbox_dropped: int
    frames: int | None  # EventBatch frames (None: an SDK that does not count them)
    cpu_s: float  # the engine's CPU over the burst and its catching up
    throttled: int  # cgroup periods in which the engine was throttled


def _sigma(state: Path) -> dict:
    return next(e for e in status(state)["extensions"] if e["id"] == SIGMA)


def _throttled(pid: int) -> int:
    """Throttled periods of the cgroup v1 cpu controller `pid` is in (0 where there is none)."""
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "cpu" in controllers.split(","):
                stat = Path("/sys/fs/cgroup/cpu" + path, "cpu.stat").read_text()
                return int(dict(x.split() for x in stat.splitlines())["nr_throttled"])
    except (OSError, KeyError, ValueError):
        pass
    return 0


def _write_files(n: int, where: str) -> subprocess.Popen[bytes]:
    code = (
        "import os, sys\n"
        "for i in range(int(sys.argv[1])):\n"
        "    with open(os.path.join(sys.argv[2], str(i)), 'w') as f: f.write('x')\n"
    )
    return subprocess.Popen([sys.executable, "-c", code, str(n), where])


def burst(files: int, storm_n: int, src: str | None) -> Run:
    with running_agent(src=src) as (_agent, state), tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        before = _sigma(state)
        t0 = time.monotonic()
        writer = _write_files(files, tmp)
        try:
            storm(storm_n)
            writer.wait(300)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
        burst_s = time.monotonic() - t0
        after = _caught_up(state)
        ext0, ext1 = before.get("extension", {}), after.get("extension", {})

        def grew(doc0: dict, doc1: dict, key: str) -> int:
            return int(doc1.get(key, 0)) - int(doc0.get(key, 0))

        frames = grew(ext0, ext1, "event_batches") if "event_batches" in ext1 else None
        return Run(
            burst_s,
            grew(before, after, "events_delivered") + grew(before, after, "events_dropped"),
            grew(before, after, "events_dropped"),
            grew(ext0, ext1, "events_received"),
            grew(ext0, ext1, "events_dropped"),
            frames,
            after["cpu_seconds"] - before["cpu_seconds"],
            _throttled(after["pid"]) - _throttled(before["pid"]) if after.get("pid") else 0,
        )


def _caught_up(state: Path, timeout_s: float = 30.0) -> dict:
    """The engine's status once it has handled all it received and its lane is quiet (or after
    `timeout_s`); waits past one stats report so that its own counters are fresh."""
    deadline = time.monotonic() + timeout_s
    last = -1
    while True:
        time.sleep(1.5)
        doc = _sigma(state)
        ext = doc.get("extension", {})
        quiet = ext.get("events_handled") == ext.get("events_received") == last
        if quiet or time.monotonic() > deadline:
            return doc
        last = ext.get("events_received", 0)


def run(files: int, storm_n: int, rounds: int, before_src: str | None) -> str:
    cases = [("this checkout", None)] + ([(f"from {before_src}", before_src)] if before_src else [])
    runs: dict[str, list[Run]] = {name: [] for name, _ in cases}
    for _ in range(rounds):
        for name, src in reversed(cases):
            runs[name].append(burst(files, storm_n, src))
    rows = []
    for name, rs in runs.items():
        for r in rs:
            per_frame = f"{r.received / r.frames:.0f}" if r.frames else "1 (one event a frame)"
            rows.append(
                (
                    name,
                    f"{r.burst_s:.1f} s",
                    f"{r.delivered:,}",
                    f"{r.lane_dropped:,}",
                    f"{r.received:,}",
                    f"{r.inbox_dropped:,}",
                    per_frame,
                    f"{r.cpu_s / max(r.received, 1) * 1e6:.0f} us",
                    r.throttled,
                )
            )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return table(
        f"Sigma's event lane: exec storm 4 x {storm_n} with {files:,} files written at once "
        f"(load average {load})",
        (
            "agent",
            "burst",
            "handed to the lane",
            "lane dropped",
            "received",
            "inbox dropped",
            "events a frame",
            "engine CPU / event",
            "throttled periods",
        ),
        rows,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=20_000)
    p.add_argument("--storm", type=int, default=2000, help="execs per storm loop")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--src", metavar="DIR", help="also from another checkout's src/ (before/after)")
    args = p.parse_args()
    require_root()
    print(run(args.files, args.storm, args.rounds, args.src), flush=True)


if __name__ == "__main__":
    main()
