"""Sensor cost against auditd (issue 10): the same loops with nothing, with Debian's auditd and an execve
rule, with Ringfence on its defaults, and with Ringfence's sensors turned on one after another; every
configuration in each round, alternating, best of the rounds; ratios against "nothing" of the same run.

Loops: 3,000 execs of /bin/true from a shell loop; the storm (4 such loops in parallel); and a
syscall-bound `dd bs=512 count=2M if=/dev/zero of=/dev/null`. For Ringfence also its CPU per exec of the
exec loop (the agent's /proc/<pid>/stat, all its threads; its extension processes apart) and what any
stage dropped during the storm (every drop counter of `status --json` that grew).

The fresh-binary storm: 4 drivers at once, each writing a new copy of /bin/true under /var/tmp (a name
never used before) and exec'ing it, a fixed count each (bench/_fresh_driver.py): every exec is a
first-time AUTH with a hash. Median and p99 of the exec latency (spawn to exit) against nothing, the
broker's AUTH latency (mean over the storm from `status --json`, and the agent's max), the agent's and
its extensions' CPU per fresh binary, and what was dropped. Then, with the defaults in the selection: the
agent left idle for 60 s, engines running: its CPU (% of one core) and RSS, its extension processes
apart.

sudo flock /run/ringfence-e2e.lock .venv/bin/python bench/run.py --only cost [--quick]
sudo flock /run/ringfence-e2e.lock .venv/bin/python -m bench.cost_bench --only nothing,auditd,defaults \
    [--src OTHER/src]  (--src: also the defaults run from another checkout, for a before/after in one run)
    (keys: nothing auditd connector audit file gate feed defaults; "nothing" is always run)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench import auditd_peer
from bench._common import require_root, running_agent, status, table

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
_ALL = {**_AUDIT, "file": True, "exec_auth": True}
_FEED = {"audit_events": True, "audit_identity": True, "audit_baseline": True, "logs": True}

# (key, name, config): None is nothing, "auditd" the peer; the rest are Ringfence configurations.
CONFIGS: tuple[tuple[str, str, str | None], ...] = (
    ("nothing", "nothing", None),
    ("auditd", "auditd, execve rule (b64+b32)", "auditd"),
    ("connector", "ringfence: process connector only", _sensors() + _NO_EXT),
    ("audit", "  + audit exec (and network rules)", _sensors(**_AUDIT) + _NO_EXT),
    ("file", "  + file sensor", _sensors(**_AUDIT, file=True) + _NO_EXT),
    ("gate", "  + exec gate (IOC engine)", _sensors(**_AUDIT, file=True, exec_auth=True) + _GATE_EXT),
    ("feed", "  + audit feed, baseline, logs", _sensors(**_ALL, **_FEED) + _GATE_EXT),
    ("defaults", "  + Sigma engine = defaults", ""),
)
FRESH_DRIVERS = 4
_DRIVER = Path(__file__).with_name("_fresh_driver.py")


def select(only: str | None) -> tuple[tuple[str, str, str | None], ...]:
    """The configurations named in `only` (comma-separated keys), in table order; "nothing" always, as
    every ratio is against it. Raises ValueError naming the unknown keys and the known ones."""
    if only is None:
        return CONFIGS
    wanted = {k.strip() for k in only.split(",") if k.strip()}
    unknown = wanted - {key for key, _, _ in CONFIGS}
    if unknown or not wanted:
        known = ", ".join(key for key, _, _ in CONFIGS)
        raise ValueError(f"unknown configuration {', '.join(sorted(unknown)) or '(none)'}; known: {known}")
    return tuple(c for c in CONFIGS if c[0] in wanted | {"nothing"})


@dataclass
class Fresh:
    """The fresh-binary storm: per-exec latency (spawn to exit) of every driver's execs."""

    seconds: float
    latencies_us: list[float]
    failures: int

    @property
    def median_us(self) -> float:
        return statistics.median(self.latencies_us) if self.latencies_us else float("nan")

    @property
    def p99_us(self) -> float:
        return _percentile(self.latencies_us, 0.99)


@dataclass
class Sample:
    seconds: dict[str, float] = field(default_factory=dict)
    agent_us_per_exec: float | None = None
    ext_us_per_exec: float | None = None
    drops: str = ""
    fresh: Fresh | None = None
    auth: str = ""  # the broker's AUTH latency over the fresh storm: mean and the run's max
    fresh_drops: str = ""
    fresh_cpu: str = ""  # the agent's and its extensions' CPU per fresh binary


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


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


def fresh_storm(n: int, drivers: int = FRESH_DRIVERS) -> Fresh:
    """`drivers` processes at once, each writing n new copies of /bin/true under /var/tmp and exec'ing
    each (every exec a first-time AUTH with a hash); their directory is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="rf-bench-fresh-", dir="/var/tmp") as tmp:
        os.chmod(tmp, 0o755)
        t0 = time.perf_counter()
        cmd = [sys.executable, str(_DRIVER), tmp, str(n)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(drivers)]
        outs = [p.communicate()[0] for p in procs]
        seconds = time.perf_counter() - t0
        for p in procs:
            if p.returncode != 0:
                raise RuntimeError(f"fresh-binary driver exited with {p.returncode}")
    lines = [line for out in outs for line in out.splitlines()]
    fails = sum(1 for line in lines if line.startswith("fail"))
    latencies = [int(line) / 1000 for line in lines if line.isdigit()]
    return Fresh(seconds, latencies, fails)


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


_LOSS_KEYS = frozenset(
    {"lost_kernel", "socket_overflows", "unanswered_at_deadline", "auth_late", "auth_misses"}
)


def drop_counters(doc: object, where: str = "") -> dict[str, int]:
    """Every counter of a `status --json` document that counts something lost: a key with "drop" in
    it, or one of _LOSS_KEYS; named by its path (`sensors[audit].dropped`)."""
    found: dict[str, int] = {}
    if isinstance(doc, dict):
        for key, value in doc.items():
            path = f"{where}.{key}" if where else str(key)
            if isinstance(value, int) and not isinstance(value, bool):
                if "drop" in str(key) or key in _LOSS_KEYS:
                    found[path] = value
            else:
                found |= drop_counters(value, path)
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            name = item.get("name") or item.get("id") if isinstance(item, dict) else None
            found |= drop_counters(item, f"{where}[{name if name is not None else i}]")
    return found


def _grew(before: dict[str, int], after: dict[str, int]) -> str:
    grew = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    return ", ".join(f"{w} +{n}" for w, n in grew.items()) or "0"


def _auth(before: dict, after: dict) -> str:
    a, b = before["broker"]["auth"], after["broker"]["auth"]
    n = b["requests"] - a["requests"]
    if n <= 0:
        return "no AUTH"
    mean = (b["total_latency_us"] - a["total_latency_us"]) / n
    return f"{n} AUTH, mean {mean:.0f} us, max {b['max_latency_us']} us"


def _bare(loops: dict[str, Callable[[], float]], fresh: Callable[[], Fresh]) -> Sample:
    sample = Sample({name: loop() for name, loop in loops.items()})
    sample.fresh = fresh()
    return sample


def _measure(
    loops: dict[str, Callable[[], float]],
    fresh: Callable[[], Fresh],
    execs: int,
    extra: str | None,
    src: str | None = None,
) -> Sample:
    if extra is None:
        return _bare(loops, fresh)
    if extra == "auditd":
        with auditd_peer.running_auditd():
            return _bare(loops, fresh)
    with running_agent(extra, src=src) as (agent, state):
        sample = Sample()
        t0, c0 = _ticks(agent.pid), _children_ticks(agent)
        sample.seconds["exec"] = loops["exec"]()
        time.sleep(0.5)  # the agent drains what the loop queued
        sample.agent_us_per_exec = (_ticks(agent.pid) - t0) / _HZ / execs * 1e6
        sample.ext_us_per_exec = (_children_ticks(agent) - c0) / _HZ / execs * 1e6
        before = status(state)
        for name in ("storm", "dd"):
            sample.seconds[name] = loops[name]()
        time.sleep(0.5)
        middle = status(state)
        sample.drops = _grew(drop_counters(before), drop_counters(middle))
        t0, c0 = _ticks(agent.pid), _children_ticks(agent)
        sample.fresh = fresh()
        time.sleep(0.5)
        n = max(1, len(sample.fresh.latencies_us))
        agent_us = (_ticks(agent.pid) - t0) / _HZ / n * 1e6
        sample.fresh_cpu = f"{agent_us:.0f} + {(_children_ticks(agent) - c0) / _HZ / n * 1e6:.0f} us"
        after = status(state)
        sample.fresh_drops = _grew(drop_counters(middle), drop_counters(after))
        sample.auth = _auth(middle, after)
        return sample


def _merge(old: Sample, s: Sample) -> None:
    """Best of the rounds: the lower time of each loop and CPU; the fresh storm of the round with the
    lower median (its p99 and AUTH with it); drops of every round."""
    old.seconds = {k: min(v, s.seconds[k]) for k, v in old.seconds.items()}
    for attr in ("agent_us_per_exec", "ext_us_per_exec"):
        a, b = getattr(old, attr), getattr(s, attr)
        setattr(old, attr, None if a is None or b is None else min(a, b))
    old.drops = _both(old.drops, s.drops)
    old.fresh_drops = _both(old.fresh_drops, s.fresh_drops)
    if old.fresh is None or (s.fresh is not None and s.fresh.median_us < old.fresh.median_us):
        old.fresh, old.auth, old.fresh_cpu = s.fresh, s.auth, s.fresh_cpu


def _both(a: str, b: str) -> str:
    return a if a == b else f"{a} / {b}"


@dataclass
class Idle:
    seconds: float
    agent_pct: float  # % of one core
    ext_pct: float
    agent_rss_mb: float
    ext_rss_mb: float


def idle(seconds: float, src: str | None = None) -> Idle:
    """The agent on its defaults, engines running, left alone: CPU over `seconds`, RSS at the end."""
    with running_agent("", src=src) as (agent, _state):
        t0, c0, w0 = _ticks(agent.pid), _children_ticks(agent), time.monotonic()
        time.sleep(seconds)
        t1, c1, wall = _ticks(agent.pid), _children_ticks(agent), time.monotonic() - w0
        ext_rss = 0
        for child in agent.children(recursive=True):
            try:
                ext_rss += child.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return Idle(
            wall,
            (t1 - t0) / _HZ / wall * 100,
            (c1 - c0) / _HZ / wall * 100,
            agent.memory_info().rss / 2**20,
            ext_rss / 2**20,
        )


def run(quick: bool, only: str | None = None, before_src: str | None = None) -> str:
    """`before_src`: also the defaults run from another checkout's src/ (a before/after in one run)."""
    configs = select(only)
    srcs = {"before": before_src} if before_src else {}
    if before_src:
        configs += (("before", f"  defaults, from {before_src}", ""),)
    execs, storm_n, dd_count, rounds = (1000, 500, 200_000, 1) if quick else (3000, 2000, 2 << 20, 2)
    fresh_n, idle_s = (300, 10.0) if quick else (1500, 60.0)
    version = auditd_peer.install() if any(extra == "auditd" for _, _, extra in configs) else "?"
    loops: dict[str, Callable[[], float]] = {
        "exec": lambda: exec_loop(execs),
        "storm": lambda: storm(storm_n),
        "dd": lambda: dd_loop(dd_count),
    }
    best: dict[str, Sample] = {}
    for _ in range(rounds):
        for key, _name, extra in configs:
            s = _measure(loops, lambda: fresh_storm(fresh_n), execs, extra, srcs.get(key))
            old = best.setdefault(key, s)
            if old is not s:
                _merge(old, s)
    out = _render(configs, best, execs, storm_n, dd_count, rounds, version)
    out += "\n\n" + _render_fresh(configs, best, fresh_n, rounds)
    if any(key == "defaults" for key, _, _ in configs):
        idles = [("this checkout", idle(idle_s))]
        idles += [(f"from {src}", idle(idle_s, src)) for src in srcs.values()]
        out += "\n\n" + _render_idle(idles)
    return out


def _render(
    configs: tuple[tuple[str, str, str | None], ...],
    best: dict[str, Sample],
    execs: int,
    storm_n: int,
    dd_count: int,
    rounds: int,
    version: str,
) -> str:
    base = best["nothing"].seconds
    rows: list[tuple[object, ...]] = []
    for key, name, _ in configs:
        s = best[key]
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


_FRESH_COLUMNS = (
    "configuration",
    "wall",
    "exec median",
    "exec p99",
    "failed",
    "CPU/binary (agent + ext)",
    "broker AUTH",
    "drops",
)


def _render_fresh(
    configs: tuple[tuple[str, str, str | None], ...], best: dict[str, Sample], fresh_n: int, rounds: int
) -> str:
    base = best["nothing"].fresh
    rows: list[tuple[object, ...]] = []
    for key, name, _ in configs:
        f = best[key].fresh
        if f is None or base is None:
            continue
        rows.append(
            (
                name,
                f"{f.seconds:.2f} s ({f.seconds / base.seconds:.2f})",
                f"{f.median_us:.0f} us ({f.median_us / base.median_us:.2f})",
                f"{f.p99_us:.0f} us ({f.p99_us / base.p99_us:.2f})",
                f.failures,
                best[key].fresh_cpu,
                best[key].auth,
                best[key].fresh_drops,
            )
        )
    return table(
        f"fresh-binary storm: {FRESH_DRIVERS} drivers x {fresh_n} new copies of /bin/true under /var/tmp "
        f"(round with the lower median of {rounds}; ratio to nothing)",
        _FRESH_COLUMNS,
        rows,
    )


def _render_idle(idles: list[tuple[str, Idle]]) -> str:
    rows: list[tuple[object, ...]] = []
    for name, i in idles:
        rows.append((f"agent, {name}", f"{i.agent_pct:.2f} %", f"{i.agent_rss_mb:.1f} MB"))
        rows.append((f"extensions (all), {name}", f"{i.ext_pct:.2f} %", f"{i.ext_rss_mb:.1f} MB"))
    return table(
        f"idle: the agent on its defaults, engines running, alone for {idles[0][1].seconds:.0f} s",
        ("process", "CPU (% of a core)", "RSS"),
        rows,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller counts: a smoke run, not a measurement")
    keys = ",".join(key for key, _, _ in CONFIGS)
    p.add_argument("--only", metavar="KEYS", help=f"comma-separated, of {keys} (nothing always)")
    p.add_argument("--src", metavar="DIR", help="also the defaults from another src/ (before/after)")
    args = p.parse_args()
    try:
        select(args.only)
    except ValueError as e:
        p.error(str(e))
    print(run(args.quick, args.only, args.src), flush=True)


if __name__ == "__main__":
    require_root()
    main()
