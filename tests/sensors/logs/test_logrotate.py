"""The real logrotate against a followed file, with a writer that keeps its descriptor like a syslog
daemon (and reopens the path only after the rotation, as after its HUP): every line, written before,
during and after each rotation, arrives exactly once, in order within each file."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .support import running

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"
pytestmark = pytest.mark.skipif(not os.path.exists(LOGROTATE), reason="needs logrotate (scripts/setup)")


def _rotate(log: Path, options: str) -> None:
    conf = log.parent / "logrotate.conf"
    conf.write_text(f"{log} {{\n    rotate 3\n    missingok\n{options}}}\n")
    conf.chmod(0o644)
    state = log.parent / "logrotate.state"
    subprocess.run(
        [LOGROTATE, "-f", "-s", str(state), str(conf)], check=True, capture_output=True, timeout=60
    )


class Daemon:
    """Writes lines through one descriptor, reopened only when told (a daemon's HUP)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.written: list[str] = []

    def write(self, tag: str, n: int) -> None:
        lines = [f"{tag} {i}" for i in range(n)]
        os.write(self.fd, "".join(f"{line}\n" for line in lines).encode())
        self.written += lines

    def reopen(self) -> None:
        os.close(self.fd)
        self.fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def close(self) -> None:
        os.close(self.fd)


@pytest.mark.parametrize(
    "options",
    [
        "    create 0640\n",
        "    create 0640\n    compress\n    delaycompress\n",
        "    copytruncate\n",
    ],
    ids=["create", "create-delaycompress", "copytruncate"],
)
def test_real_logrotate_loses_and_repeats_no_line(tmp_path: Path, options: str) -> None:
    log = tmp_path / "syslog"
    daemon = Daemon(log)
    try:
        with running([log], tmp_path / "pos.json") as (sensor, got):
            for r in range(4):
                daemon.write(f"r{r} before", 50)
                _rotate(log, options)
                daemon.write(f"r{r} during", 20)  # to the rotated file, unless copytruncate
                daemon.reopen()
                daemon.write(f"r{r} after", 30)
            got.wait_lines(len(daemon.written))
            got.settle(sensor)
    finally:
        daemon.close()
    messages = got.messages()
    assert sorted(messages) == sorted(daemon.written)
    assert len(set(messages)) == len(messages)
    for tag in ("before", "during", "after"):  # within one stream, order is kept
        for r in range(4):
            mine = [m for m in messages if m.startswith(f"r{r} {tag} ")]
            assert mine == [f"r{r} {tag} {i}" for i in range(len(mine))]
