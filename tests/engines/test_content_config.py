"""Content in the agent config: `[extensions.content."<id>"]` checked with every problem at once, and the
state dir checked for reachability before anything is staged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ringfence.agent import AgentError, ConfigError, parse_config
from ringfence.agent._config import AgentSection, Config, ExtensionsSection
from ringfence.agent._extensions import extension_specs, stage_content


def test_content_table_parsed() -> None:
    config = parse_config(
        b'[extensions.content."ringfence.reputation"]\n"blocklist.txt" = "/etc/rf/bl.txt"\n', "rf.toml"
    )
    assert config.extensions.content == {"ringfence.reputation": {"blocklist.txt": "/etc/rf/bl.txt"}}


def test_bad_content_names_and_relative_paths_all_reported() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(
            b'[extensions.content."x"]\n"../escape" = "/a"\n"ok.txt" = "relative/path"\n".hidden" = "/b"\n',
            "rf.toml",
        )
    message = str(raised.value)
    assert 'extensions.content."x"."../escape": a content file name is' in message
    assert 'extensions.content."x"."ok.txt": must be an absolute path' in message
    assert 'extensions.content."x".".hidden": a content file name is' in message


def test_non_string_content_path_refused() -> None:
    with pytest.raises(ConfigError, match=r"extensions\.content"):
        parse_config(b'[extensions.content."x"]\n"a.txt" = 3\n', "rf.toml")


def test_state_dir_the_extension_user_cannot_reach_refused_before_staging(tmp_path: Path) -> None:
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    blocklist = tmp_path / "bl.txt"
    blocklist.write_text("")
    config = Config(
        agent=AgentSection(state_dir=str(hidden / "state")),
        extensions=ExtensionsSection(content={"ringfence.reputation": {"blocklist.txt": str(blocklist)}}),
    )
    with pytest.raises(AgentError, match="not searchable by others"):
        stage_content(config)
    assert not (hidden / "state").exists()


def test_specs_grant_the_content_store_and_no_operator_directory(tmp_path: Path) -> None:
    state = Path("/tmp") / f"rf-spec-{tmp_path.name}"
    blocklist = tmp_path / "bl.txt"
    blocklist.write_text("")
    config = Config(
        agent=AgentSection(state_dir=str(state)),
        extensions=ExtensionsSection(
            enabled=("ringfence.reputation",),
            config={"ringfence.reputation": {"blocklist": str(blocklist), "memo_entries": 8}},
        ),
    )
    try:
        _, contents = stage_content(config)
        [spec] = extension_specs(config, contents)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    assert spec.settings == {"memo_entries": 8}  # the path-naming key moved to content
    assert spec.content_dir == f"{state}/content/ringfence.reputation/active"
    assert spec.read_paths == (f"{state}/content/ringfence.reputation",)
    assert spec.content_origins == {f"{spec.content_dir}/blocklist.txt": str(blocklist)}
    assert str(tmp_path) not in repr((spec.read_paths, spec.sys_path, spec.content_dir))
