"""The fold: ringfence.reputation is the IOC engine under its old id. Old configs keep working, the old id
takes every IOC format, both ids at once are refused, and --blocklist goes to whichever id is enabled."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.engines.test_reputation_engine import Content, sync, write

from ringfence.agent import ConfigError, parse_config
from ringfence.cli import _ioc_engine_id
from ringfence.engines.reputation import ReputationEngine
from ringfence.sdk import AuthFile, AuthRequest, Verdict


def test_enabling_both_ids_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(b'[extensions]\nenabled = ["ringfence.reputation", "ringfence.ioc"]\n', "rf.toml")
    message = str(raised.value)
    assert "rf.toml" in message and "extensions.enabled" in message and "are one engine" in message


def test_both_ids_with_one_disabled_accepted() -> None:
    config = parse_config(
        b'[extensions]\nenabled = ["ringfence.reputation", "ringfence.ioc"]\n'
        b'disabled = ["ringfence.reputation"]\n',
        "rf.toml",
    )
    assert _ioc_engine_id(config) == "ringfence.ioc"


@pytest.mark.parametrize(
    ("toml", "target"),
    [
        (b"", "ringfence.reputation"),  # the default config
        (b'[extensions]\nenabled = ["ringfence.ioc"]\n', "ringfence.ioc"),
        (b'[extensions]\nenabled = ["ringfence.reputation", "ringfence.sigma"]\n', "ringfence.reputation"),
    ],
)
def test_blocklist_flag_goes_to_the_enabled_id(toml: bytes, target: str) -> None:
    assert _ioc_engine_id(parse_config(toml, "rf.toml")) == target


def test_old_id_takes_every_ioc_format(
    make_ctx: Callable[..., Any],
    clock: Any,
    tmp_path: Path,
    open_ro: Callable[[str], AuthFile],
    make_exec_request: Callable[..., AuthRequest],
) -> None:
    c = Content(tmp_path / "c")
    data = b"#!/bin/sh\necho x\n"
    c.publish({"feed.ioc": hashlib.md5(data).hexdigest() + "\n"})
    engine = ReputationEngine(clock=clock, background=sync)
    engine.setup(make_ctx(content_dir=c.dir))
    path = write(tmp_path / "x", data)
    assert engine.on_auth(make_exec_request(path), open_ro(path)).verdict is Verdict.DENY
