from __future__ import annotations

import pytest

from ringfence.agent import Config, ConfigError, load_config, parse_config


def test_defaults_are_safe() -> None:
    c = Config()
    assert c.broker.auth_deadline_ms == 250
    assert c.agent.state_dir == "/var/lib/ringfence"
    assert "ringfence.reputation" in c.extensions.enabled


def test_good_config_parses() -> None:
    c = parse_config(b'[broker]\nauth_deadline_ms = 100\n[sensors]\nfile_paths = ["/srv"]\n', "r.toml")
    assert c.broker.auth_deadline_ms == 100 and c.sensors.file_paths == ("/srv",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"[sensors]\nbogus = 1\n", "r.toml:2: key sensors.bogus"),
        (b"[sensors]\nfile_paths = [1]\n", "r.toml:2: key sensors.file_paths[0]"),
        (b"[broker]\nauth_deadline_ms = 0\n", "broker.auth_deadline_ms"),
        (b'[sensors]\nfile_paths = ["relative"]\n', "sensors.file_paths[0]: must be an absolute path"),
        (b'[broker]\nmute_kinds = ["nope"]\n', "key broker.mute_kinds[0]"),
        (b"[agent\n", "r.toml: not valid TOML"),
        (b'[agent]\nlog_level = "loud"\n', "agent.log_level"),
        (b"[nonsense]\n", "key nonsense"),
    ],
)
def test_bad_config_names_file_and_key(text: bytes, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        parse_config(text, "r.toml")


def test_missing_config_file_is_a_clear_error(tmp_path: pytest.TempPathFactory) -> None:
    with pytest.raises(ConfigError, match="cannot read the config"):
        load_config(f"{tmp_path}/absent.toml")


def test_packaged_config_is_valid_and_equals_the_defaults() -> None:
    from pathlib import Path

    packaged = Path(__file__).parents[2] / "packaging" / "ringfence.toml"
    import msgspec

    loaded = load_config(str(packaged))
    assert loaded.extensions.config == {"ringfence.reputation": {}}  # the commented-out example table
    no_tables = msgspec.structs.replace(loaded.extensions, config={})
    assert msgspec.structs.replace(loaded, extensions=no_tables) == Config()


def test_bad_management_address_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"response.management_addresses: .*'10.0.0.300'"):
        parse_config(b'[response]\nmanagement_addresses = ["10.0.0.300"]\n', "r.toml")


def test_every_unknown_section_and_key_is_reported_at_once_with_its_line() -> None:
    text = (
        b"[nosuchsection]\nx = 1\n"
        b"[sensors]\nbogus = 1\nfile_paths = [1]\n"
        b"[broker]\nauth_deadline_ms = 0\nalso_bogus = true\n"
        b'[agent]\nstate_dir = "relative/dir"\n'
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "r.toml")
    got = {(p.key, p.line) for p in caught.value.problems}
    assert got == {
        ("nosuchsection", 1),
        ("sensors.bogus", 4),
        ("sensors.file_paths[0]", 5),
        ("broker.also_bogus", 8),
        ("broker.auth_deadline_ms", 7),  # a range check, made on what the wrong keys left
        ("agent.state_dir", 10),
    }
    assert all(p.source == "r.toml" for p in caught.value.problems)
    assert len(str(caught.value).splitlines()) == 6  # one line each
    assert "unknown section" in str(caught.value) and "unknown key" in str(caught.value)


def test_command_line_overrides_are_checked_like_the_file() -> None:
    from ringfence.agent._config import with_overrides

    with pytest.raises(ConfigError) as caught:
        with_overrides(Config(), agent={"state_dir": "relative/dir"})
    [problem] = caught.value.problems
    assert (problem.source, problem.key) == ("command line", "agent.state_dir")
    assert "must be an absolute path" in problem.message


@pytest.mark.parametrize(
    ("listen", "allow", "expected"),
    [
        ("0.0.0.0:9477", False, "not a loopback address"),
        ("10.1.2.3:9477", False, "not a loopback address"),
        ("127.0.0.1", False, "not HOST:PORT"),
        ("127.0.0.1:99999", False, "not HOST:PORT"),
        ("example.com:9477", True, "IP address or localhost"),
    ],
)
def test_metrics_listener_refuses_bad_or_non_loopback_addresses(
    listen: str, allow: bool, expected: str
) -> None:
    text = f'[agent]\nmetrics_listen = "{listen}"\nmetrics_allow_remote = {str(allow).lower()}\n'.encode()
    with pytest.raises(ConfigError, match=f"agent.metrics_listen: .*{expected}"):
        parse_config(text, "r.toml")


def test_metrics_listener_on_loopback_or_explicitly_remote_is_accepted() -> None:
    assert parse_config(b'[agent]\nmetrics_listen = "[::1]:9477"\n', "r.toml").agent.metrics_listen
    text = b'[agent]\nmetrics_listen = "0.0.0.0:9477"\nmetrics_allow_remote = true\n'
    assert parse_config(text, "r.toml").agent.metrics_allow_remote


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (b"agent = 5\n", "agent", "must be a table, got int"),
        (b'[extensions]\nconfig = "x"\n', "extensions.config", "Expected `object`, got `str`"),
        (b'[extensions.config."a"]\nk = 1\n[extensions]\nenabled = "a"\n', "extensions.enabled", "Expected"),
        (b"[agent]\ndrop_window_s = 0\n", "agent.drop_window_s", "must be > 0"),
        (b"[extensions]\nready_timeout_s = 0\n", "extensions.ready_timeout_s", "must be > 0"),
        (b"[extensions]\nready_timeout_s = -1\n", "extensions.ready_timeout_s", "got -1"),
        (b"[extensions]\nready_timeout_s = 1e9\n", "extensions.ready_timeout_s", "<= 3600 s"),
        (b"[extensions]\nready_timeout_s = nan\n", "extensions.ready_timeout_s", "got nan"),
        (b'[extensions]\nready_timeout_s = "5"\n', "extensions.ready_timeout_s", "Expected `float`"),
    ],
)
def test_wrong_shapes_are_problems_of_their_key(text: bytes, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "r.toml")
    [problem] = caught.value.problems
    assert problem.key == key and message in problem.message, problem


def test_toml_syntax_error_says_where() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(b"[agent]\nstate_dir = \n", "r.toml")
    [problem] = caught.value.problems
    assert problem.key == "" and "not valid TOML" in problem.message and "line 2" in problem.message


def test_syslog_output_keys_parse() -> None:
    text = (
        b'[output]\nsyslog = "tcp://[2001:db8::1]:6514"\nsyslog_facility = "local4"\n'
        b'syslog_kinds = ["finding", "authentication"]\nsyslog_max_bytes = 2048\nsyslog_queue = 16\n'
    )
    out = parse_config(text, "r.toml").output
    assert (out.syslog, out.syslog_facility, out.syslog_max_bytes, out.syslog_queue) == (
        "tcp://[2001:db8::1]:6514",
        "local4",
        2048,
        16,
    )
    assert [str(k) for k in out.syslog_kinds] == ["finding", "authentication"]
    assert Config().output.syslog == "" and Config().output.syslog_facility == "authpriv"


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        ('syslog = "udp://::1:514"', "output.syslog", "IPv6 address goes in brackets: [::1]:514"),
        ('syslog = "udp://127.0.0.1:70000"', "output.syslog", "the port must be 1..65535"),
        ('syslog = "tls://siem:6514"', "output.syslog", "unknown scheme 'tls'"),
        ('syslog = "gopher://siem:70"', "output.syslog", "unknown scheme 'gopher'"),
        ('syslog = "unix:dev/log"', "output.syslog", "absolute path"),
        ('syslog_facility = "security"', "output.syslog_facility", "ambiguous"),
        ('syslog_facility = "local9"', "output.syslog_facility", "unknown facility 'local9'"),
        ('syslog_kinds = ["auth.exec"]', "output.syslog_kinds[0]", "AUTH request"),
        ('syslog_kinds = ["nope"]', "output.syslog_kinds[0]", "Invalid enum value 'nope'"),
        ("syslog_max_bytes = 480", "output.syslog_max_bytes", "2048..65507"),
        ("syslog_max_bytes = 70000", "output.syslog_max_bytes", "2048..65507"),
        ("syslog_queue = 0", "output.syslog_queue", "16..1000000"),
        ("syslog = 514", "output.syslog", "Expected `str`, got `int`"),
    ],
)
def test_bad_syslog_values_name_file_key_and_line(line: str, key: str, message: str) -> None:
    text = f"[agent]\nlog_level = 'info'\n[output]\nmax_file_mb = 64\n{line}\n".encode()
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "r.toml")
    [problem] = caught.value.problems
    assert (problem.source, problem.key, problem.line) == ("r.toml", key, 5), problem
    assert message in problem.message, problem


def test_every_bad_syslog_value_is_reported_at_once() -> None:
    text = b'[output]\nsyslog = "udp://x"\nsyslog_facility = "nope"\nsyslog_queue = 1\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "r.toml")
    assert {p.key for p in caught.value.problems} == {
        "output.syslog",
        "output.syslog_facility",
        "output.syslog_queue",
    }


@pytest.mark.parametrize("linger", ["-1", "1001", "nan"])
def test_event_linger_out_of_range_is_refused_with_its_key(linger: str) -> None:
    with pytest.raises(ConfigError, match=r"extensions.event_linger_ms: 0..1000 ms"):
        parse_config(f"[extensions]\nevent_linger_ms = {linger}\n".encode(), "r.toml")
