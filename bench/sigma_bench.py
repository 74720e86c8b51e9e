"""Sigma engine throughput against pySigma's SQLite backend: the same events, the same rules, one run.

Rules: every SigmaHQ Linux rule in ../shared/data/sigmahq (rules/linux, rules-emerging-threats,
rules-threat-hunting). Events: a realistic mix (execs, file changes, connections; see
tests/engines/sigma/corpus.py) plus, per rule, events built to match it, shuffled together.

- engine: `SigmaEngine.on_event` on one core, findings to a counting context (dedup included).
- SQLite: the backend's queries over in-memory tables, in streaming batches (insert a batch, run every
  query, clear), which is how a SIEM-less host would have to use it.

.venv/bin/python bench/sigma_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.engines.sigma.corpus import (
    LINUX_RULE_DIRS,
    Reference,
    attack_events,
    engine_matches,
    ordinary_events,
)

from bench._common import RINGFENCE, status, stop, write_config
from ringfence.engines.sigma import SigmaEngine, load_files, rule_files
from ringfence.events import HeaderStamper
from ringfence.sdk import Event, Severity

events_header = HeaderStamper("bench", "bench-host").stamp
STREAMING_BATCH = 100  # events per insert-and-query round: a stream, as the issue measured it (7.5-8.5k/s)
BULK_BATCH = 1000
CHECK = 5000  # events whose (rule, event) matches are compared between the two


class _CountingContext:
    def __init__(self, content_dir: str | None) -> None:
        self.findings = 0
        self._content_dir = content_dir

    @property
    def log(self) -> logging.Logger:
        log = logging.getLogger("bench.sigma")
        log.setLevel(logging.ERROR)  # the five "field not supplied" warnings are not the measurement
        return log

    @property
    def settings(self) -> Mapping[str, Any]:
        return {}

    @property
    def content_dir(self) -> str | None:
        return self._content_dir

    def emit_finding(self, title: str, severity: Severity, **fields: Any) -> None:
        self.findings += 1

    def invalidate_verdicts(self, reason: str) -> None:
        return None

    def request_action(self, request: Any) -> None:
        return None

    def report_problem(self, message: str | None) -> None:
        return None


def _events(n: int, ruleset: Any) -> list[Event]:
    attacks = attack_events(ruleset)
    events = ordinary_events(n - len(attacks)) + attacks
    random.Random(3).shuffle(events)
    return events


def _engine_rate(events: Sequence[Event]) -> tuple[float, int, int]:
    """events/s through the extension's handler, with every rule directory staged as one content dir."""
    with tempfile.TemporaryDirectory(prefix="rf-sigma-bench-") as content:
        for d in LINUX_RULE_DIRS:
            shutil.copytree(d, Path(content) / d.name)
        ctx = _CountingContext(content)
        engine = SigmaEngine()
        engine.setup(ctx)  # type: ignore[arg-type]  # the counting context implements the protocol
    on_event = engine.on_event
    start = time.perf_counter()
    for event in events:
        on_event(event)
    elapsed = time.perf_counter() - start
    return len(events) / elapsed, ctx.findings, engine.statistics().matches


def _best(runs: int, measure: Callable[[], tuple[float, int]]) -> tuple[float, int]:
    """The best rate of `runs` (this VM shares its two cores: the best run is the least disturbed)."""
    results = [measure() for _ in range(runs)]
    return max(r[0] for r in results), results[0][1]


def _sqlite_rate(events: Sequence[Event], reference: Reference, batch: int) -> tuple[float, int]:
    matches = 0
    start = time.perf_counter()
    for i in range(0, len(events), batch):
        reference.load(events[i : i + batch])
        matches += len(reference.matches())
        reference.clear()
    return len(events) / (time.perf_counter() - start), matches


def _probe_rule() -> str:
    return (
        "title: bench probe\nid: b0b0b0b0-0000-4000-8000-000000000001\nstatus: test\nlevel: low\n"
        "logsource:\n    product: linux\n    category: process_creation\n"
        "detection:\n    sel:\n        CommandLine|contains: '--rf-sigma-bench-'\n    condition: sel\n"
    )


def live(quick: bool = False) -> str:
    """The real agent with the engine and every SigmaHQ Linux rule plus a probe rule: exec-to-finding
    latency of real execs (each with a unique marker, so no finding is deduplicated) and drops."""
    n = 100 if quick else 1000
    with tempfile.TemporaryDirectory(prefix="rf-sigma-live-") as tmp:
        rules = Path(tmp) / "rules"
        rules.mkdir()
        (rules / "probe.yml").write_text(_probe_rule())
        entries = {"probe.yml": rules / "probe.yml"}
        for d in LINUX_RULE_DIRS:
            for name in rule_files(str(d)):
                entries[f"{d.name}-{Path(name).name}"] = d / name
        content = "\n".join(f'"{k}" = "{v}"' for k, v in entries.items())
        extra = (
            '[extensions]\nenabled = ["ringfence.sigma"]\n'
            f'[extensions.content."ringfence.sigma"]\n{content}\n'
        )
        with _running_agent(Path(tmp), extra) as state:
            started: dict[str, float] = {}
            for i in range(n):
                marker = f"--rf-sigma-bench-{i}"
                started[marker] = time.time()
                subprocess.run(["/bin/true", marker], check=True)
            latencies = _latencies(state / "findings.jsonl", started)
            ext = next(e for e in status(state)["extensions"] if e["id"] == "ringfence.sigma")
    lat = sorted(latencies)
    p50, p99 = (lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]) if lat else (0.0, 0.0)
    lost = {k: v for k, v in ext.items() if ("drop" in k or "rate_limited" in k) and v}
    return (
        f"Sigma live: {n} execs one after another, {len(lat)} findings; exec-to-finding latency "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (goal p99 <= 100 ms); "
        f"dropped or rate-limited: {lost or 'none'}; "
        f"extension RSS {ext.get('rss_bytes', 0) / 1e6:.0f} MB with {len(entries)} rule files"
    )


@contextmanager
def _running_agent(tmp: Path, extra: str) -> Iterator[Path]:
    """`ringfence run` with its state dir where the extension user can reach its content (bench/_common's
    running_agent keeps it in a 0700 directory, which the agent rightly refuses for content)."""
    tmp.chmod(0o755)
    state = tmp / "state"
    config = write_config(state, extra)
    proc = subprocess.Popen(
        [*RINGFENCE, "run", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not _ready(state):
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise RuntimeError("agent did not become ready in 60 s")
            time.sleep(0.2)
        yield state
    finally:
        stop(proc)


def _ready(state: Path) -> bool:
    try:
        extensions = status(state)["extensions"]
    except (RuntimeError, ValueError):
        return False
    return bool(extensions) and all(e.get("state") == "running" for e in extensions)


def _latencies(path: Path, started: dict[str, float], timeout_s: float = 30) -> list[float]:
    found: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(found) < len(started) and time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                doc = json.loads(line)
                cmd = doc.get("evidences", [{}])[0].get("process", {}).get("cmd_line", "")
                marker = cmd.split(" ")[-1]
                if marker in started and marker not in found:
                    found[marker] = doc["time"] / 1000 - started[marker]
        time.sleep(0.2)
    return [v * 1000 for v in found.values()]


END_MARKER = "--rf-sigma-bench-end"


def sandboxed(events: Sequence[Event], rate: float | None) -> str:
    """The engine as the agent runs it (its own sandboxed process, at the default limits), fed the
    events through the broker at `rate` events/s (None: as fast as the producer goes); drops, findings and
    the latency of the probe events (one per 1,000, stamped when published)."""
    from ringfence.broker import Broker
    from ringfence.extensions import ExtensionSpec, Supervisor

    with tempfile.TemporaryDirectory(prefix="rf-sigma-sandbox-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        content = root / "content"
        for d in LINUX_RULE_DIRS:
            shutil.copytree(d, content / d.name)
        (content / "probe.yml").write_text(_probe_rule())
        broker = Broker()
        seen: dict[str, float] = {}
        spec = ExtensionSpec(id="ringfence.sigma", entry="ringfence.sigma", content_dir=str(content))

        def findings(f: Any) -> None:
            if (
                f.process is not None
                and f.process.cmdline
                and f.process.cmdline[-1].startswith("--rf-sigma-bench-")
            ):
                seen[f.process.cmdline[-1]] = time.perf_counter()

        sup = Supervisor([spec], findings_sink=findings, on_first_ready=broker.subscribe)
        sup.start()
        try:
            if not sup.wait_ready(60):
                raise RuntimeError(f"the Sigma extension did not start: {sup.statistics()}")
            published, elapsed = _publish(broker, events, rate)
            deadline = time.monotonic() + 30
            while END_MARKER not in seen and time.monotonic() < deadline:
                broker.publish(_marked(END_MARKER))
                time.sleep(0.05)
            total = seen.get(END_MARKER, time.perf_counter()) - elapsed[0]
            stats = _settled(sup)
        finally:
            sup.stop()
    lat = sorted((seen[m] - t) * 1000 for m, t in published.items() if m in seen)
    p50, p99 = (lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]) if lat else (0.0, 0.0)
    pace = "unpaced" if rate is None else f"{rate:,.0f}/s"
    return (
        f"  {pace:>10}: handled {stats.extension.get('events_handled', 0) / total:>7,.0f} events/s, "
        f"delivered {stats.events_delivered:,}, dropped {stats.events_dropped:,} by the agent and "
        f"{stats.extension.get('events_dropped', 0):,} by the extension's inbox, "
        f"findings rate-limited {stats.findings_rate_limited:,}, probes found {len(lat)}/{len(published)}, "
        f"latency p50 {p50:.1f} ms p99 {p99:.1f} ms, restarts {stats.restarts}"
    )


def _settled(sup: Any, timeout_s: float = 10) -> Any:
    """The statistics once the extension's own counters (sent every stats interval) cover every event
    the agent delivered."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = sup.statistics()[0]
        if stats.extension.get("events_received", 0) >= stats.events_delivered or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


def _marked(marker: str) -> Event:
    from ringfence.sdk import ProcessActivity, ProcessActivityId, ProcessRef

    return ProcessActivity(
        header=events_header(),
        activity=ProcessActivityId.LAUNCH,
        process=ProcessRef(pid=1, exe="/usr/bin/true", cmdline=("/usr/bin/true", marker)),
    )


def _publish(
    broker: Any, events: Sequence[Event], rate: float | None
) -> tuple[dict[str, float], list[float]]:
    """Publish `events`, a probe every 1,000; paced in batches of 100 when `rate` is given."""
    published: dict[str, float] = {}
    start = time.perf_counter()
    for i, event in enumerate(events):
        broker.publish(event)
        if i % 1000 == 999:
            marker = f"--rf-sigma-bench-{i}"
            published[marker] = time.perf_counter()
            broker.publish(_marked(marker))
        if i % 100 == 99:
            if rate is not None:
                ahead = start + (i + 1) / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            else:
                time.sleep(0)  # let the consumer's threads run: bursty, not hostile
    return published, [start]


def run(quick: bool = False) -> str:
    n = 20_000 if quick else 200_000
    files = [(str(d / name), str(d / name)) for d in LINUX_RULE_DIRS for name in rule_files(str(d))]
    t0 = time.perf_counter()
    ruleset = load_files(files)
    load_s = time.perf_counter() - t0
    events = _events(n, ruleset)
    runs = 1 if quick else 3
    engine_eps, findings, engine_hits = max((_engine_rate(events) for _ in range(runs)), key=lambda r: r[0])
    reference = Reference(LINUX_RULE_DIRS)
    stream_eps, stream_hits = _best(runs, lambda: _sqlite_rate(events, reference, STREAMING_BATCH))
    bulk_eps, bulk_hits = _best(runs, lambda: _sqlite_rate(events, reference, BULK_BATCH))
    same = set(engine_matches(ruleset, events[:CHECK]))
    reference.load(events[:CHECK])
    agree = same == reference.matches()
    reference.clear()
    lines = [
        f"Sigma: {len(events):,} events, {ruleset.active} active rules "
        f"({sum(ruleset.waiting.values())} waiting for their logsource), loaded in {load_s:.2f} s",
        f"{'':36}{'events/s':>12}{'matches':>10}{'ratio':>8}",
        f"{'ringfence.sigma (1 core)':36}{engine_eps:>12,.0f}{engine_hits:>10,}{'':>8}",
        f"{f'SQLite backend, {STREAMING_BATCH}-event batches':36}{stream_eps:>12,.0f}{stream_hits:>10,}"
        f"{engine_eps / stream_eps:>7.1f}x",
        f"{f'SQLite backend, {BULK_BATCH}-event batches':36}{bulk_eps:>12,.0f}{bulk_hits:>10,}"
        f"{engine_eps / bulk_eps:>7.1f}x",
        f"best of {runs} runs each; load average {os.getloadavg()[0]:.2f} (other work on the VM)",
        f"goal: >= 100,000 events/s and >= 12x streaming; findings after dedup: {findings:,}; "
        f"same (rule, event) matches on the first {CHECK:,} events: {agree}",
    ]
    lines.append("Sigma in its sandbox (default limits: 256 MiB, 50 % of a core), fed through the broker:")
    sample = events[: 20_000 if quick else 100_000]
    for rate in (10_000.0, 20_000.0, 40_000.0, None):
        lines.append(sandboxed(sample, rate))
    lines.append(live(quick))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    print(run(p.parse_args().quick))


if __name__ == "__main__":
    main()
