"""`sensors.close_write_paths`: defaults, and bad values named with their key and line."""

from __future__ import annotations

import pytest

from ringfence.agent import Config, ConfigError
from ringfence.agent._config import parse_config


def test_default_scans_the_usual_drop_directories() -> None:
    assert Config().sensors.close_write_paths == ("/tmp", "/var/tmp", "/dev/shm")


def test_empty_list_turns_close_write_scans_off() -> None:
    assert parse_config(b"[sensors]\nclose_write_paths = []\n", "c.toml").sensors.close_write_paths == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b'["tmp"]', "sensors.close_write_paths[0]"),
        (b'"/tmp"', "sensors.close_write_paths"),
        (b"[1]", "sensors.close_write_paths[0]"),
    ],
)
def test_bad_close_write_paths_are_named_with_key_and_line(value: bytes, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            b"[agent]\nlog_level = 'info'\n[sensors]\nclose_write_paths = " + value + b"\n", "c.toml"
        )
    [problem] = caught.value.problems
    assert (problem.key, problem.line) == (expected, 4)
