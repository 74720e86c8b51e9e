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
        (b"[sensors]\nbogus = 1\n", "r.toml: key sensors.bogus"),
        (b"[sensors]\nfile_paths = [1]\n", "r.toml: key sensors.file_paths[0]"),
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
