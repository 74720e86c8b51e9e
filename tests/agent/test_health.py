"""Health tells the truth: what makes the agent degraded, and the typed records that carry it."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from ringfence.agent._health import DropTracker, drop_totals, extension_problem, problems_of
from ringfence.events import (
    HEARTBEAT_SCHEMA_VERSION,
    AbsentAuthStatistics,
    AuthStatistics,
    BrokerStatistics,
    ChannelStatistics,
    ExtensionStatistics,
    Health,
    Heartbeat,
    JsonlStatistics,
    KindStatistics,
    SensorStatistics,
    decode_heartbeat,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def monotonic_ns(self) -> int:
        return self.now

    def time_ns(self) -> int:
        return self.now


def _broker(dropped: int = 0) -> BrokerStatistics:
    return BrokerStatistics(
        kinds={"file": KindStatistics(dropped=dropped)}, auth=AuthStatistics(), subscribers=[]
    )


def _health(**kw: object) -> Health:
    fields: dict[str, object] = {
        "version": "0",
        "pid": 1,
        "host": "h",
        "state_dir": "/s",
        "started_at_ns": 0,
        "uptime_s": 1.0,
        "healthy": True,
        "problems": [],
        "sensors": [SensorStatistics(name="file", running=True, dropped=3)],
        "unavailable": {},
        "broker": _broker(),
        "outputs": [
            JsonlStatistics("/s/events.jsonl", ChannelStatistics(8, 0, 1, 0, "drop-newest"), 1, 0, 0)
        ],
        "extensions": [
            ExtensionStatistics(id="x", state="running", engine_version="1.2", content_version="c7")
        ],
        "memory_rss_bytes": 1,
        "cpu_user_s": 0.0,
        "cpu_system_s": 0.0,
        "threads": 1,
    }
    fields.update(kw)
    return Health(**fields)  # type: ignore[arg-type]


def test_drops_degrade_for_the_window_then_only_the_total_remains() -> None:
    clock = FakeClock()
    tracker = DropTracker(clock)
    sensors = [SensorStatistics(name="file", running=True, dropped=0)]

    def problems(dropped: int) -> list[str]:
        sensors[0].dropped = dropped
        drops = tracker.observe(drop_totals(sensors, _broker(), [], []))
        return problems_of(
            sensors=sensors, unavailable={}, broker=_broker(), extensions=[], drops=drops, drop_window_s=60
        )

    assert problems(0) == []
    clock.now += 10**9
    [line] = problems(847)
    assert line.startswith("sensor file dropped events 0 s ago (847 in all")
    clock.now += 59 * 10**9
    assert problems(847), "a drop 59 s ago is inside a 60 s window"
    clock.now += 2 * 10**9
    assert problems(847) == []  # no new drop for 61 s: healthy, the total still reported
    assert tracker.observe({"sensor file": 847})[0].total == 847
    clock.now += 10**9
    assert problems(848), "a new drop degrades again"


def test_drops_inside_an_extension_degrade_too() -> None:
    """An extension whose own inbox overflows loses events the agent never sees leave: its runtime's
    counters say so, and they count as a stage's drops."""
    clock = FakeClock()
    tracker = DropTracker(clock)
    ext = ExtensionStatistics(id="sig", state="running", extension={"events_dropped": 5, "findings": 9})
    drops = tracker.observe(drop_totals([], _broker(), [], [ext]))
    assert [(d.stage, d.total) for d in drops] == [("extension sig (inside)", 5)]
    problems = problems_of(
        sensors=[], unavailable={}, broker=_broker(), extensions=[ext], drops=drops, drop_window_s=60
    )
    assert any(p.startswith("extension sig (inside) dropped events") for p in problems)


@pytest.mark.parametrize(
    ("stats", "expected"),
    [
        (ExtensionStatistics(id="r", state="running"), None),
        (
            ExtensionStatistics(
                id="r", state="running", last_error="bl.txt:3: not a sha256 (last good kept)"
            ),
            "extension r running with a problem: bl.txt:3: not a sha256 (last good kept)",
        ),
        (
            ExtensionStatistics(
                id="r",
                state="backoff",
                failures=1,
                last_exit_reason="exited with status 1",
                last_error="setup failed: FileNotFoundError: /x/bl.txt",
            ),
            "extension r backoff: setup failed: FileNotFoundError: /x/bl.txt",
        ),
        (
            ExtensionStatistics(
                id="r", state="quarantined", quarantine_reason="5 failures, the last: killed: oom"
            ),
            "extension r quarantined: 5 failures, the last: killed: oom",
        ),
        (ExtensionStatistics(id="r", state="starting"), "extension r starting: no handshake yet"),
        (
            ExtensionStatistics(
                id="r", state="quarantined", quarantine_reason="extension r: refused the handshake: wrong id"
            ),
            "extension r quarantined: refused the handshake: wrong id",
        ),
        (ExtensionStatistics(id="r", state="stopped"), "extension r stopped: not running"),
    ],
)
def test_an_enabled_extension_that_is_not_running_is_a_problem_with_its_own_error(
    stats: ExtensionStatistics, expected: str | None
) -> None:
    problem = extension_problem(stats)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(expected)


def test_fail_closed_auth_extension_that_left_is_named_in_the_problems() -> None:
    broker = _broker()
    broker.auth.absent["strict"] = AbsentAuthStatistics(
        failure="fail-closed", reason="quarantined", since_ns=0, denied=4
    )
    broker.auth.absent["lenient"] = AbsentAuthStatistics(
        failure="fail-open", reason="quarantined", since_ns=0
    )
    problems = problems_of(
        sensors=[], unavailable={}, broker=broker, extensions=[], drops=[], drop_window_s=1
    )
    assert problems == [
        "extension strict left AUTH (quarantined): fail-closed, every exec is denied (4 so far)"
    ]


def test_health_round_trips_typed_through_json() -> None:
    h = _health()
    back = msgspec.json.decode(msgspec.json.encode(h), type=Health)
    assert back == h
    assert back.extensions[0].engine_version == "1.2" and back.extensions[0].content_version == "c7"


def test_heartbeat_carries_its_schema_version_and_refuses_an_unknown_one() -> None:
    beat = Heartbeat(host_id="h1", sequence=1, sent_at_ns=5, health=_health())
    data = msgspec.json.encode(beat)
    assert msgspec.json.decode(data)["schema_version"] == HEARTBEAT_SCHEMA_VERSION
    assert decode_heartbeat(data) == beat
    future = data.replace(b'"schema_version":1', b'"schema_version":2')
    with pytest.raises(ValueError, match="schema version 2"):
        decode_heartbeat(future)
    with pytest.raises(ValueError, match="heartbeat"):
        decode_heartbeat(b'{"schema_version":1,"host_id":"h1"}')
    with pytest.raises(ValueError, match="heartbeat"):
        decode_heartbeat(b"not json")


def test_health_records_import_without_the_host_side() -> None:
    """The fleet layer reads heartbeats: importing the records must not pull in agent, sensors, extensions."""
    code = (
        "import sys, ringfence.events as e; e.Heartbeat; "
        "bad = [m for m in sys.modules if m.startswith(('ringfence.agent', 'ringfence.sensors', "
        "'ringfence.extensions', 'ringfence.broker'))]; print(bad); sys.exit(bool(bad))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_metrics_show_the_same_health_with_stable_names() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from ringfence.agent._metrics import HealthCollector

    h = _health(
        healthy=False,
        problems=["extension x backoff: setup failed: E"],
        extensions=[ExtensionStatistics(id="x", state="backoff", restarts=2, engine_version="1.2")],
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HealthCollector(lambda: h))
    text = generate_latest(registry).decode()
    for line in (
        "ringfence_healthy 0.0",
        "ringfence_problems 1.0",
        'ringfence_dropped_events_total{stage="sensor file"} 3.0',
        'ringfence_extension_state{extension="x",state="backoff"} 1.0',
        'ringfence_extension_state{extension="x",state="running"} 0.0',
        'ringfence_extension_restarts_total{extension="x"} 2.0',
        'ringfence_extension_info{content="",engine="1.2",extension="x"} 1.0',
        'ringfence_sensor_running{sensor="file"} 1.0',
    ):
        assert line in text, line


def test_terminal_gets_one_line_per_record_and_the_log_file_the_traceback_and_detail() -> None:
    import logging

    from ringfence.agent._console import LogFileFormatter, TerminalFormatter

    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        exc = sys.exc_info()
    record = logging.LogRecord(
        "ringfence.x", logging.ERROR, __file__, 1, "failed: %s\nsecond line", ("it",), exc
    )
    record.detail = "Traceback (most recent call last):\n  ...\nPermissionError: no"
    terminal = TerminalFormatter("/s/agent.log").format(record)
    assert "\n" not in terminal and terminal.endswith("failed: it (details in /s/agent.log)")
    full = LogFileFormatter().format(record)
    assert "second line" in full and "ValueError: boom" in full and "    | PermissionError: no" in full
    plain = logging.LogRecord("ringfence.x", logging.INFO, __file__, 1, "all well", (), None)
    assert TerminalFormatter("/s/agent.log").format(plain).endswith("ringfence.x: all well")


def test_human_status_shows_problems_first_then_drops_and_auth_absence() -> None:
    from ringfence.cli import _render_status
    from ringfence.events import StageDrops

    broker = _broker(dropped=5)
    broker.auth.absent["strict"] = AbsentAuthStatistics(
        failure="fail-closed", reason="quarantined", since_ns=0, denied=2
    )
    h = _health(
        healthy=False,
        problems=[
            "extension strict quarantined: setup failed: E",
            "sensor file dropped events 1 s ago (3 in all)",
        ],
        broker=broker,
        drops=[StageDrops(stage="sensor file", total=3, last_s=1.0)],
    )
    text = _render_status(h)
    first = text.splitlines()[0]
    assert "DEGRADED (extension strict quarantined: setup failed: E; sensor file dropped" in first
    assert "strict                   LEFT AUTH (quarantined): fail-closed, denied=2" in text
    assert "  sensor file: 3 in all, the last 1 s ago" in text
    assert "version=1.2 content=c7" in text


def test_a_running_agent_numbers_its_heartbeats_and_they_decode_on_the_other_side(
    tmpfs: Path, tmp_path: Path
) -> None:
    from ringfence.agent import Agent, Console
    from tests.agent.helpers import scoped_config

    agent = Agent(scoped_config(tmpfs, tmp_path / "state"), console=Console(io.StringIO()))
    agent.start()
    try:
        first, second = agent.heartbeat(), agent.heartbeat()
    finally:
        agent.stop()
    assert (first.sequence, second.sequence) == (1, 2)
    back = decode_heartbeat(msgspec.json.encode(second))
    assert back.schema_version == HEARTBEAT_SCHEMA_VERSION and back.host_id == agent.config.host
    assert back.health.healthy, back.health.problems
    assert {s.name for s in back.health.sensors} >= {"process", "file", "exec-auth"}


def test_a_running_sensor_with_a_problem_degrades() -> None:
    """Audit switched off under a running sensor: running, but the agent is not healthy."""
    sensors = [SensorStatistics(name="audit", running=True, problem="audit was disabled (auditctl -e 0?)")]
    problems = problems_of(
        sensors=sensors, unavailable={}, broker=_broker(), extensions=[], drops=[], drop_window_s=60
    )
    assert problems == ["sensor audit: audit was disabled (auditctl -e 0?)"]


def _syslog(**kw: object) -> object:
    from ringfence.events import SyslogStatistics

    fields: dict = {
        "address": "tcp://127.0.0.1:601",
        "connected": False,
        "channel": ChannelStatistics(16, 16, 40, 24, "drop-oldest"),
        "sent": 3,
        "truncated": 1,
        "errors": 5,
        "unsendable": 1,
        "last_error": "cannot connect: Connection refused",
        "failing_since_ns": 1_000_000_000,
    } | kw
    return SyslogStatistics(**fields)


def test_syslog_failing_is_a_problem_and_its_drops_a_stage_of_their_own() -> None:
    from ringfence.agent._health import syslog_problem

    s = _syslog()
    line = syslog_problem(s, now_ns=13_000_000_000)  # type: ignore[arg-type]
    assert line == (
        "output syslog tcp://127.0.0.1:601 failing for 12 s: cannot connect: Connection refused "
        "(16 queued, 25 dropped; findings.jsonl still has every finding)"
    )
    assert syslog_problem(_syslog(failing_since_ns=0), now_ns=1) is None  # type: ignore[arg-type]
    assert syslog_problem(None, now_ns=1) is None
    totals = drop_totals([], _broker(), [], [], s)  # type: ignore[arg-type]
    assert totals["output syslog tcp://127.0.0.1:601"] == 25
    problems = problems_of(
        sensors=[],
        unavailable={},
        broker=_broker(),
        extensions=[],
        drops=[],
        drop_window_s=300,
        syslog=s,  # type: ignore[arg-type]
        now_ns=2_000_000_000,
    )
    assert problems == [line.replace("12 s", "1 s")]  # type: ignore[union-attr]


def test_syslog_in_metrics_status_and_heartbeat() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from ringfence.agent._metrics import HealthCollector
    from ringfence.cli import _render_status

    h = _health(syslog=_syslog())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HealthCollector(lambda: h))
    text = generate_latest(registry).decode()
    for line in (
        'ringfence_syslog_messages_total{result="sent"} 3.0',
        'ringfence_syslog_messages_total{result="dropped"} 25.0',
        'ringfence_syslog_messages_total{result="truncated"} 1.0',
        "ringfence_syslog_errors_total 5.0",
        "ringfence_syslog_queued 16.0",
        "ringfence_syslog_up 0.0",
        'ringfence_dropped_events_total{stage="output syslog tcp://127.0.0.1:601"} 25.0',
    ):
        assert line in text, line
    assert "ringfence_syslog" not in generate_latest(_registry_of(_health())).decode()
    status = _render_status(h)
    assert "output syslog tcp://127.0.0.1:601: FAILING sent=3 queued=16 dropped=25 truncated=1" in status
    assert "  last error: cannot connect: Connection refused" in status
    beat = Heartbeat(host_id="h", sequence=1, sent_at_ns=1, health=h)
    assert decode_heartbeat(msgspec.json.encode(beat)).health.syslog == h.syslog


def _registry_of(h: Health) -> object:
    from prometheus_client.registry import CollectorRegistry

    from ringfence.agent._metrics import HealthCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(HealthCollector(lambda: h))
    return registry
