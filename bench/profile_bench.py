"""Where the agent's CPU goes per exec (issue 10): the agent on its defaults, an exec loop, and py-spy
sampling the thread that holds the interpreter lock (`--gil`: the agent's Python work, which is what one
core can do at most) while /proc/<pid>/stat gives the agent's CPU per exec (all threads, GIL or not).

A second table gives each thread's own CPU per exec (/proc/<pid>/task/<tid>/stat, user and system,
whether or not it holds the lock: wake-ups and system calls count here, and py-spy --gil cannot see them),
its name read by `py-spy dump`. In the profile of 2026-12-04 less than half of the agent's CPU was time
holding the lock.

Each sample is given to the innermost frame that belongs to a stage (table below); the CPU per exec of a
stage is its share of the GIL samples times the agent's CPU per exec. Samples outside every stage are
"other" (thread start-up frames, waits counted as running).

`bench/run.py --profile-src DIR` (repeatable) runs the agent from another checkout's src/ beside this
one, alternating, for a before/after in one run.

sudo flock /run/ringfence-e2e.lock .venv/bin/python bench/run.py --only profile [--quick]
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import running_agent, table
from bench.cost_bench import EXEC_LOOP

# (stage, frame prefixes): the innermost matching frame of a sample names its stage.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("connector decode", ("ProcConnector.", "parse (ringfence/sensors/process/_connector")),
    ("audit decode", ("DatagramReader.", "EventAssembler.", "decode_", "parse_fields", "_Parts.", "_pairs")),
    ("audit feed (records decoded again)", ("FeedPublisher.",)),
    ("process table", ("ProcessTable.", "ProcReader.")),
    ("fanotify AUTH (exec gate)", ("ExecAuthSensor.", "VerdictCache", "_caching")),
    ("file sensor", ("FileSensor.", "HandleResolver.")),
    ("extensions IPC (doorbell, msgpack)", ("ExtensionProxy.", "Connection.", "Wire.")),
    ("outputs (OCSF JSON, write)", ("JsonlSink.", "RotatingFile.", "OcsfEncoder.", "to_ocsf")),
    ("broker (routing, counters)", ("Broker.",)),
    ("event records (process sensor)", ("ProcessSensor.", "HeaderStamper.")),
    ("audit sensor dispatch", ("_Running.",)),
)


def _stage(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, prefixes in STAGES:
            if frame.startswith(prefixes):
                return stage
    return "other"


def _ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _thread_ticks(pid: int) -> dict[int, int]:
    """utime + stime of each thread of pid."""
    out: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
        out[int(task.name)] = int(fields[11]) + int(fields[12])
    return out


def _thread_names(pid: int, spy: str | None) -> dict[int, str]:
    """Python thread names by native thread id, from `py-spy dump` ({} without py-spy)."""
    if spy is None:
        return {}
    cmd = [spy, "dump", "--pid", str(pid), "--nonblocking"]
    dump = subprocess.run(cmd, capture_output=True, text=True, check=False)
    names: dict[int, str] = {}
    for line in dump.stdout.splitlines():  # Thread 12214 (idle): "ringfence-audit-events"
        head, _, rest = line.partition(" (")
        if head.startswith("Thread ") and head[7:].isdigit() and '"' in rest:
            names[int(head[7:])] = rest.split('"')[1]
    return names


def profile_once(
    execs: int,
    src: str | None,
    spy: str | None,
    threads: collections.Counter[str] | None = None,
    namer: str | None = None,
) -> tuple[float, collections.Counter[str]]:
    """Agent CPU per exec (us) and GIL samples per stage (`spy`: py-spy samples; empty without). `threads`
    gains each thread's CPU per exec (us), named by `py-spy dump` when `namer` (py-spy) is given."""
    stages: collections.Counter[str] = collections.Counter()
    with running_agent(src=src) as (agent, _state), tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "samples.txt")
        sampler = None
        if spy is not None:
            cmd = [spy, "record", "--pid", str(agent.pid), "--nonblocking", "--gil", "--threads"]
            cmd += ["--format", "raw", "--rate", "250", "-o", raw, "-d", "600"]
            sampler = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.5)
        names = _thread_names(agent.pid, namer)
        t0, per_thread0 = _ticks(agent.pid), _thread_ticks(agent.pid)
        subprocess.run(["/bin/sh", "-c", EXEC_LOOP.format(n=execs)], check=True)
        time.sleep(0.5)
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK") / execs
        us = (_ticks(agent.pid) - t0) * tick_us
        if threads is not None:
            for tid, ticks in _thread_ticks(agent.pid).items():
                if tid in per_thread0 and ticks > per_thread0[tid]:
                    threads[names.get(tid, "(unnamed)")] += (ticks - per_thread0[tid]) * tick_us
        if sampler is not None:
            sampler.send_signal(signal.SIGINT)
            sampler.wait(30)
            for line in Path(raw).read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                if stack:
                    stages[_stage(stack.split(";")[1:])] += int(count)
    return us, stages


def _venv_spy() -> str | None:
    spy = str(Path(sys.executable).with_name("py-spy"))
    return spy if os.access(spy, os.X_OK) else None


def run(quick: bool, before_srcs: list[str] | None = None) -> str:
    execs, rounds = (1000, 1) if quick else (3000, 2)
    spy = shutil.which("py-spy") or _venv_spy()
    cases = [("this checkout", None)] + [(f"from {src}", src) for src in before_srcs or []]
    cpu: dict[str, float] = {}
    stages: collections.Counter[str] = collections.Counter()
    threads: dict[str, dict[str, float]] = {}  # case -> thread -> CPU per exec, of its best round
    for _ in range(rounds):
        for name, src in reversed(cases):
            per_thread: collections.Counter[str] = collections.Counter()
            us, st = profile_once(execs, src, spy if src is None else None, per_thread, spy)
            if us < cpu.get(name, float("inf")):
                cpu[name], threads[name] = us, dict(per_thread)
            stages += st
    total = sum(stages.values()) or 1
    per_exec = cpu["this checkout"]
    rows: list[tuple[object, ...]] = [
        (stage, f"{n / total * 100:.1f} %", f"{n / total * per_exec:.0f} us")
        for stage, n in stages.most_common()
    ]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = table(
        f"agent CPU per exec by stage (py-spy --gil, {total} samples; defaults; load average {load})",
        ("stage", "GIL samples", "CPU per exec"),
        rows or [("py-spy not installed: pip install py-spy", "", "")],
    )
    names = [name for name, _ in cases]
    seen = {t for case in threads.values() for t in case}
    busiest = sorted(seen, key=lambda t: -threads[names[0]].get(t, 0))
    out += "\n" + table(
        "agent CPU per exec by thread (/proc/<pid>/task/*/stat, user + system; the round with the least CPU)",
        ("thread", *names),
        [
            (t, *(f"{threads[n].get(t, 0):.0f} us" for n in names))
            for t in busiest
            if max(threads[n].get(t, 0) for n in names) >= 1
        ],
    )
    lines = [
        f"agent CPU per exec of {execs} execs, {name}: {us:.0f} us (best of {rounds})"
        for name, us in cpu.items()
    ]
    return out + "\n" + "\n".join(lines)
