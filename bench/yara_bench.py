"""YARA engine benchmarks, each against the reputation engine (sha256 of the file) on the same files in
the same run:

- scan throughput (MB/s): every file read through its descriptor and judged once, memo empty, in this
  process on one core;
- AUTH latency inside the engine (`on_auth`): a file seen for the first time (cold) and again (warm,
  from the memo);
- AUTH round trip through the broker into the engine in its sandboxed process, with the file's
  descriptor passed as the agent passes it; cold (memo of one entry, two files in turn) and warm.

The files are ELF executables from /usr/bin and /usr/lib (up to the default 32 MiB scan limit); the rules
a synthetic set shaped like published ones (text strings ascii/wide/nocase, hex strings with jumps and
wildcards, regexes, ELF-module conditions) plus one `block` rule.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench._common import table
from ringfence.broker import Broker, DeadlineRunner
from ringfence.engines.reputation import ReputationEngine
from ringfence.engines.yara import YaraEngine
from ringfence.events import AuthAnswer, AuthKind, AuthRequest, HeaderStamper, ProcessRef, Severity
from ringfence.extensions import ExtensionSpec, Supervisor
from ringfence.sdk import ActionRequest, AuthFile, Extension

STAMP = HeaderStamper("bench", "bench-host")
MAX_FILE = 32 << 20
BLOCK_RULE = 'rule bench_block : block { strings: $m = "RF-BENCH-BLOCK-MARK" condition: $m }\n'


def rules_text(n_groups: int = 20, *, elf: bool = True) -> str:
    """A synthetic rule set: the block rule, then per group 4 rules shaped like published malware rules
    (text, hex, regex, mixed) and, with `elf`, one on the ELF module (a module parses every file)."""
    out = ['import "elf"\n' if elf else "", BLOCK_RULE]
    for i in range(n_groups):
        out.append(
            f'rule text_{i} {{ strings: $a = "miner_pool_{i}.example" ascii wide nocase '
            f'$b = "/tmp/.x{i}/payload" $c = "stratum+tcp://{i}" condition: any of them }}\n'
            f"rule hex_{i} {{ strings: $h = {{ 7F 45 4C 46 02 01 01 ?? [4-12] {i % 256:02X} 3E ?? 00 }} "
            f"$j = {{ 48 31 C0 48 89 ?? {i % 256:02X} [2-6] 0F 05 }} condition: $h and $j }}\n"
            f"rule re_{i} {{ strings: $r = /https?:\\/\\/[a-z0-9.]{{4,40}}\\/x{i}[a-z]{{3,8}}\\.php/ "
            f"condition: $r }}\n"
            f'rule mixed_{i} {{ strings: $a = "rev_shell_{i}" '
            f"$b = {{ 2F 62 69 6E 2F 73 68 00 {i % 256:02X} }} "
            f"condition: filesize < 20MB and ($a or #b > 2) }}\n"
        )
        if elf:
            out.append(
                f'rule elf_{i} {{ strings: $s = "LD_PRELOAD_{i}=" '
                f"condition: elf.type == elf.ET_DYN and $s }}\n"
            )
    return "".join(out)


def pick_files(total_bytes: int) -> list[str]:
    """ELF files within the scan limit, by path, until `total_bytes`; the same list for every engine."""
    found: list[tuple[int, str]] = []
    for root in ("/usr/bin", "/usr/lib/x86_64-linux-gnu", "/usr/lib"):
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_file(follow_symlinks=False) and 4096 < e.stat().st_size <= MAX_FILE:
                    with open(e.path, "rb") as f:
                        if f.read(4) == b"\x7fELF":
                            found.append((e.stat().st_size, e.path))
            except OSError:
                continue
    found.sort(key=lambda item: item[1])  # by path: the same mix on every run of one machine
    out: list[str] = []
    size = 0
    for n, path in found:
        if size >= total_bytes:
            break
        out.append(path)
        size += n
    return out


class _Ctx:
    """A Context that drops what the engine emits (findings are not what is measured)."""

    def __init__(self, content_dir: str | None, settings: Mapping[str, Any]) -> None:
        self._dir, self._settings = content_dir, settings
        self.findings = 0

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger("bench.yara")

    @property
    def settings(self) -> Mapping[str, Any]:
        return self._settings

    @property
    def content_dir(self) -> str | None:
        return self._dir

    def emit_finding(self, title: str, severity: Severity, **fields: Any) -> None:
        self.findings += 1

    def invalidate_verdicts(self, reason: str) -> None:
        return None

    def request_action(self, request: ActionRequest) -> None:
        return None

    def report_problem(self, message: str | None) -> None:
        return None


@contextmanager
def content(tmp: Path) -> Iterator[tuple[str, str, str, str]]:
    """Content dirs readable by the extension user: the 101-rule set (ELF module on), a 10,000-entry
    blocklist, the block rule alone, and the 81 rules without the ELF module."""
    yara_dir, rep_dir, one_dir, plain_dir = (tmp / n for n in ("yara", "reputation", "one", "plain"))
    for d in (yara_dir, rep_dir, one_dir, plain_dir):
        d.mkdir(mode=0o755)
    (yara_dir / "bench.yar").write_text(rules_text())
    (one_dir / "bench.yar").write_text(rules_text(0, elf=False))
    (plain_dir / "bench.yar").write_text(rules_text(elf=False))
    import hashlib

    lines = [hashlib.sha256(i.to_bytes(4, "little")).hexdigest() for i in range(10_000)]
    (rep_dir / "blocklist.txt").write_text("\n".join(lines) + "\n")
    for f in (
        yara_dir / "bench.yar",
        rep_dir / "blocklist.txt",
        one_dir / "bench.yar",
        plain_dir / "bench.yar",
    ):
        f.chmod(0o644)
    yield str(yara_dir), str(rep_dir), str(one_dir), str(plain_dir)


def _request(path: str) -> AuthRequest:
    return AuthRequest(header=STAMP.stamp(), kind=AuthKind.EXEC, path=path, process=ProcessRef(pid=1))


def _engine(cls: type[Extension], content_dir: str) -> Extension:
    engine = cls()
    engine.setup(_Ctx(content_dir, {}))
    return engine


def _pct(xs: list[float], p: int) -> float:
    return statistics.quantiles(xs, n=100)[p - 1] if len(xs) > 1 else xs[0]


def in_process(
    files: list[str], dirs: tuple[str, str, str, str]
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    fds = {path: os.open(path, os.O_RDONLY | os.O_CLOEXEC) for path in files}
    for fd in fds.values():  # into the page cache first: the first engine must not pay for the disk
        AuthFile(fd).sha256()
    total_mb = sum(os.fstat(fd).st_size for fd in fds.values()) / 1e6
    throughput: list[tuple[object, ...]] = []
    latency: list[tuple[object, ...]] = []
    try:
        base: dict[str, float] = {}
        for name, cls, content_dir in (
            ("reputation (sha256)", ReputationEngine, dirs[1]),
            ("yara, block rule alone", YaraEngine, dirs[2]),
            ("yara, 81 rules, no module", YaraEngine, dirs[3]),
            ("yara, 101 rules, elf module", YaraEngine, dirs[0]),
        ):
            engine = _engine(cls, content_dir)
            cold, warm = [], []
            t0 = time.perf_counter()
            for path, fd in fds.items():
                s = time.perf_counter()
                engine.on_auth(_request(path), AuthFile(fd))
                cold.append((time.perf_counter() - s) * 1e6)
            elapsed = time.perf_counter() - t0
            for path, fd in fds.items():
                s = time.perf_counter()
                engine.on_auth(_request(path), AuthFile(fd))
                warm.append((time.perf_counter() - s) * 1e6)
            rate = total_mb / elapsed
            base.setdefault("rate", rate)
            throughput.append(
                (name, len(files), f"{total_mb:.0f}", f"{rate:,.0f}", f"{rate / base['rate']:.2f}")
            )
            for kind, xs in (("cold", cold), ("warm (memo)", warm)):
                key = f"{kind}99"
                base.setdefault(key, _pct(xs, 99))
                latency.append((
                    f"{name}, {kind}", len(xs), f"{_pct(xs, 50):,.0f}", f"{_pct(xs, 99):,.0f}",
                    f"{_pct(xs, 99) / base[key]:.1f}",
                ))  # fmt: skip
    finally:
        for fd in fds.values():
            os.close(fd)
    return throughput, latency


def _round_trips(broker: Broker, files: list[tuple[str, int]], n: int) -> list[float]:
    done = threading.Event()
    out: list[float] = []

    def respond(answer: AuthAnswer) -> None:
        done.set()

    for i in range(n):
        path, fd = files[i % len(files)]
        done.clear()
        t0 = time.perf_counter()
        broker.authorize(_request(path), fd, respond)
        done.wait(10)
        out.append((time.perf_counter() - t0) * 1e6)
    return out


@contextmanager
def _sandboxed(
    broker: Broker, ext_id: str, content_dir: str, settings: dict[str, Any], cpu_percent: int = 50
) -> Iterator[Supervisor]:
    spec = ExtensionSpec(
        id=ext_id, entry=ext_id, settings=settings, content_dir=content_dir, cpu_percent=cpu_percent
    )
    sup = Supervisor([spec], findings_sink=lambda f: None, on_first_ready=broker.subscribe)
    sup.start()
    try:
        if not sup.wait_ready(60) or any(s.state != "running" for s in sup.statistics()):
            raise RuntimeError(f"{ext_id} did not start: {sup.statistics()}")
        yield sup
    finally:
        sup.stop()


def through_the_broker(files: list[str], dirs: tuple[str, str, str, str], n: int) -> list[tuple[object, ...]]:
    """Two mid-sized files in turn: with a memo of one entry every request is a cold scan. The sandbox's
    default CPU quota (50 % of a CPU) throttles an engine that scans back to back; one row lifts it."""
    sized = sorted(files, key=os.path.getsize)
    pair = [sized[len(sized) // 2], sized[len(sized) // 2 + 1]]
    opened = [(p, os.open(p, os.O_RDONLY | os.O_CLOEXEC)) for p in pair]
    mb = sum(os.path.getsize(p) for p in pair) / 2 / 1e6
    cold, warm = ("cold", {"memo_entries": 1}, opened), ("warm (memo)", {}, opened[:1])
    runs = [("ringfence.reputation", dirs[1], *cold, 50), ("ringfence.reputation", dirs[1], *warm, 50)]
    runs += [("ringfence.yara", dirs[0], *cold, 50), ("ringfence.yara", dirs[0], *warm, 50)]
    runs += [("ringfence.yara", dirs[0], "cold, cpu_percent = 100", cold[1], cold[2], 100)]
    rows: list[tuple[object, ...]] = []
    base: dict[bool, float] = {}
    try:
        for ext_id, content_dir, kind, settings, use, cpu in runs:
            broker = Broker(auth_deadline_ms=5000)
            runner = DeadlineRunner(broker.arbiter)
            runner.start()
            try:
                with _sandboxed(broker, ext_id, content_dir, settings, cpu):
                    _round_trips(broker, use, 10)  # warm-up
                    xs = _round_trips(broker, use, n)
            finally:
                runner.stop()
            p99 = base.setdefault(len(use) == 1, _pct(xs, 99))
            rows.append((
                f"{ext_id}, {kind}", n, f"{mb:.1f}", f"{_pct(xs, 50):,.0f}", f"{_pct(xs, 99):,.0f}",
                f"{_pct(xs, 99) / p99:.1f}",
            ))  # fmt: skip
    finally:
        for _, fd in opened:
            os.close(fd)
    return rows


def run(quick: bool) -> str:
    total, n = (30 << 20, 100) if quick else (300 << 20, 1000)
    files = pick_files(total)
    with tempfile.TemporaryDirectory(prefix="rf-yara-bench-") as tmp:
        Path(tmp).chmod(0o755)
        with content(Path(tmp)) as dirs:
            throughput, latency = in_process(files, dirs)
            broker_rows = through_the_broker(files, dirs, n)
    scan_header = ("engine", "files", "MB", "MB/s", "ratio")
    latency_header = ("engine", "requests", "p50", "p99", "p99 ratio")
    return "\n\n".join([
        table("Scan throughput, one core, memo empty", scan_header, throughput),
        table("AUTH latency inside the engine (us)", latency_header, latency),
        table(
            "AUTH round trip through the broker into the sandboxed engine (us)",
            ("engine", "requests", "MB per file", "p50", "p99", "p99 ratio"),
            broker_rows,
        ),
    ])  # fmt: skip


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    print(run("--quick" in sys.argv))
