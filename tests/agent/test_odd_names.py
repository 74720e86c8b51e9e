"""A file whose name is not UTF-8 is judged like any other, and does not blind the engines after it.

The sensors keep such a name's bytes as lone surrogates, which msgpack refused: the frame to the
extension raised in its sender thread, that thread died, and every later exec waited for the deadline and
ran (fail-open). One exec of b"\\xff" switched the blocklist off for everything."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.agent.helpers import runs
from tests.agent.test_extensions_e2e import _sha256, start_agent  # noqa: F401


def test_blocklisted_binary_under_a_non_utf8_name_is_denied_and_the_engine_stays_up(
    start_agent,  # noqa: F811
    tmpfs: Path,
    shared_dir: Path,
) -> None:
    evil = tmpfs / "evil"
    shutil.copy2("/bin/true", evil)
    odd = os.fsencode(tmpfs) + b"/\xff\xfeevil"
    shutil.copy2(evil, odd)
    blocklist = shared_dir / "blocklist.txt"
    blocklist.write_text(f"{_sha256(evil)}  test-evil\n")
    fine = tmpfs / "fine"
    shutil.copy2("/bin/false", fine)
    agent = start_agent(("ringfence.reputation",), {"ringfence.reputation": {"blocklist": str(blocklist)}})

    for _ in range(3):
        try:
            ran = subprocess.run([odd], check=False, timeout=30).returncode == 0
        except PermissionError:
            ran = False
        assert not ran, "the blocklisted binary ran under a non-UTF-8 name"
    assert not runs(evil)  # and the engine still answers for everything else
    assert runs(fine)
    auth = agent.health().broker.auth
    assert sum(s.deadline_misses for s in auth.subscribers.values()) == 0
