"""Batching by time on the events lane, through a real broker, supervisor and extension process: events
go in batches and in order, and an AUTH request never waits for the events lingering before it."""

from __future__ import annotations

from ringfence.events import Verdict
from ringfence.extensions import SupervisorConfig
from tests.extensions.conftest import FAST_RESTART, Rig, fault_spec, wait_until

LONG_LINGER_MS = 60_000  # nothing goes by time within these tests: a full batch sends, or nothing does


def test_a_burst_reaches_the_extension_in_full_batches_and_in_order(rig: Rig) -> None:
    config = SupervisorConfig(restart=FAST_RESTART, event_linger_ms=LONG_LINGER_MS, event_batch=10)
    rig.start([fault_spec("fault.good", "WellBehaved")], config=config)
    rig.wait_running("fault.good")
    marks = [f"/tmp/burst-{i}.marker" for i in range(30)]
    for path in marks:
        rig.publish(path)
    wait_until("a finding for every event", lambda: len(rig.found("marker seen")) == 30)
    assert [f.file_path for f in rig.found("marker seen")] == marks
    wait_until(
        "the extension's counters", lambda: rig.stats("fault.good").extension.get("events_handled") == 30
    )
    counters = rig.stats("fault.good").extension
    assert (counters["events_received"], counters["event_batches"]) == (30, 3)
    assert counters.get("events_dropped", 0) == 0 and rig.stats("fault.good").events_dropped == 0


def test_auth_is_answered_while_the_event_before_it_lingers(rig: Rig) -> None:
    config = SupervisorConfig(restart=FAST_RESTART, event_linger_ms=LONG_LINGER_MS, stats_interval_ms=100)
    rig.start([fault_spec("fault.good", "WellBehaved")], config=config)
    rig.wait_running("fault.good")
    rig.publish("/tmp/before-the-auth.marker")
    answer = rig.authorize("/tmp/deny-me")
    assert (answer.verdict, answer.reason) == (Verdict.DENY, "no file")  # the extension's own verdict
    wait_until(
        "a stats report after the verdict", lambda: rig.stats("fault.good").extension.get("auth_answered")
    )
    counters = rig.stats("fault.good").extension
    assert counters.get("events_received", 0) == 0, "the lingering event went before the AUTH call"
    assert rig.stats("fault.good").events_delivered == 1 and not rig.found("marker seen")
