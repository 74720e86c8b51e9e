"""A sensor killed with SIGKILL leaves its rules and changed settings in the kernel; the sweep puts back
the settings found before the FIRST run (recorded in the state dir) and removes the rules by key."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringfence.sensors import SensorError
from ringfence.sensors.audit import sweep_audit
from ringfence.sensors.audit._client import AuditClient
from ringfence.sensors.audit._netlink import AuditStatus
from ringfence.sensors.audit._rules import keyed_rules, remove_keyed_rules
from ringfence.sensors.audit._saved import live_daemon, load

CRASHER = """
import os, signal, sys
from ringfence.events import ProcessRef
from ringfence.sensors.audit import AuditSensor

class Unknown:
    def resolve(self, pid):
        return ProcessRef(pid=pid)

key, record, backlog = sys.argv[1], sys.argv[2], int(sys.argv[3])
sensor = AuditSensor(lambda e: None, lambda e: None, Unknown(), "test", key=key, settings_record=record,
                     backlog_limit=backlog)
sensor.start()
print(sensor.mode, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def changed(status: AuditStatus) -> tuple[int, int, int]:
    return (status.enabled, status.backlog_limit, status.backlog_wait_time)


def crash(key: str, record: Path, backlog: int) -> None:
    run = subprocess.run(
        [sys.executable, "-c", CRASHER, key, str(record), str(backlog)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == -9, run.stderr
    if run.stdout.strip() != "daemon":
        pytest.skip(f"another audit daemon took over meanwhile (the sensor ran as {run.stdout.strip()})")


@pytest.fixture
def no_other_daemon(control: AuditClient) -> AuditClient:
    """Other test runs may hold the audit daemon role for a while: wait (bounded) for it to be free."""
    deadline = time.monotonic() + 60
    while live_daemon(control.status().pid):
        if time.monotonic() > deadline:
            pytest.skip("another process stayed the audit daemon for 60 s")
        time.sleep(0.2)
    return control


@pytest.fixture
def record(tmp_path: Path, control: AuditClient, key: str) -> Iterator[Path]:
    path = tmp_path / "audit-settings.json"
    yield path
    remove_keyed_rules(control, key)  # whatever the test's outcome, nothing of ours stays
    saved = load(str(path))
    if saved is not None and not live_daemon(control.status().pid):
        control.set_status(saved.as_status())


def test_settings_before_first_run_lost_and_rules_left_after_two_crashes(
    no_other_daemon: AuditClient, key: str, record: Path
) -> None:
    control = no_other_daemon
    before = changed(control.status())
    crash(key, record, backlog=before[1] + 1000)
    assert len(keyed_rules(control, key)) == 2  # x86_64 and i386: left behind, as the kernel keeps them
    assert control.status().backlog_limit == before[1] + 1000
    crash(key, record, backlog=before[1] + 2000)  # the second run finds the first one's settings
    assert json.loads(record.read_text()) == dict(
        zip(("enabled", "backlog_limit", "backlog_wait_time"), before, strict=True)
    )

    swept = sweep_audit({key, "rf-test-absent-key"}, str(record))

    assert swept.rules_removed == {key: 2}
    assert swept.restored is not None
    assert (swept.restored.enabled, swept.restored.backlog_limit, swept.restored.backlog_wait_time) == before
    assert changed(control.status()) == before
    assert keyed_rules(control, key) == []
    assert not record.exists()


def test_clean_stop_leaves_a_record_that_a_later_sweep_would_restore(
    no_other_daemon: AuditClient, key: str, record: Path
) -> None:
    from ringfence.events import ProcessRef
    from ringfence.sensors.audit import AuditSensor

    class Unknown:
        def resolve(self, pid: int) -> ProcessRef:
            return ProcessRef(pid=pid)

    sensor = AuditSensor(
        lambda e: None, lambda e: None, Unknown(), "test", key=key, settings_record=str(record)
    )
    sensor.start()
    try:
        if sensor.mode != "daemon":
            pytest.skip("another audit daemon took over meanwhile")
        assert record.exists()  # written before the first setting changed
    finally:
        sensor.stop()
    assert not record.exists()


def test_unreadable_record_named_in_the_error(tmp_path: Path, control: AuditClient, key: str) -> None:
    bad = tmp_path / "audit-settings.json"
    bad.write_text("{not json")
    with pytest.raises(
        SensorError, match=re.escape("audit-settings.json: the saved audit settings do not decode")
    ):
        sweep_audit({key}, str(bad))
    assert bad.exists()
    assert os.path.getsize(bad) > 0


BASELINE_CRASHER = """
import os, signal, sys
from ringfence.events import ProcessRef
from ringfence.sensors.audit import AuditFeed, AuditSensor, Baseline, SyscallGroup, Watch

class Unknown:
    def resolve(self, pid):
        return ProcessRef(pid=pid)

key, record, watched = sys.argv[1], sys.argv[2], sys.argv[3]
baseline = Baseline(watches=(Watch("w", (watched, watched + "/file")),),
                    syscalls=(SyscallGroup("memfd", ("memfd_create",)),))
feed = AuditFeed(audit_events=True, baseline=baseline)
sensor = AuditSensor(lambda e: None, lambda e: None, Unknown(), "test", key=key, settings_record=record,
                     want_exec=False, want_network=False, feed=feed)
sensor.start()
print(sensor.statistics().detail["baseline_rules"], flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_baseline_rules_left_by_a_killed_sensor_are_removed_by_the_sweep(
    control: AuditClient, key: str, record: Path, tmp_path: Path
) -> None:
    run = subprocess.run(
        [sys.executable, "-c", BASELINE_CRASHER, key, str(record), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == -9, run.stderr
    assert run.stdout.strip() == "4"  # the tree, the file, memfd_create on x86_64 and i386
    left = keyed_rules(control, key)
    assert sorted(k for rule in left for k in rule.keys) == [f"{key}:memfd"] * 2 + [f"{key}:w"] * 2

    swept = sweep_audit({key}, str(record))

    assert swept.rules_removed == {key: 4}
    assert keyed_rules(control, key) == []
