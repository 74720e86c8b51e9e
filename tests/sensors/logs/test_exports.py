"""The public names of ringfence.sensors.logs, pinned: the agent and tests import these and no others."""

from __future__ import annotations

import ringfence.sensors.logs as logs


def test_exported_names_are_exactly_these() -> None:
    assert sorted(logs.__all__) == [
        "DEFAULT_LOG_FILES",
        "JournalConfig",
        "JournalSensor",
        "LogSensor",
        "LogSensorConfig",
        "Position",
        "SyslogLine",
        "journald_runs",
        "load_positions",
        "parse_syslog",
        "save_positions",
    ]
    for name in logs.__all__:
        assert getattr(logs, name) is not None


def test_default_log_files_are_the_ones_the_issue_names_and_kern_log() -> None:
    assert logs.DEFAULT_LOG_FILES == (
        "/var/log/auth.log",
        "/var/log/secure",
        "/var/log/syslog",
        "/var/log/messages",
        "/var/log/kern.log",
    )
