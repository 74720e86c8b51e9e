"""The agent's [sensors] audit feed settings: what reaches the sensor; bad values named by key, line."""

from __future__ import annotations

import io

import pytest

from ringfence.agent import Agent, Console
from ringfence.agent._config import parse_config
from ringfence.agent._errors import ConfigError
from ringfence.sensors.audit import DEFAULT_BASELINE, DEFAULT_OFF, AuditFeed


def _feed(text: bytes) -> AuditFeed:
    return Agent(parse_config(text, "ringfence.toml"), console=Console(io.StringIO()))._audit_feed()


def test_the_feed_and_the_baseline_are_on_by_default() -> None:
    feed = _feed(b"")
    assert (feed.audit_events, feed.identity) == (True, True)
    # the syscall rules and the credentials-read watch; the write watches only when asked for (their cost)
    assert feed.baseline == DEFAULT_BASELINE.without(DEFAULT_OFF)
    assert {"credentials-read", "module", "ptrace", "memfd"} <= feed.baseline.categories
    assert _feed(b"[sensors]\naudit_baseline_off = []\n").baseline == DEFAULT_BASELINE


def test_the_feed_turns_off() -> None:
    feed = _feed(b"[sensors]\naudit_events = false\naudit_identity = false\naudit_baseline = false\n")
    assert (feed.wanted, feed.baseline) == (False, None)


def test_each_setting_reaches_the_sensor_and_categories_are_left_out() -> None:
    feed = _feed(
        b"[sensors]\naudit_events = true\naudit_events_all = true\naudit_identity = true\n"
        b'audit_baseline = true\naudit_baseline_off = ["xattr", "ssh"]\n'
    )
    assert (feed.audit_events, feed.all_events, feed.identity) == (True, True, True)
    assert feed.baseline is not None
    assert feed.baseline.categories == DEFAULT_BASELINE.categories - {"xattr", "ssh"}


def test_an_unknown_baseline_category_is_named_with_its_key_and_line() -> None:
    text = b'[sensors]\naudit_baseline = true\naudit_baseline_off = ["memfd", "xatr"]\n'
    with pytest.raises(ConfigError) as e:
        parse_config(text, "ringfence.toml")
    (problem,) = e.value.problems
    assert (problem.key, problem.line) == ("sensors.audit_baseline_off[1]", 3)
    assert "'xatr'" in problem.message and "xattr" in problem.message


def test_feed_settings_must_be_booleans() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(b'[sensors]\naudit_identity = "yes"\naudit_baseline = 1\n', "ringfence.toml")
    assert sorted(p.key for p in e.value.problems) == ["sensors.audit_baseline", "sensors.audit_identity"]
