"""The agent's `[fleet]` section: every bad value named with its key and line, all at once."""

from __future__ import annotations

import pytest

from ringfence.agent import ConfigError, parse_config


def test_fleet_section_defaults_and_values() -> None:
    config = parse_config(
        b'[fleet]\nurl = "https://fleet.example:8477"\nheartbeat_interval_s = 5\n', "rf.toml"
    )
    assert config.fleet.url == "https://fleet.example:8477" and config.fleet.heartbeat_interval_s == 5
    assert parse_config(b"", "rf.toml").fleet.url == "", "no url: no uplink"
    assert parse_config(b"", "rf.toml").fleet.ca_file == "", "the system's CAs"
    with_ca = parse_config(b'[fleet]\nca_file = "/etc/ringfence/fleet-ca.pem"\n', "rf.toml")
    assert with_ca.fleet.ca_file == "/etc/ringfence/fleet-ca.pem"


def test_bad_fleet_values_all_reported_with_key_and_line() -> None:
    text = (
        b"[agent]\n"
        b'log_level = "info"\n'
        b"[fleet]\n"
        b'url = "fleet.example"\n'
        b'credential = "relative/cred.json"\n'
        b"heartbeat_interval_s = 0\n"
        b"findings_batch = 5000\n"
        b"max_backoff_s = 0\n"
        b'ca_file = "ca.pem"\n'
    )
    with pytest.raises(ConfigError) as e:
        parse_config(text, "rf.toml")
    found = {(p.key, p.line) for p in e.value.problems}
    assert found == {
        ("fleet.url", 4),
        ("fleet.credential", 5),
        ("fleet.heartbeat_interval_s", 6),
        ("fleet.findings_batch", 7),
        ("fleet.max_backoff_s", 8),
        ("fleet.ca_file", 9),
    }
    assert "an http:// or https:// URL, got 'fleet.example'" in str(e.value)


def test_unknown_fleet_key_refused() -> None:
    with pytest.raises(ConfigError, match=r"fleet\.interval_s: unknown key"):
        parse_config(b"[fleet]\ninterval_s = 30\n", "rf.toml")
